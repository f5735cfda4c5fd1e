"""Generation end to end on the bundled two-speaker dialogue (real SmolLM2 weights on CPU), resume of
the generation pass, and the vLLM (ray.data.llm) processor config built without a GPU."""

from __future__ import annotations

import json
import shutil
from itertools import groupby

import pyarrow.parquet as pq
import pytest
from markupsafe import escape  # as the report's templates escape

from ray_jobs.config import load_config, preset_overrides
from ray_jobs.generate import sampling_params, vllm_processor_config
from emoguide.report.render import build_report
from emoguide.dataio.tables import INTERVENTIONS, merge_parts, part_paths, to_table, write_atomic
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
    # the prompt's cue and the client turn's utterances are kept with each intervention
    turn_of = {ids[-1]: ids for role, ids in turns if role == "client"}
    for r in rows:
        assert r["turn_utt_ids"] == turn_of[r["utt_id"]]
        assert (r["cue"] == "") == (r["condition"] == "text") and r["cue"] in json.loads(r["prompt"])[1]["content"]
    assert "dissonance: " in next(r["cue"] for r in rows if r["condition"] == "dissonance")


@pytest.mark.slow
def test_console_of_a_run_with_generation_is_the_progress_line_and_the_summary(run):
    """No model-loading bars (GGUF, tokenizer) and no worker output from the LLM pass: without -v the
    console is the preset, the progress line, then the summary."""
    _, _, proc = run
    lines = proc.stderr.splitlines()
    assert lines[0] == "Ray reports no GPUs: using the cpu preset", proc.stderr[-3000:]
    assert all(line.startswith("sessions ") for line in lines[1:]), proc.stderr[-3000:]
    assert lines[-1].startswith("sessions 1/1 | ") and "| interventions 15/15 | done  [" in lines[-1]
    assert "%|" not in proc.stderr + proc.stdout and "pid=" not in proc.stderr


@pytest.mark.slow
def test_report_shows_each_interventions_cue(run, tmp_path):
    out, _, _ = run
    (page, _index) = build_report(out, out=tmp_path / "report")
    html = page.read_text()
    rows = pq.read_table(out / "interventions.parquet").to_pylist()
    cues = {r["cue"] for r in rows if r["cue"]}
    assert html.count("<summary>cue</summary>") == len(rows) - 3  # every condition but text, on each turn
    assert all(escape(cue) in html for cue in cues)


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
    assert params == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 96, "seed": 0, "repetition_penalty": 1.1,
                      "stop": ["\nTherapist:", "\nClient:", "\nUnidentified speaker:"]}  # fmt: skip


def test_an_interventions_part_from_before_the_cue_columns_still_merges(tmp_path):
    """A run folder from before ``cue`` and ``turn_utt_ids`` resumes: the old part's rows get them null."""
    old = INTERVENTIONS.remove(INTERVENTIONS.get_field_index("cue"))
    old = old.remove(old.get_field_index("turn_utt_ids"))
    row = {"session_id": "s1", "utt_id": "s1-u1", "condition": "text", "generation": "How so?"}
    write_atomic(to_table([row], old), part_paths(tmp_path, "s1")["interventions"])
    merged = pq.read_table(merge_parts(tmp_path, ["s1"], ("interventions",))["interventions"])
    assert merged.schema == INTERVENTIONS
    assert merged.to_pylist() == [{**{name: None for name in INTERVENTIONS.names}, **row}]


@pytest.mark.slow
def test_the_default_cpu_llm_answers_the_client_on_task():
    """The offline default (engine and model as a run uses them) on a scripted therapy dialogue: replies
    that speak to the client about what was said, by the documented on-task rules."""
    from bench_generation import scripted_utterances

    from emoguide.evaluation.interventions import dialogue_text, off_task_rules
    from emoguide.prompts.build import TURN_STARTS, build_prompts, prompt_messages
    from ray_jobs.generate import cpu_generator
    from ray_jobs.pipeline import resolve_llm

    config = load_config(None)
    llm = resolve_llm(config)
    assert (config.generation.engine, llm.name) == ("llamacpp", "qwen2.5-coder-1.5b-instruct")
    rows = build_prompts(scripted_utterances(), ("text", "dissonance"))[:4]  # two client turns
    generator = cpu_generator(config.generation, llm)
    results = generator.generate([prompt_messages(r) for r in rows])
    broken = [off_task_rules(res.text, dialogue_text(row)) for res, row in zip(results, rows)]
    assert sum(not b for b in broken) >= 3, list(zip([r.text for r in results], broken))
    assert all(not res.text.lower().startswith("therapist") for res in results)
    assert generator.params()["engine"] == "llamacpp" and generator.params()["stop"] == list(TURN_STARTS)
    assert not any(stop in res.text for res in results for stop in TURN_STARTS)
