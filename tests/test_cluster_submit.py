"""The README's "A local head and a worker" walkthrough, run line by line against a real two-node Ray
cluster with Ray's default authentication (a token in ~/.ray/auth_token, of a temporary HOME): the
submit finds the token itself and the job's outputs appear; a missing or wrong token is one line; a
failed job ends with its log's last lines. Also: the token lookup order is Ray's own; presets resolve
to valid requests."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, kill_ray_processes
from ray_jobs.config import ConfigError, choose_preset, load_config, preset_overrides
from ray_jobs.submit import JobOutcome, find_token

BIN = Path(sys.executable).parent
WALKTHROUGH = "### A local head and a worker"
_ACTIVATE = "source .venv/bin/activate"
_PORTS = ("6379", "8265", "52366", "8091", "52367")  # the README's ports, replaced by free ones here
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_lines() -> list[str]:
    """The commands of the README's walkthrough block, comments dropped."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split(WALKTHROUGH, 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def _private(line: str, names: dict[str, str]) -> str:
    """The line with the README's ports and folders replaced (other agents share this machine)."""
    for old, new in names.items():
        line = re.sub(rf"(?<![\w/.-]){re.escape(old)}(?![\w.-])", new, line)
    return line


def _command(line: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a README line: leading NAME=value words set variables, as in a shell."""
    words = shlex.split(line)
    extra = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        extra[name] = value
    full = {**env, **extra}
    return [shutil.which(words[0], path=full["PATH"]) or words[0], *words[1:]], full


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The walkthrough's lines up to the submit, as written; yields the submit line and the shell env."""
    ray_tmp = tempfile.mkdtemp(prefix="egc-", dir="/tmp")  # short: Ray's socket paths live under it
    home = tmp_path_factory.mktemp("home")  # Ray's token goes to HOME/.ray, never the user's own
    names = {port: str(_free_port()) for port in _PORTS}
    names |= {"/tmp/ray-worker": f"{ray_tmp}/worker", "/tmp/emoguide-r1": str(tmp_path_factory.mktemp("out") / "r1")}
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}
    env |= {"HOME": str(home), "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    lines = [_private(line, names) for line in readme_lines()]
    assert lines[0] == _ACTIVATE and lines[-1].startswith("emoguide submit "), lines
    # what `source .venv/bin/activate` does: this venv's commands first on PATH
    env |= {"VIRTUAL_ENV": str(BIN.parent), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    try:
        for line in lines[1:-1]:
            argv, line_env = _command(line, env)
            proc = subprocess.run(argv, env=line_env, cwd=REPO, capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        assert (home / ".ray" / "auth_token").is_file()
        yield lines[-1], env, names
    finally:
        kill_ray_processes(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _active_nodes(gcs: str, env: dict[str, str], timeout_s: float = 90.0) -> int:
    """Nodes `ray status` lists as active, once the worker shows up (the autoscaler reports it late)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = subprocess.run([BIN / "ray", "status", f"--address={gcs}"], env={**env, "RAY_AUTH_MODE": "token"},
                                capture_output=True, text=True, timeout=120)
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0].count(" node_")
        if active >= 2 or time.monotonic() > deadline:
            return active
        time.sleep(3.0)


def _submit(line: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv, line_env = _command(line, env)
    return subprocess.run(argv, env=line_env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_readme_walkthrough_submits_to_a_two_node_cluster_with_token_auth(cluster):
    line, env, names = cluster
    assert _active_nodes(f"127.0.0.1:{names['6379']}", env) == 2  # head and worker
    assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN" not in env  # the submit finds the token itself
    proc = _submit(line, env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "submitted job" in proc.stdout and "SUCCEEDED" in proc.stdout
    assert "Ray reports no GPUs: using the cpu preset" in proc.stdout  # the job's own log, streamed back
    (session,) = pq.read_table(Path(names["/tmp/emoguide-r1"]) / "sessions.parquet").to_pylist()
    assert session["status"] == "ok" and session["n_utterances"] >= 1
    # the shipped config ran on the cluster: it has its own config hash
    demo = load_config(REPO / "examples" / "demo.yaml")
    assert session["config_hash"] == demo.config_hash() != load_config().config_hash()


@pytest.mark.slow
def test_missing_or_wrong_token_is_one_line(cluster, tmp_path):
    line, env, _ = cluster
    nobody = {**env, "HOME": str(tmp_path)}  # a shell without the cluster's token
    for shell, expected in [(nobody, "needs an auth token and none was found: set RAY_AUTH_TOKEN"),
                            ({**env, "RAY_AUTH_TOKEN": "0" * 64}, "rejected the token from RAY_AUTH_TOKEN")]:
        proc = _submit(line, shell)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("emoguide: error: the cluster at http://127.0.0.1:") and expected in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_failed_job_ends_with_its_log_and_token_file_is_used(cluster, tmp_path):
    line, env, _ = cluster
    token = Path(env["HOME"]) / ".ray" / "auth_token"
    missing = tmp_path / "not-on-the-cluster.mp4"
    bad = line.replace("examples/grid/bbaf2n.mpg", str(missing)) + f" --token-file {token}"
    proc = _submit(bad, {**env, "HOME": str(tmp_path)})  # the token only through --token-file
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" in proc.stdout and "last lines of the job's log:" in proc.stderr
    tail = proc.stderr.split("last lines of the job's log:", 1)[1]
    assert f"no such file or folder: {missing}" in tail and "ray job logs" in tail


def test_no_dashboard_at_the_address_is_one_line(tmp_path):
    proc = subprocess.run([BIN / "emoguide", "submit", str(REPO / "examples" / "grid" / "bbaf2n.mpg"), "--out",
                           str(tmp_path / "out"), "--address", f"http://127.0.0.1:{_free_port()}"],
                          env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("emoguide: error: no Ray dashboard answers at http://127.0.0.1:")


def test_token_lookup_follows_rays_own_order(tmp_path, monkeypatch):
    from ray._raylet import AuthenticationTokenLoader  # Ray's loader (C++), the reference

    def both() -> tuple[str | None, str | None]:
        loader = AuthenticationTokenLoader.instance()
        loader.reset_cache()
        ours = find_token()
        theirs = loader.get_raw_token(ignore_auth_mode=True) if loader.has_token(ignore_auth_mode=True) else None
        return (ours.value if ours else None), theirs

    for name in _AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert both() == (None, None)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("a" * 64 + "\n")
    assert both() == ("a" * 64, "a" * 64)
    (tmp_path / "elsewhere").write_text("b" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert both() == ("b" * 64, "b" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "c" * 64)
    assert both() == ("c" * 64, "c" * 64)
    assert find_token(tmp_path / ".ray" / "auth_token").source == f"--token-file {tmp_path / '.ray' / 'auth_token'}"


def test_failed_job_hint_names_the_clusters_environment():
    log = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'pyarrow'\n"
    assert "cluster's `python`" in JobOutcome("raysubmit_1", "FAILED", "", log).hint()
    assert JobOutcome("raysubmit_1", "FAILED", "", "emoguide: error: no such file").hint() == ""


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
