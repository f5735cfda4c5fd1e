"""End to end: `emoguide run` through a real local Ray instance on real GRID clips and a corrupt file,
and what its console shows."""

from __future__ import annotations

import json
import re
import shutil
import stat

import pyarrow.parquet as pq
import pytest

from conftest import DIALOGUE, emoguide
from emoguide.dataio.tables import SESSIONS, UTTERANCES
from emoguide.evaluation.textnorm import grid_sentence, normalise, wer
from ray_jobs.config import load_config
from ray_jobs.pipeline import models_record, resolve_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(grid_run):
    return grid_run  # shared with the hostile-input and report tests (conftest.py)


def test_exit_code_and_summary(run_dir):
    _, out, proc = run_dir
    assert proc.returncode == 1, proc.stderr[-3000:]  # one session failed
    assert "sessions: 2 ok, 1 failed" in proc.stdout
    assert "real-time factor" in proc.stdout and str(out) in proc.stdout


# What the console may show without -v: the preset chosen, the progress line, a failed session's line.
_CONSOLE = re.compile(r"Ray reports .*: using the \S+ preset|sessions \d+/\d+ \| media .*|broken: failed \(decode: .*")


def test_console_is_one_progress_line_and_the_summary(run_dir):
    """No Ray log, no Ray Data progress dump, no worker output, no progress bar: the progress line (once at
    the start and once at the end, in a pipe), the failed session's reason, then the summary."""
    _, _, proc = run_dir
    lines = proc.stderr.splitlines()
    assert [line for line in lines if not _CONSOLE.fullmatch(line)] == [], proc.stderr[-3000:]
    assert re.fullmatch(r"sessions 3/3 \| media 0\.002 h \| [\d.]+x real time \| done  \[\d+:\d\d\]", lines[-1])
    assert "broken: failed (decode: " in proc.stderr and "ETA" in proc.stderr
    assert "%|" not in proc.stderr + proc.stdout  # no tqdm bar from the driver either
    assert proc.stdout.lstrip().startswith("results: ") and "sessions: 2 ok, 1 failed" in proc.stdout


def test_error_after_ray_started_is_one_line_and_a_hint(tmp_path):
    """A model that cannot be found is found missing once Ray is up (the preset may choose the model)."""
    config = tmp_path / "run.yaml"
    config.write_text("generation: {path: /nonexistent/llm.gguf}\n")
    proc = emoguide("run", str(DIALOGUE), "--out", str(tmp_path / "out"), "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-2:] == [
        "emoguide: error: llm: model path '/nonexistent/llm.gguf' does not exist",
        "hint: `emoguide models list` shows where each model's weights are looked for"]
    assert len(proc.stderr.splitlines()) == 3 and "Traceback" not in proc.stderr + proc.stdout  # and the preset


def test_tables_follow_the_contract(run_dir):
    inputs, out, _ = run_dir
    sessions = pq.read_table(out / "sessions.parquet")
    utterances = pq.read_table(out / "utterances.parquet")
    assert sessions.schema.names[: len(SESSIONS.names)] == SESSIONS.names
    assert utterances.schema.names[: len(UTTERANCES.names)] == UTTERANCES.names
    by_id = {r["session_id"]: r for r in sessions.to_pylist()}
    assert set(by_id) == {"bbaf2n", "lbax4n", "broken"}
    broken = by_id["broken"]
    assert broken["status"] == "failed" and broken["failed_stage"] == "decode"
    assert "broken.mp4" in broken["error"] and "not a readable media container" in broken["error"]
    for sid in ("bbaf2n", "lbax4n"):
        row = by_id[sid]
        assert row["status"] == "ok" and row["error"] is None
        assert 2.9 < row["duration_s"] < 3.1 and row["n_utterances"] >= 1
        models = json.loads(row["models"])
        assert row["config_hash"] and set(models) == {"asr", "face_detector", "face_emotion", "face_landmarks", "voice_emotion",
                                                      "speech_segmentation", "speaker_embedding"}
        assert all(m["source"] == "package" and m["version"].startswith("sha256:") for m in models.values())
        assert models == json.loads(models_record(resolve_models(load_config(None))))
        utts = [u for u in utterances.to_pylist() if u["session_id"] == sid]
        assert len(utts) == row["n_utterances"]
        text = " ".join(u["text"] for u in utts)
        assert wer(grid_sentence(sid), normalise(text)) <= 0.5
        for u in utts:
            assert 0 <= u["start_s"] < u["end_s"] <= row["duration_s"] + 0.05
            assert u["role"] == "unknown" and u["speaker"] == "S0" and u["words"]  # one speaker: no role claimed
            # the GRID speaker faces the camera throughout: the face channel is filled
            assert u["face_coverage"] == 1.0 and abs(sum(u["face_probs"]) - 1) < 1e-4
            assert -1 <= u["face_valence"] <= 1 and -1 <= u["face_arousal"] <= 1
            # real speech: the voice channel and prosody are filled
            assert abs(sum(u["voice_probs"]) - 1) < 1e-4 and -1 <= u["voice_valence"] <= 1
            assert 60 < u["prosody"]["f0_mean_hz"] < 300 and u["prosody"]["speaking_rate"] > 0
            assert 1 / 8 <= u["face_confidence"] <= 1 and u["asr_flags"] == []
            # a neutral speaker with a neutral face: both channels read, and they agree (the eGeMAPS model
            # read GRID's voices as "anger 100%" and called a neutral face dissonant; the Whisper-encoder
            # model hears them as neutral)
            assert 1 / 8 <= u["voice_confidence"] <= 1 and u["dissonance_reason"] is None
            assert u["dissonance"] is False and 0 <= u["dissonance_score"] <= 1
        assert row["dissonance_rate"] == 0.0
    # files are private to their owner
    for name in ("sessions.parquet", "utterances.parquet"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600


def test_rerun_resumes_without_redoing_finished_sessions(run_dir, tmp_path):
    inputs, shared, _ = run_dir
    out = tmp_path / "out"  # a copy: the shared run folder stays as the other tests expect it
    shutil.copytree(shared, out)
    before = {r["session_id"]: r for r in pq.read_table(out / "sessions.parquet").to_pylist()}
    proc = emoguide("run", str(inputs), "--out", str(out), "-v")
    assert proc.returncode == 1
    assert "2 already complete, skipped" in proc.stdout
    # -v: Ray's own logs (its start, Ray Data's execution) are on the console too
    assert "Started a local Ray instance" in proc.stderr and "Dataset" in proc.stderr
    after = {r["session_id"]: r for r in pq.read_table(out / "sessions.parquet").to_pylist()}
    assert after["bbaf2n"] == before["bbaf2n"]  # untouched, same wall_s
    assert after["broken"]["status"] == "failed"  # failed sessions are retried, and fail again
    assert pq.read_table(out / "utterances.parquet").num_rows == sum(r["n_utterances"] for r in after.values())


def test_no_transcript_in_output_logs(run_dir):
    _, out, proc = run_dir
    texts = [u["text"] for u in pq.read_table(out / "utterances.parquet").to_pylist()]
    assert texts
    for text in texts:
        assert text not in proc.stdout and text not in proc.stderr
