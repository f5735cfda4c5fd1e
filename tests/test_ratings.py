"""emoguide.evaluation.ratings: blinded rating sheet + key, validated import, and the round trip into agreement()."""

from __future__ import annotations

import csv
import stat

import pyarrow.parquet as pq
import pytest

from conftest import RUN_ROWS, FakeGenerator, intervention_prompt, make_run
from emoguide.evaluation.agreement import agreement
from emoguide.evaluation.judge import judge_run
from emoguide.prompts.build import CONDITIONS
from emoguide.evaluation.ratings import (
    KEY_COLUMNS,
    SHEET_COLUMNS,
    RatingsError,
    export_rating_sheet,
    import_ratings,
    read_key,
)


def _run_rows():
    """4 items x 5 conditions, distinct generations, plus the RUN_ROWS edge cases (an empty generation)."""
    rows = []
    for i in range(4):
        for c in CONDITIONS:
            rows.append({"session_id": f"sess{i % 2}", "utt_id": f"sess{i % 2}-u{i:05d}", "condition": c,
                         "prompt": intervention_prompt(f"client turn {i}", f"<emotion_cues>\nface: cue {c}\n</emotion_cues>\n"),
                         "generation": f"reply {i} number {CONDITIONS.index(c)}", "reference": f"therapist said {i}",
                         "model": "secret-model-7b", "params": "{}"})  # fmt: skip
    return rows + RUN_ROWS


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_sheet_is_blinded_and_key_round_trips(tmp_path):
    rows = _run_rows()
    run = make_run(tmp_path, rows)
    sheet_csv, key_csv = export_rating_sheet(run, tmp_path / "out" / "sheet.csv", seed=3)
    assert key_csv == tmp_path / "out" / "sheet.key.csv"
    for p in (sheet_csv, key_csv):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    sheet, key = _read(sheet_csv), read_key(key_csv)
    assert tuple(sheet[0]) == SHEET_COLUMNS and tuple(key[0]) == KEY_COLUMNS
    # 20 + 2 non-empty generations, 4 + 2 references; the empty generation is left out
    assert len(sheet) == len(key) == 22 + 6
    raw = sheet_csv.read_text()
    cells = "\n".join(v for r in sheet for v in r.values())  # header "context" contains "text": check the cells
    for secret in (*CONDITIONS, "reference", "secret-model", "sess0", "sess1", "s1-u1", "emotion_cues", "cue "):
        assert secret not in cells, secret
    assert all(r[c] == "" for r in sheet for c in ("empathy", "comprehensiveness", "applicability", "comment"))
    ids = [r["item"] for r in sheet]
    assert len(set(ids)) == len(ids) and {r["item"] for r in key} == set(ids)
    # shuffled across conditions: the sheet is not in run order, and conditions are interleaved
    order = {r["item"]: (r["session_id"], r["utt_id"], r["condition"]) for r in key}
    seq = [order[i][2] for i in ids]
    assert seq != sorted(seq) and len({tuple(seq[j : j + 5]) for j in range(0, 20, 5)}) > 1
    # key round trip: every sheet response is exactly the reply of the row its key points to
    by_key = {(r["session_id"], r["utt_id"], r["condition"]): r for r in rows}
    for r in sheet:
        sid, uid, cond = order[r["item"]]
        src = by_key[(sid, uid, "text" if cond == "reference" else cond)]
        assert r["response"] == (src["reference"] if cond == "reference" else src["generation"])
        assert r["context"].startswith("Therapist: How are you?")
    # same seed, same files; another seed, other ids and order
    again = export_rating_sheet(run, tmp_path / "again.csv", seed=3)
    assert again[0].read_text() == raw and again[1].read_text() == key_csv.read_text()
    other = export_rating_sheet(run, tmp_path / "other.csv", seed=4)
    assert {r["item"] for r in _read(other[0])}.isdisjoint(ids)


