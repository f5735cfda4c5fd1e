"""A run whose driver is SIGKILLed mid-way, then restarted, ends with exactly one row per utterance."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import EMOGUIDE, emoguide, kill_ray_processes

pytestmark = pytest.mark.slow


def _finished(out: Path) -> set[str]:
    """Sessions whose part files are complete (the sessions part is written last)."""
    return {p.name.split(".")[0] for p in (out / "parts").glob("*.sessions.parquet")} if (out / "parts").exists() else set()


def test_sigkill_then_resume(tmp_path, grid_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        shutil.copy(grid_dir / "bbaf2n.mpg", inputs / f"session{i}.mpg")
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="egk-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen([EMOGUIDE, "run", str(inputs), "--out", str(out), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not _finished(out):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        time.sleep(2)
        kill_ray_processes(ray_tmp)
    finished_before = _finished(out)
    assert 1 <= len(finished_before) < 6
    assert not (out / "sessions.parquet").exists()  # the merged tables are written only at the end
    assert not list(out.rglob("*.tmp"))  # no half-written file is visible under a final name

    rerun = emoguide("run", str(inputs), "--out", str(out), "-q")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(finished_before)} already complete, skipped" in rerun.stdout
    sessions = pq.read_table(out / "sessions.parquet").to_pylist()
    utterances = pq.read_table(out / "utterances.parquet").to_pylist()
    assert sorted(s["session_id"] for s in sessions) == [f"session{i}" for i in range(6)]
    assert all(s["status"] == "ok" for s in sessions)
    ids = [u["utt_id"] for u in utterances]
    assert len(ids) == len(set(ids)) == sum(s["n_utterances"] for s in sessions)
