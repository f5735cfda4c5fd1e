"""One `emoguide run` over good GRID clips mixed with hostile inputs: good sessions come out exactly as in
a clean run, and every bad one is recorded with its reason (issue: reliability)."""

from __future__ import annotations

import math
import shutil

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import GRID_RUN_CLIPS, data_path, emoguide
from synth import build_session

pytestmark = pytest.mark.slow


def _video_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, np.uint8), format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def _silence(path, seconds=3.0, rate=44100, dtype="s32"):
    """Silent 32-bit PCM WAV at 44.1 kHz: non-16-bit audio at another rate, and no speech."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s32le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, int(seconds * rate) * 2), np.int32), format=dtype, layout="stereo")
        frame.sample_rate = rate
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, grid_dir, grid_run):
    """(clean run folder, hostile run folder, hostile run's process). The clean run is the shared GRID
    run (conftest.py): the same good clips beside one corrupt file."""
    _, clean_out, clean = grid_run
    hostile_in = tmp_path_factory.mktemp("hostile")
    for name in GRID_RUN_CLIPS:  # the clean run's good clips, among the hostile ones
        shutil.copy(grid_dir / name, hostile_in / name)
    # a real two-clip mp4 (moov atom at the end), then cut in half
    whole = hostile_in / "whole.mp4"
    build_session([("A", grid_dir / "sbia1a.mpg"), ("A", grid_dir / "lrwp9a.mpg")], whole)
    data = whole.read_bytes()
    (hostile_in / "truncated.mp4").write_bytes(data[: len(data) // 2])
    whole.unlink()
    (hostile_in / "random.mp4").write_bytes(np.random.default_rng(1).bytes(100_000))
    (hostile_in / "zero.mp4").write_bytes(b"")
    with open(hostile_in / "sparse2gb.mp4", "wb") as fh:
        fh.truncate(2 * 1024**3)  # 2 GB of holes: never read in full
    ravdess = sorted(data_path("ravdess", "Actor_01").glob("*.flac"))[:2]
    build_session([("A", p) for p in ravdess], hostile_in / "audio only.flac")
    _video_only(hostile_in / "video_only.mp4")
    _silence(hostile_in / "silence.wav")
    shutil.copy(grid_dir / "sbwe5n.mpg", hostile_in / "séance – client 1.mpg")

    hostile_out = tmp_path_factory.mktemp("out") / "hostile"
    hostile = emoguide("run", str(hostile_in), "--out", str(hostile_out), "-q")
    assert clean.returncode == 1 and "sessions: 2 ok, 1 failed" in clean.stdout, clean.stderr[-3000:]
    return clean_out, hostile_out, hostile


def _rows(out, table):
    return {r.get("utt_id") or r["session_id"]: r for r in pq.read_table(out / f"{table}.parquet").to_pylist()}


def test_bad_inputs_fail_with_their_reason(runs):
    _, out, proc = runs
    assert proc.returncode == 1
    sessions = {r["session_id"]: r for r in pq.read_table(out / "sessions.parquet").to_pylist()}
    expected = {
        "truncated": "not a readable media container",
        "random": "not a readable media container",
        "zero": "empty (0 bytes)",
        "sparse2gb": "not a readable media container",
        "video_only": "no audio stream",
    }
    for sid, reason in expected.items():
        row = sessions[sid]
        assert row["status"] == "failed" and row["failed_stage"] == "decode", row
        assert reason in row["error"] and row["source_path"] in row["error"]
    assert len(sessions) == 10


def test_valid_edge_cases_are_ok(runs):
    _, out, _ = runs
    sessions = {r["session_id"]: r for r in pq.read_table(out / "sessions.parquet").to_pylist()}
    utts = pq.read_table(out / "utterances.parquet").to_pylist()
    silence = sessions["silence"]
    assert silence["status"] == "ok" and silence["n_utterances"] == 0 and silence["note"] == "no speech found"
    assert silence["duration_s"] == pytest.approx(3.0, abs=0.05)
    audio_only = sessions["audio_only"]
    assert audio_only["status"] == "ok" and audio_only["n_utterances"] >= 1
    for u in (u for u in utts if u["session_id"] == "audio_only"):
        assert u["face_coverage"] is None and u["face_probs"] is None and u["dissonance"] is None
        assert u["voice_probs"] is not None  # the voice channel is still there
    unicode = sessions["s_ance_client_1"]
    assert unicode["status"] == "ok" and unicode["source_path"].endswith("séance – client 1.mpg")


def test_good_sessions_identical_to_a_clean_run(runs):
    clean_out, hostile_out, _ = runs
    clean, hostile = _rows(clean_out, "utterances"), _rows(hostile_out, "utterances")
    assert set(clean) <= set(hostile) and clean
    for utt_id, row in clean.items():
        other = hostile[utt_id]
        for key, value in row.items():
            if isinstance(value, float):
                assert math.isclose(value, other[key], rel_tol=1e-6, abs_tol=1e-9), (utt_id, key)
            else:
                assert value == other[key], (utt_id, key)