def test_formula_cells_are_neutralised(tmp_path):
    rows = [dict(RUN_ROWS[0], generation="=HYPERLINK(\"http://x\")", reference="+1 for that")]
    sheet, _ = export_rating_sheet(make_run(tmp_path, rows), tmp_path / "s.csv")
    responses = {r["response"] for r in _read(sheet)}
    assert responses == {"'=HYPERLINK(\"http://x\")", "'+1 for that"}


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_import_long_form_ok(tmp_path):
    p = _write(tmp_path / "r.csv", "rater,item,criterion,score\nann,I1,empathy,4\nann,I1,applicability, 2 \nbob,I1,empathy,5\n")
    t = import_ratings(p, items=["I1"])
    assert t.to_pylist()[1] == {"rater": "ann", "item": "I1", "criterion": "applicability", "score": 2, "source_row": 2}


def test_import_errors_name_every_bad_row(tmp_path):
    p = _write(
        tmp_path / "r.csv",
        "rater,item,criterion,score\n"
        "ann,I1,empathy,4\n"  # row 1 ok
        "ann,I1,empathy,3\n"  # row 2 duplicate of row 1
        "ann,I2,empathy,6\n"  # row 3 out of range
        "ann,I2,warmth,3\n"  # row 4 unknown criterion
        "ann,I3,empathy,4.5\n"  # row 5 not an integer
        "ann,I9,empathy,2\n"  # row 6 unknown item
        ",I2,applicability,2\n"  # row 7 no rater
        "ann,I2,comprehensiveness,\n",  # row 8 empty score
    )
    with pytest.raises(RatingsError) as exc:
        import_ratings(p, items=["I1", "I2", "I3"])
    msg = str(exc.value)
    expected = [
        "row 2 (line 3): ann rated I1 on empathy again (first at row 1)",
        "row 3 (line 4): score '6' for empathy is not an integer 1-5",
        "row 4 (line 5): unknown criterion 'warmth'",
        "row 5 (line 6): score '4.5' for empathy is not an integer 1-5",
        "row 6 (line 7): unknown item 'I9'",
        "row 7 (line 8): empty rater",
        "row 8 (line 9): score '' for comprehensiveness is not an integer 1-5",
    ]
    for e in expected:
        assert e in msg, (e, msg)
    assert "row 1 " not in msg and len(exc.value.errors) == len(expected)


def test_import_rejects_a_wrong_header(tmp_path):
    with pytest.raises(RatingsError, match="need columns rater, item, criterion, score"):
        import_ratings(_write(tmp_path / "r.csv", "who,what\nann,I1\n"))


def test_filled_sheet_round_trip_into_agreement(tmp_path):
    run = make_run(tmp_path, _run_rows())
    sheet_csv, key_csv = export_rating_sheet(run, tmp_path / "sheet.csv", seed=0)
    judge_run(run, FakeGenerator(), "fake")
    judged = {(r["session_id"], r["utt_id"], r["condition"], r["criterion"]): r["score"]
              for r in pq.read_table(run / "judgements.parquet").to_pylist()}  # fmt: skip
    key = {r["item"]: r for r in read_key(key_csv)}
    filled = []
    for k, name in enumerate(("ann", "bob")):
        rows = _read(sheet_csv)
        for j, r in enumerate(rows):
            r["empathy"] = str(1 + (j + k * (j % 2)) % 5)
            r["applicability"] = "3" if j % 3 else ""  # blank = not rated
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=SHEET_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        filled.append(import_ratings(path, items=key_csv, rater=name))
    with pytest.raises(ValueError, match="rater="):
        import_ratings(tmp_path / "ann.csv")
    ratings = [r for t in filled for r in t.to_pylist()]
    assert {r["criterion"] for r in ratings} == {"empathy", "applicability"}
    res = agreement(ratings, pq.read_table(run / "judgements.parquet"), key_csv, n_boot=200, seed=0)
    emp = res["criteria"]["empathy"]
    assert emp["n_raters"] == 2 and emp["n_items"] == len(key)
    assert emp["kappa_quadratic"]["ann|bob"]["n"] == len(key)
    j = emp["judges"]["fake"]
    # the fake judge scored every reply except the injected one (parse failure)
    scored = sum(1 for it, k in key.items() if judged.get((k["session_id"], k["utt_id"], k["condition"], "empathy")) is not None)
    assert j["n_items"] == scored and j["n_parse_failures"] == len(key) - scored
