"""What `emoguide run` checks before it starts Ray: inputs that do not exist (a usage error) and the
output folder's run lock (one run per folder; stale locks taken over, other hosts' locks left alone)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from emoguide.dataio.inputs import collect_sessions
from ray_jobs import cli
from ray_jobs.runlock import LOCK_NAME, RunLockError, run_lock

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "examples" / "grid" / "bbaf2n.mpg"
_HOLD = ("import sys; from pathlib import Path; from ray_jobs.runlock import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()\n")


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the command gets as far as starting Ray."""
    started = []
    monkeypatch.setattr(cli, "_start_ray", lambda *a, **k: started.append(a) or pytest.fail("Ray was started"))
    return started


@pytest.fixture
def holder(tmp_path):
    """Another process holding the run lock of tmp_path/out until the test ends."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_missing_input_is_a_usage_error_before_ray_starts(tmp_path, no_ray, capsys):
    typo = tmp_path / "sesion1.mp4"
    rc = cli.main(["run", str(CLIP), str(typo), "--out", str(tmp_path / "out"), "-q"])
    assert rc == 2 and not no_ray
    assert f"no such file or folder: {typo}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started or written


def test_existing_bad_file_and_missing_manifest_rows_are_still_sessions(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\ngone.mp4\n")
    # they reach the pipeline, where each becomes a failed row with its reason
    assert [s.session_id for s in collect_sessions([str(bad), str(manifest)])] == ["broken", "gone"]


def test_second_run_on_the_same_out_refuses_naming_the_holder(holder, no_ray, capsys):
    out, proc = holder
    with pytest.raises(RunLockError) as exc:
        with run_lock(out):
            pass
    assert f"host {socket.gethostname()}, pid {proc.pid}, since 20" in str(exc.value)
    assert "--wait-lock" in str(exc.value) and str(out / LOCK_NAME) in str(exc.value)
    assert cli.main(["run", str(CLIP), "--out", str(out), "-q"]) == 2 and not no_ray
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert proc.poll() is None and json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid  # untouched


def test_wait_lock_waits_for_the_holder(holder):
    out, proc = holder
    threading.Timer(1.0, proc.stdin.close).start()
    with run_lock(out, wait=True) as path:
        assert proc.poll() is not None  # the holder had finished
        assert json.loads(path.read_text())["pid"] != proc.pid
    assert not path.exists()  # released


def _write_lock(out: Path, **holder) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    path.write_text(json.dumps({"started": "2026-01-01T00:00:00+00:00", "nonce": "x", **holder}))
    return path


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = _write_lock(tmp_path, host=socket.gethostname(), pid=dead.pid, flock=True)
    with run_lock(tmp_path):
        assert json.loads(path.read_text())["pid"] != dead.pid
    assert not path.exists()


def test_lock_of_a_reused_pid_without_its_flock_is_taken_over(tmp_path):
    # the pid is alive (this very process) but holds no flock on the file: the holder it names is gone
    path = _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), flock=True)
    with run_lock(tmp_path):
        assert json.loads(path.read_text())["nonce"] != "x"


def test_lock_from_another_host_is_left_alone(tmp_path):
    path = _write_lock(tmp_path, host="gpu-node-7", pid=1234, flock=True)
    with pytest.raises(RunLockError, match=f"host gpu-node-7, pid 1234.*delete {path}"):
        with run_lock(tmp_path):
            pass
    assert json.loads(path.read_text())["host"] == "gpu-node-7"


def test_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(ValueError):
        with run_lock(tmp_path):
            raise ValueError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
