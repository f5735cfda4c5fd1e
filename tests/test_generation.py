"""Generation end to end on the bundled two-speaker dialogue (real SmolLM2 weights on CPU), resume of
the generation pass, and the vLLM (ray.data.llm) processor config built without a GPU."""

from __future__ import annotations

import json
import shutil
from itertools import groupby

import pyarrow.parquet as pq
import pytest

from ray_jobs.config import load_config, preset_overrides
from ray_jobs.generate import sampling_params, vllm_processor_config
from conftest import DIALOGUE, emoguide


@pytest.fixture(scope="module")
def run(dialogue_run):
    return dialogue_run  # shared with the studio tests (conftest.py)


@pytest.mark.slow
def test_one_row_per_client_turn_and_condition(run):
    out, _, proc = run
    utts = pq.read_table(out / "utterances.parquet").to_pylist()
    # a turn may be more than one utterance (the ASR's segments); its last one carries the interventions
    turns = [(role, [u["utt_id"] for u in group]) for role, group in groupby(utts, key=lambda u: u["role"])]
    assert [role for role, _ in turns] == ["client", "therapist"] * 3
    rows = pq.read_table(out / "interventions.parquet").to_pylist()
    client_turns = [ids[-1] for role, ids in turns if role == "client"]
    conditions = ["text", "face", "voice", "multimodal", "dissonance"]
    assert sorted((r["utt_id"], r["condition"]) for r in rows) == sorted(
        (c, k) for c in client_turns for k in conditions)
    by_id = {u["utt_id"]: u for u in utts}
    for r in rows:
        assert r["generation"] and r["generation"].strip() and r["error"] is None
        assert 0 < r["n_generated_tokens"] <= 24
        assert r["model"] == "smollm2-135m-instruct"
        params = json.loads(r["params"])
        assert params["temperature"] == 0.0 and params["max_new_tokens"] == 24
        following = utts[[u["utt_id"] for u in utts].index(r["utt_id"]) + 1]
        assert r["reference"] == following["text"] and following["role"] == "therapist"
        messages = json.loads(r["prompt"])
        assert messages[0]["role"] == "system" and by_id[r["utt_id"]]["text"] in messages[1]["content"]
    cue = {r["condition"]: json.loads(r["prompt"])[1]["content"] for r in rows if r["utt_id"] == client_turns[0]}
    assert "<emotion_cues>" not in cue["text"] and "dissonan" in cue["dissonance"].lower()
    assert "interventions: 15 generated" in proc.stdout


@pytest.mark.slow
def test_generation_resumes_and_follows_its_own_settings(run, tmp_path):
    shared, cfg, _ = run
    out = tmp_path / "out"  # a copy: the shared run folder stays as the other tests expect it
    shutil.copytree(shared, out)
    before = pq.read_table(out / "interventions.parquet").to_pylist()
    again = emoguide("run", str(DIALOGUE), "--out", str(out), "--config", str(cfg), "-q")
    assert again.returncode == 0 and "1 already complete" in again.stdout
    assert "interventions:" not in again.stdout  # nothing regenerated
    assert pq.read_table(out / "interventions.parquet").to_pylist() == before
    # other generation settings: the videos are not redone, the interventions are
    fewer = emoguide("run", str(DIALOGUE), "--out", str(out), "--config", str(cfg), "--conditions", "text,dissonance", "-q")
    assert fewer.returncode == 0 and "1 already complete" in fewer.stdout
    rows = pq.read_table(out / "interventions.parquet").to_pylist()
    assert sorted({r["condition"] for r in rows}) == ["dissonance", "text"] and len(rows) == 6


@pytest.mark.slow
def test_no_generate_stops_after_the_reducer(dubbed_run):
    out, _ = dubbed_run  # a --no-generate run (conftest.py); with generation on, an empty table is written
    assert (out / "utterances.parquet").exists() and not (out / "interventions.parquet").exists()


def test_vllm_processor_config_builds_without_gpu():
    config = load_config(None, preset=preset_overrides("gpu-1", 1))
    g = config.generation
    assert g.engine == "vllm" and g.model == "llama-3.1-8b-instruct"
    processor_config = vllm_processor_config(g, "meta-llama/Llama-3.1-8B-Instruct")
    assert processor_config.model_source == "meta-llama/Llama-3.1-8B-Instruct"
    assert processor_config.batch_size == g.batch_size == 64
    assert processor_config.engine_kwargs["tensor_parallel_size"] == 1
    assert processor_config.engine_kwargs["max_model_len"] == g.max_model_len
    params = sampling_params(g)
    assert params == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 96, "seed": 0, "repetition_penalty": 1.1}
