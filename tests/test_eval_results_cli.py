"""The evaluation commands on one run folder, in the order a researcher uses them: judge → metrics →
compare → blinded rating sheet → import expert ratings → agreement (real offline SmolLM2 and MiniLM)."""

from __future__ import annotations

import csv
import json
import random

import pyarrow.parquet as pq
import pytest

from emoguide.dataio.tables import INTERVENTIONS, to_table, write_atomic
from ray_jobs.cli import main

CONDITIONS = ("text", "face", "voice", "multimodal", "dissonance")


@pytest.fixture()
def run_dir(tmp_path):
    prompt = json.dumps([{"role": "system", "content": "task"},
                         {"role": "user", "content": "<transcript>\nClient: I have not slept since my dad died.\n"
                                                     "</transcript>\nWrite the therapist's next intervention."}])
    rows = [{"session_id": "s1", "utt_id": f"s1-u{i}", "condition": c, "prompt": prompt,
             "generation": f"It sounds like the loss is weighing on you, {'so ' * k}much.",
             "reference": "That sounds exhausting.",
             "model": "m", "params": "{}", "template": "intervention_v1", "n_generated_tokens": 9}
            for i in range(2) for k, c in enumerate(CONDITIONS)]
    write_atomic(to_table(rows, INTERVENTIONS), tmp_path / "interventions.parquet")
    return tmp_path


@pytest.mark.slow
def test_evaluation_workflow(run_dir, tmp_path, capsys):
    assert main(["eval", "judge", str(run_dir), "--limit", "1"]) == 0
    judged = pq.read_table(run_dir / "judgements.parquet").to_pylist()
    # one item, all five conditions plus the therapist's own reply, three criteria each
    assert len(judged) == 6 * 3 and {j["criterion"] for j in judged} == {"empathy", "comprehensiveness", "applicability"}
    # the judge must read its own answers: measured (Dec 2026), greedy SmolLM2 parses 18 of 18 here
    failed = [j for j in judged if j["parse_error"] is not None]
    assert len(failed) <= 3, failed
    assert all(1 <= j["score"] <= 5 for j in judged if j["parse_error"] is None)
    assert main(["eval", "metrics", str(run_dir)]) == 0
    metrics = pq.read_table(run_dir / "reference_metrics.parquet").to_pylist()
    replies = [m for m in metrics if m["condition"] != "reference"]  # each shares "sounds" with the reference
    assert len(replies) == 2 * len(CONDITIONS) and all(0 < m["rouge_l_f"] < 1 for m in replies)
    assert main(["eval", "compare", str(run_dir), "--json", str(tmp_path / "cmp.json")]) == 0
    compared = json.loads((tmp_path / "cmp.json").read_text())
    assert set(compared["metrics"]["rouge_l_f"]["conditions"]) >= set(CONDITIONS)

    sheet = tmp_path / "sheet.csv"
    assert main(["eval", "rating-sheet", str(run_dir), "--out", str(sheet), "--seed", "3"]) == 0
    items = [r["item"] for r in csv.DictReader(sheet.open())]
    assert not any(c in sheet.read_text() for c in ("multimodal", "dissonance"))  # blinded
    ratings = tmp_path / "ratings.csv"
    rng = random.Random(0)
    with ratings.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rater", "item", "criterion", "score"])
        for item in items:
            base = rng.randint(1, 5)
            for rater in ("e1", "e2"):
                for c in ("empathy", "comprehensiveness", "applicability"):
                    w.writerow([rater, item, c, min(5, max(1, base + rng.choice((-1, 0, 1))))])
    key = sheet.with_name("sheet.key.csv")
    assert main(["eval", "import-ratings", str(ratings), "--run", str(run_dir), "--key", str(key)]) == 0
    assert main(["eval", "agreement", str(run_dir), "--key", str(key), "--json", str(tmp_path / "agr.json")]) == 0
    report = json.loads((tmp_path / "agr.json").read_text())
    empathy = report["criteria"]["empathy"] if "criteria" in report else report["empathy"]
    assert empathy["n_raters"] == 2 and -1 <= empathy["krippendorff_alpha_ordinal"]["value"] <= 1


def test_import_ratings_error_names_the_row(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("rater,item,criterion,score\ne1,I1,empathy,7\n")
    assert main(["eval", "import-ratings", str(bad), "--run", str(tmp_path)]) == 2
    assert "row 1" in capsys.readouterr().err
