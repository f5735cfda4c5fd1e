"""emoguide.evaluation.agreement: published Krippendorff values, hand-computed kappa, seeded bootstrap, paired comparison."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from emoguide.evaluation.agreement import (
    agreement,
    compare_conditions,
    compare_judgements,
    holm,
    krippendorff_alpha,
    mean_ci,
    weighted_kappa,
)

n = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 observers x 12 units, values
# 1-5, missing values. Published: nominal .743, ordinal .815, interval .849, ratio .797.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
    [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
]


@pytest.mark.parametrize(
    "level, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)]
)
def test_krippendorff_alpha_published_example(level, published):
    assert round(krippendorff_alpha(KRIPPENDORFF_2011, level), 3) == published


def test_krippendorff_alpha_undefined_and_perfect():
    assert krippendorff_alpha([[3, 3, 3], [3, 3, 3]]) is None  # no variation: alpha undefined
    assert krippendorff_alpha([[1, n], [n, 2]]) is None  # nothing pairable
    assert krippendorff_alpha([[1, 2, 5], [1, 2, 5]]) == pytest.approx(1.0)


def test_weighted_kappa_hand_case():
    # a = 1,2,3,4 and b = 1,2,3,5 on the 1-5 scale, w = (i-j)^2/16:
    # observed sum w*p = (1/4)(1/16) = 1/64; expected sum w*pa*pb = 56/256 (sum of (i-j)^2 over the 16 cells
    # i in {1,2,3,4}, j in {1,2,3,5} is 56, each cell 1/16); kappa = 1 - (1/64)/(56/256) = 13/14
    assert weighted_kappa([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(13 / 14)
    assert weighted_kappa([1, 3, 5], [1, 3, 5]) == pytest.approx(1.0)
    assert weighted_kappa([], []) is None


def _synthetic(seed=1, n_items=150):
    rng = np.random.default_rng(seed)
    base = rng.normal(3.0, 0.7, n_items)
    rows = []
    for i, b in enumerate(base):
        key = {"session_id": f"s{i // 10}", "utt_id": f"u{i}"}
        rows.append(key | {"condition": "text", "score": b})
        rows.append(key | {"condition": "face", "score": b + 0.5 + rng.normal(0, 0.3)})  # known effect +0.5
        rows.append(key | {"condition": "voice", "score": b + rng.normal(0, 0.3)})  # no effect
    return rows


def test_paired_comparison_recovers_a_known_effect():
    res = compare_conditions(_synthetic(), "score", baseline="text", n_boot=1000, seed=0)
    face, voice = res["differences"]["face"], res["differences"]["voice"]
    assert face["n_pairs"] == 150
    assert face["ci_low"] < 0.5 < face["ci_high"] and face["ci_low"] > 0.3
    assert face["p_value"] < 1e-10 and face["p_holm"] < 1e-10
    assert voice["ci_low"] < 0 < voice["ci_high"] and voice["p_value"] > 0.01
    assert list(res["conditions"]) == ["text", "face", "voice"]  # baseline first
    c = res["conditions"]["text"]
    assert c["ci_low"] < c["mean"] < c["ci_high"] and c["n"] == 150


def test_bootstrap_is_seeded_and_reproducible():
    rows = _synthetic()
    a = compare_conditions(rows, n_boot=500, seed=7)
    b = compare_conditions(list(reversed(rows)), n_boot=500, seed=7)
    assert a == b
    c = compare_conditions(rows, n_boot=500, seed=8)
    assert c["differences"]["face"]["ci_low"] != a["differences"]["face"]["ci_low"]
    assert c["differences"]["face"]["mean_diff"] == a["differences"]["face"]["mean_diff"]
    # a CI depends on its own data only: dropping a condition leaves the others unchanged
    d = compare_conditions([r for r in rows if r["condition"] != "voice"], n_boot=500, seed=7)
    assert d["differences"]["face"] == a["differences"]["face"] | {"p_holm": d["differences"]["face"]["p_holm"]}
    assert mean_ci([1.0, 2.0, 4.0, 3.0], 300, 3) == mean_ci([1.0, 2.0, 4.0, 3.0], 300, 3)


def test_pairing_uses_common_items_and_rejects_mixed_rows():
    rows = [
        {"session_id": "s", "utt_id": "u1", "condition": "text", "score": 2},
        {"session_id": "s", "utt_id": "u1", "condition": "face", "score": 4},
        {"session_id": "s", "utt_id": "u2", "condition": "text", "score": 3},
        {"session_id": "s", "utt_id": "u2", "condition": "face", "score": None},  # parse failure
        {"session_id": "s", "utt_id": "u3", "condition": "face", "score": 5},  # no baseline
        {"session_id": "s", "utt_id": "u4", "condition": "text", "score": 1},
        {"session_id": "s", "utt_id": "u4", "condition": "face", "score": 2},
    ]
    res = compare_conditions(pa.Table.from_pylist(rows), n_boot=200)
    assert res["differences"]["face"]["n_pairs"] == 2 and res["differences"]["face"]["mean_diff"] == 1.5
    assert res["conditions"]["face"]["n"] == 3 and res["conditions"]["face"]["n_missing"] == 1
    with pytest.raises(ValueError, match="filter with where"):
        compare_conditions(rows + [rows[0]])
    same = [{"session_id": "s", "utt_id": f"u{i}", "condition": c, "score": 3} for i in range(5) for c in ("text", "face")]
    d = compare_conditions(same, n_boot=100)["differences"]["face"]
    assert d["mean_diff"] == 0 and d["p_value"] == 1.0 and d["ci_low"] == d["ci_high"] == 0


def test_compare_judgements_per_judge_and_criterion():
    rows = [
        {"session_id": "s", "utt_id": f"u{i}", "condition": c, "model": "m" if c != "reference" else "reference",
         "judge": "j", "criterion": k, "score": (i % 5) + 1 + (c == "face")}
        for i in range(12) for c in ("text", "face", "reference") for k in ("empathy", "applicability")
    ]  # fmt: skip
    out = compare_judgements(rows, n_boot=200)
    assert set(out["j"]) == {"empathy", "applicability"}
    assert out["j"]["empathy"]["differences"]["face"]["n_pairs"] == 12
    assert set(out["j"]["empathy"]["differences"]) == {"face", "reference"}


def test_holm():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None}) == {"a": 0.03, "b": 0.06, "c": 0.06, "d": None}


def _ratings(n_items=30, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, n_items)
    rows = []
    for rater in ("r1", "r2", "r3"):
        for i, t in enumerate(truth):
            s = int(np.clip(t + (rng.integers(-1, 2) if noise and rng.random() < noise else 0), 1, 5))
            rows.append({"rater": rater, "item": f"I{i:03d}", "criterion": "empathy", "score": s})
    return rows, truth


def test_agreement_inter_expert_and_judge():
    rows, truth = _ratings()
    key = [{"item": f"I{i:03d}", "session_id": "s", "utt_id": f"u{i}", "condition": "text", "model": "m"} for i in range(30)]
    judg = [{"session_id": "s", "utt_id": f"u{i}", "condition": "text", "model": "m", "judge": "j", "criterion": "empathy",
             "score": int(min(t + 1, 5)) if i != 0 else None} for i, t in enumerate(truth)]  # fmt: skip
    res = agreement(rows, judg, key, n_boot=300, seed=0)
    emp = res["criteria"]["empathy"]
    assert emp["n_items"] == 30 and emp["n_raters"] == 3
    assert emp["krippendorff_alpha_ordinal"]["value"] == pytest.approx(1.0)
    assert set(emp["kappa_quadratic"]) == {"r1|r2", "r1|r3", "r2|r3"}
    assert emp["kappa_quadratic"]["r1|r2"]["value"] == pytest.approx(1.0) and emp["kappa_quadratic"]["r1|r2"]["n"] == 30
    j = emp["judges"]["j"]
    assert j["n_items"] == 29 and j["n_parse_failures"] == 1
    assert j["spearman"]["value"] > 0.9 and j["kendall"]["value"] > 0.8
    assert 0 < j["bias"]["value"] <= 1 and j["bias"]["ci_low"] <= j["bias"]["value"] <= j["bias"]["ci_high"]
    assert agreement(rows, judg, key, n_boot=300, seed=0) == res
    with pytest.raises(ValueError, match="key"):
        agreement(rows, judg, None)


def test_agreement_with_noisy_raters_is_below_one_with_a_ci():
    rows, _ = _ratings(n_items=60, seed=3, noise=0.5)
    emp = agreement(rows, n_boot=300, seed=0)["criteria"]["empathy"]
    a = emp["krippendorff_alpha_ordinal"]
    assert 0.3 < a["value"] < 1 and a["ci_low"] < a["value"] < a["ci_high"]
    assert "judges" not in emp
