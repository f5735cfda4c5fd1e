"""A real multi-process Ray cluster on loopback (a head and one worker node): `emoguide submit` of a
GRID clip through the Ray Jobs API succeeds and its outputs appear; presets resolve to valid requests."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import kill_ray_processes
from ray_jobs.config import ConfigError, choose_preset, load_config, preset_overrides

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    # Two nodes on two loopback addresses (Ray turns 127.0.0.1 itself into the machine's network
    # address, so 127.0.0.2/3 keep the whole cluster on loopback), with token authentication as on a
    # real cluster. Each node has its own temp folder and agent ports, as separate machines would: on a
    # shared folder one node's runtime-env agent deletes the job files the other node is using.
    ray_tmp = tempfile.mkdtemp(prefix="egc-", dir="/tmp")
    # The job's entrypoint runs `python` from the head's PATH, as in a cluster image: this venv's here.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head, worker = "127.0.0.2", "127.0.0.3"
    port, dash = _free_port(), _free_port()
    common = ["--num-cpus=1", "--disable-usage-stats"]

    def own_ports() -> list[str]:
        # two nodes on one machine must not share the per-node agents' default ports
        return [f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
                f"--runtime-env-agent-port={_free_port()}"]

    try:
        subprocess.run([BIN / "ray", "start", "--head", f"--node-ip-address={head}", f"--port={port}",
                        "--include-dashboard=true", f"--dashboard-host={head}", f"--dashboard-port={dash}", f"--temp-dir={ray_tmp}/head", *common, *own_ports()],
                       env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([BIN / "ray", "start", f"--address={head}:{port}", f"--node-ip-address={worker}", f"--temp-dir={ray_tmp}/worker", *common, *own_ports()],
                       env=env, check=True, capture_output=True, timeout=180)
        yield f"http://{head}:{dash}", env
    finally:
        kill_ray_processes(ray_tmp)


@pytest.mark.slow
def test_submit_grid_clip_to_a_two_node_cluster(cluster, tmp_path):
    address, env = cluster
    clip = Path(__file__).resolve().parents[1] / "examples" / "grid" / "bbaf2n.mpg"
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text("decode:\n  fps: 1.0\n")
    proc = subprocess.run([BIN / "emoguide", "submit", str(clip), "--out", str(out), "--address", address,
                           "--config", str(config), "--wait"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "submitted job" in proc.stdout and "SUCCEEDED" in proc.stdout
    assert "Ray reports no GPUs: using the cpu preset" in proc.stdout  # the job's own log, streamed back
    (session,) = pq.read_table(out / "sessions.parquet").to_pylist()
    assert session["status"] == "ok" and session["n_utterances"] >= 1
    # the shipped config ran on the cluster: fps 1 gives its own config hash
    assert session["config_hash"] == load_config(config).config_hash() != load_config().config_hash()


def test_presets_resolve_to_valid_resource_requests():
    assert choose_preset("auto", 0) == ("cpu", "Ray reports no GPUs: using the cpu preset")
    assert choose_preset("auto", 1)[0] == "gpu-1" and choose_preset("auto", 4)[0] == "gpu-n"
    with pytest.raises(ConfigError, match="needs GPUs"):
        choose_preset("gpu-1", 0)
    cpu = load_config(preset=preset_overrides("cpu", 0))
    assert all(getattr(cpu, s).resources.num_gpus == 0 for s in ("decode", "asr", "face", "voice"))
    one = load_config(preset=preset_overrides("gpu-1", 1))
    assert one.asr.device == "cuda" and one.asr.compute_type == "float16"
    # stages sharing one GPU ask for fractions that fit on it together
    assert sum(getattr(one, s).resources.num_gpus for s in ("asr", "face", "voice")) <= 1.0
    many = load_config(preset=preset_overrides("gpu-n", 4))
    assert many.asr.resources.num_gpus == 1.0 and many.asr.resources.max_actors == 4
    # a config file still overrides the preset
    assert load_config(None, {"asr": {"compute_type": "int8_float16"}}, preset_overrides("gpu-1", 1)).asr.compute_type == "int8_float16"


def test_pools_that_cannot_fit_are_reported():
    from ray_jobs.pipeline import check_resources

    fits = load_config()
    assert check_resources(fits, {"CPU": 2.0}) is None
    greedy = load_config(None, {"voice": {"resources": {"num_cpus": 1.0, "min_actors": 2, "max_actors": 2}}})
    message = check_resources(greedy, {"CPU": 2.0})
    assert message and "need 3.75 CPUs" in message and "reports 2 CPUs" in message
    assert check_resources(load_config(preset=preset_overrides("gpu-1", 1)), {"CPU": 16.0}) and \
        check_resources(load_config(preset=preset_overrides("gpu-1", 1)), {"CPU": 16.0, "GPU": 1.0}) is None
