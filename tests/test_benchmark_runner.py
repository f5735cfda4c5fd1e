"""The benchmark runner produces a well-formed report on a short real clip (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_runner_writes_a_well_formed_report(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--input", str(ROOT / "examples" / "dialogue.mp4"),
         "--out", str(tmp_path), "--skip-scaling"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["media_s"] == pytest.approx(20.4, abs=0.5)
    assert set(report["stage_real_time_factor"]) == {"decode", "face", "asr", "speakers", "voice"}
    assert all(v > 0 for v in report["stage_real_time_factor"].values())
    assert report["perception_x_real_time"] > 0 and report["peak_rss_mib"] > 100
    assert report["machine"]["cores"] >= 1 and report["machine"]["gpu"] is None
    # the dialogue's roles are unknown without an override, so there may be no prompts: either way a record
    assert "batched_tokens_per_s" in report["generation"] or "note" in report["generation"]
    table = (tmp_path / "latest.md").read_text()
    assert "| perception pipeline" in table and "peak RSS" in table and "peak PSS" in table
    assert 0 < report["peak_pss_mib"] <= report["peak_rss_mib"]


def test_the_gpu_stage_timing_uses_a_runs_generation_defaults() -> None:
    """gpu_stages repeats GenerationConfig's defaults (it runs where ray_jobs cannot be imported)."""
    import gpu_stages

    from ray_jobs.config import GenerationConfig

    defaults = GenerationConfig()
    assert (gpu_stages.LLM_BATCH, gpu_stages.LLM_NEW_TOKENS, gpu_stages.LLM_REPETITION_PENALTY) == (
        defaults.batch_size,
        defaults.max_new_tokens,
        defaults.repetition_penalty,
    )
