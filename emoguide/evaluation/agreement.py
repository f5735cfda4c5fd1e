"""Statistics for the evaluation (pure: no models, no Ray).

* :func:`compare_conditions`: per-condition mean with a bootstrap 95% CI, and paired differences against a
  baseline condition on the same items (session_id, utt_id): paired bootstrap CI of the mean difference,
  Wilcoxon signed-rank p, Holm-adjusted across conditions. :func:`compare_judgements` runs it per judge x
  criterion over ``judgements.parquet``.
* :func:`agreement`: inter-expert reliability (Krippendorff's alpha, ordinal; quadratic-weighted Cohen's
  kappa per rater pair) and judge-expert agreement (Spearman rho, Kendall tau-b, mean bias judge - expert),
  each with a bootstrap CI over items.

Reproducibility: items are sorted by their key before resampling (row order does not matter), and every CI uses its own
generator ``np.random.default_rng([seed, crc32(label)])`` where the label names the quantity (e.g. ``"mean/face"``), so
a result depends on ``seed`` and on its own data only, not
on which other conditions or criteria were computed. Means and paired differences use
``scipy.stats.bootstrap`` with BCa; statistics over items (alpha, kappa, correlations, bias) resample item
indices with ``scipy.stats.bootstrap`` (percentile method), ignoring degenerate resamples where the statistic
is undefined (their count is reported as ``n_undefined``).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

CI_LEVEL = 0.95
SCORES = (1, 2, 3, 4, 5)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def as_rows(data: Any) -> list[dict[str, Any]]:
    """Rows from a pyarrow Table, a pandas DataFrame, a path to a Parquet/CSV file, or an iterable of dicts."""
    from pathlib import Path

    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        import csv

        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if hasattr(data, "to_pylist"):
        return data.to_pylist()
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        return data.to_dict("records")
    return [dict(r) for r in data]


def _rng(seed: int, label: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(label.encode())])


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _order(key: tuple) -> tuple:
    """Sort key for item keys (so results do not depend on row order; None-safe)."""
    return tuple(str(x) for x in key)


def _clean(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def mean_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, label: str = "mean") -> dict[str, Any]:
    """{n, mean, ci_low, ci_high}: BCa bootstrap CI of the mean (CI null when n < 2; a point when constant)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=float)
    out: dict[str, Any] = {
        "n": int(x.size),
        "mean": float(x.mean()) if x.size else None,
        "ci_low": None,
        "ci_high": None,
    }
    if x.size < 2:
        return out
    if np.ptp(x) == 0:
        out["ci_low"] = out["ci_high"] = float(x[0])
        return out
    res = stats.bootstrap(
        (x,), np.mean, n_resamples=n_boot, confidence_level=CI_LEVEL, method="BCa", rng=_rng(seed, label)
    )
    out["ci_low"], out["ci_high"] = _clean(res.confidence_interval.low), _clean(res.confidence_interval.high)
    return out


def paired_difference(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0, label: str = "diff"
) -> dict[str, Any]:
    """Mean of ``a - b`` over pairs with a paired BCa bootstrap CI and a Wilcoxon signed-rank test.

    Wilcoxon uses scipy's defaults (two-sided, zero differences dropped: ``zero_method="wilcox"``); when every
    difference is zero the p-value is 1.0.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    out: dict[str, Any] = {
        "n_pairs": int(d.size),
        "mean_diff": float(d.mean()) if d.size else None,
        "ci_low": None,
        "ci_high": None,
        "wilcoxon_stat": None,
        "p_value": None,
    }
    if d.size < 2:
        return out
    if np.ptp(d) == 0:
        out["ci_low"] = out["ci_high"] = float(d[0])
    else:
        res = stats.bootstrap(
            (x, y),
            lambda u, v, axis=-1: np.mean(u - v, axis=axis),
            paired=True,
            n_resamples=n_boot,
            confidence_level=CI_LEVEL,
            method="BCa",
            rng=_rng(seed, label),
        )
        out["ci_low"], out["ci_high"] = _clean(res.confidence_interval.low), _clean(res.confidence_interval.high)
    if np.all(d == 0):
        out["wilcoxon_stat"], out["p_value"] = 0.0, 1.0
    else:
        w = stats.wilcoxon(x, y)
        out["wilcoxon_stat"], out["p_value"] = float(w.statistic), float(w.pvalue)
    return out


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None)."""
    valid = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda t: t[0])
    m, running, out = len(valid), 0.0, dict.fromkeys(pvalues)
    for i, (p, k) in enumerate(valid):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def bootstrap_items(
    n_items: int,
    statistic: Callable[[np.ndarray], float | None],
    n_boot: int = 2000,
    seed: int = 0,
    label: str = "items",
) -> dict[str, Any]:
    """Percentile bootstrap CI of ``statistic(item_indices)`` resampling items with replacement.

    Resamples where the statistic is undefined (None/NaN, e.g. a correlation of a constant) are left out of
    the percentiles and counted in ``n_undefined``.
    """
    from scipy import stats

    def stat(idx: np.ndarray) -> float:
        v = statistic(idx.astype(int))
        return np.nan if v is None else float(v)

    point = stat(np.arange(n_items))
    out: dict[str, Any] = {"value": _clean(point), "ci_low": None, "ci_high": None, "n_undefined": None}
    if n_items < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (np.arange(n_items, dtype=float),),
            stat,
            n_resamples=n_boot,
            vectorized=False,
            method="percentile",
            confidence_level=CI_LEVEL,
            rng=_rng(seed, label),
        )
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    ok = dist[np.isfinite(dist)]
    out["n_undefined"] = int(dist.size - ok.size)
    if ok.size:
        alpha = (1 - CI_LEVEL) / 2
        out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(ok, [alpha, 1 - alpha]))
    return out


# --------------------------------------------------------------------------------------------------
# Condition comparison
# --------------------------------------------------------------------------------------------------
def compare_conditions(
    rows: Any,
    value: str = "score",
    baseline: str = "text",
    n_boot: int = 2000,
    seed: int = 0,
    *,
    where: Mapping[str, Any] | None = None,
    item_keys: Sequence[str] = ("session_id", "utt_id"),
) -> dict[str, Any]:
    """Compare conditions on ``value`` (e.g. a judge's ``score`` or ``rouge_l_f``).

    ``rows``: judgements or reference-metrics rows (Table, DataFrame or dicts) with ``condition``,
    ``item_keys`` and ``value``; ``where`` keeps rows whose columns equal the given values (e.g.
    ``{"criterion": "empathy", "judge": "smollm2"}``). After filtering there must be at most one row per item x
    condition (else ValueError: filter by criterion/judge/model). Null values are left out.

    Returns ``{"value", "baseline", "n_boot", "seed", "ci_level", "conditions": {c: {n, mean, ci_low,
    ci_high}}, "differences": {c: {n_pairs, mean_diff (c - baseline), ci_low, ci_high, wilcoxon_stat, p_value,
    p_holm}}}`` where differences use only items that have a value under both c and the baseline.
    """
    data = as_rows(rows)
    if where:
        data = [r for r in data if all(r.get(k) == v for k, v in where.items())]
    by_cond: dict[str | None, dict[tuple, float]] = {}
    for r in data:
        cond, key = r.get("condition"), tuple(r.get(k) for k in item_keys)
        cell = by_cond.setdefault(cond, {})
        if key in cell:
            raise ValueError(
                f"more than one row for item {key} under condition {cond!r}: filter with where= "
                "(criterion, judge, model) so each item has one value per condition"
            )
        v = _num(r.get(value))
        if v is not None:
            cell[key] = v
        else:
            cell.setdefault(key, None)  # type: ignore[arg-type]  # marks the item as present but missing
    conditions = sorted(by_cond, key=lambda c: (c != baseline, str(c)))
    out: dict[str, Any] = {
        "value": value,
        "baseline": baseline,
        "n_boot": n_boot,
        "seed": seed,
        "ci_level": CI_LEVEL,
        "where": dict(where or {}),
        "conditions": {},
        "differences": {},
    }
    for c in conditions:
        vals = [by_cond[c][k] for k in sorted(by_cond[c], key=_order) if by_cond[c][k] is not None]
        out["conditions"][c] = mean_ci(vals, n_boot, seed, f"mean/{c}") | {
            "n_missing": sum(1 for v in by_cond[c].values() if v is None)
        }
    base = by_cond.get(baseline)
    if base is None:
        out["note"] = f"baseline condition {baseline!r} not present; no paired differences"
        return out
    for c in conditions:
        if c == baseline:
            continue
        common = sorted((k for k, v in by_cond[c].items() if v is not None and base.get(k) is not None), key=_order)
        out["differences"][c] = paired_difference(
            [by_cond[c][k] for k in common], [base[k] for k in common], n_boot, seed, f"diff/{c}-{baseline}"
        )
    adjusted = holm({c: d["p_value"] for c, d in out["differences"].items()})
    for c, p in adjusted.items():
        out["differences"][c]["p_holm"] = p
    return out


def compare_judgements(
    judgements: Any, baseline: str = "text", n_boot: int = 2000, seed: int = 0, model: str | None = None
) -> dict[str, dict[str, Any]]:
    """:func:`compare_conditions` on ``score`` for each judge x criterion: ``{judge: {criterion: result}}``.

    The reference rows (model ``reference``) are kept; ``model`` restricts the generated rows to one model
    when a run holds several.
    """
    data = as_rows(judgements)
    if model is not None:
        data = [r for r in data if r.get("model") in (model, "reference")]
    out: dict[str, dict[str, Any]] = {}
    for judge in sorted({r["judge"] for r in data}):
        for crit in sorted({r["criterion"] for r in data if r["judge"] == judge}):
            out.setdefault(judge, {})[crit] = compare_conditions(
                data, "score", baseline, n_boot, seed, where={"judge": judge, "criterion": crit}
            )
    return out


# --------------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------------
def krippendorff_alpha(reliability_data: Any, level: str = "ordinal") -> float | None:
    """Krippendorff's alpha (``krippendorff`` package) of a raters x units matrix with NaN for missing.

    None when undefined (fewer than two pairable values, or a single value used throughout).
    """
    import krippendorff

    data = np.asarray(reliability_data, dtype=float)
    pairable = (np.sum(~np.isnan(data), axis=0) >= 2) if data.ndim == 2 and data.size else np.array([])
    if pairable.sum() < 1:
        return None
    values = data[:, pairable]
    if np.unique(values[~np.isnan(values)]).size < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = krippendorff.alpha(
            reliability_data=data,
            value_domain=list(SCORES) if level == "ordinal" else None,
            level_of_measurement=level,
        )
    return _clean(a)


def _kappa_of_items(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> float | None:
    """Weighted kappa of two raters over the resampled items ``idx``."""
    return weighted_kappa(a[idx], b[idx])


def _alpha_of_items(mat: np.ndarray, idx: np.ndarray) -> float | None:
    """Ordinal alpha of a raters x items matrix over the resampled items ``idx``."""
    return krippendorff_alpha(mat[:, idx], "ordinal")


def weighted_kappa(a: Sequence[int], b: Sequence[int], labels: Sequence[int] = SCORES) -> float | None:
    """Quadratic-weighted Cohen's kappa over the full 1-5 scale (None when undefined)."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = cohen_kappa_score(list(a), list(b), labels=list(labels), weights="quadratic")
    return _clean(k)


def _load_key(key: Any) -> dict[str, dict[str, Any]]:
    return {str(r["item"]): r for r in as_rows(key)}


def _judged_items(judgements: Any, key: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(judge, criterion) -> blinded item -> score (None for a parse failure), through the sheet's key."""
    if key is None:
        raise ValueError("agreement: judgements need the rating sheet's key to map items to replies")
    item_of: dict[tuple, str] = {}
    for item, k in _load_key(key).items():
        item_of[(str(k["session_id"]), str(k["utt_id"]), str(k["condition"]), str(k.get("model") or ""))] = item
    judged: dict[tuple[str, str], dict[str, Any]] = {}
    for j in as_rows(judgements):
        rated = item_of.get((str(j["session_id"]), str(j["utt_id"]), str(j["condition"]), str(j.get("model") or "")))
        if rated is not None:
            judged.setdefault((j["judge"], j["criterion"]), {})[rated] = _num(j.get("score"))
    return judged


def _rating_matrix(crit_rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], np.ndarray]:
    """(raters, items, raters x items scores with NaN where a rater left an item out)."""
    raters = sorted({str(r["rater"]) for r in crit_rows})
    items = sorted({str(r["item"]) for r in crit_rows})
    r_idx, i_idx = {r: n for n, r in enumerate(raters)}, {i: n for n, i in enumerate(items)}
    mat = np.full((len(raters), len(items)), np.nan)
    for r in crit_rows:
        mat[r_idx[str(r["rater"])], i_idx[str(r["item"])]] = float(r["score"])
    return raters, items, mat


def _pairwise_kappas(raters: list[str], mat: np.ndarray, crit: str, n_boot: int, seed: int) -> dict[str, Any]:
    """Quadratic-weighted kappa of every rater pair over the items both rated."""
    kappas = {}
    for (n1, r1), (n2, r2) in itertools.combinations(enumerate(raters), 2):
        both = ~np.isnan(mat[n1]) & ~np.isnan(mat[n2])
        a, b = mat[n1, both].astype(int), mat[n2, both].astype(int)
        kappas[f"{r1}|{r2}"] = {"n": int(both.sum())} | bootstrap_items(
            int(both.sum()),
            functools.partial(_kappa_of_items, a, b),
            n_boot,
            seed,
            f"kappa/{crit}/{r1}|{r2}",
        )
    return kappas


def _correlation(fn: Callable[..., Any], js: np.ndarray, ex: np.ndarray) -> Callable[[np.ndarray], Any]:
    """A bootstrap statistic: ``fn``'s statistic on the resampled pairs, None when either side is constant."""

    def stat(idx: np.ndarray) -> float | None:
        a, b = js[idx], ex[idx]
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return None
        return fn(a, b).statistic

    return stat


def _judge_vs_experts(
    judge: str,
    crit: str,
    scores: Mapping[str, Any],
    items: list[str],
    expert_mean: Mapping[str, float],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """One judge against the experts' mean on one criterion: correlations and bias, over the items it scored."""
    from scipy import stats

    common = [i for i in items if scores.get(i) is not None]
    js = np.array([scores[i] for i in common], dtype=float)
    ex = np.array([expert_mean[i] for i in common], dtype=float)
    n = len(common)
    return {
        "n_items": n,
        "n_parse_failures": sum(1 for i in items if i in scores and scores[i] is None),
        "judge_mean": float(js.mean()) if n else None,
        "expert_mean": float(ex.mean()) if n else None,
        "spearman": bootstrap_items(n, _correlation(stats.spearmanr, js, ex), n_boot, seed, f"rho/{crit}/{judge}"),
        "kendall": bootstrap_items(n, _correlation(stats.kendalltau, js, ex), n_boot, seed, f"tau/{crit}/{judge}"),
        "bias": bootstrap_items(
            n,
            lambda idx: float(np.mean(js[idx] - ex[idx])) if len(idx) else None,
            n_boot,
            seed,
            f"bias/{crit}/{judge}",
        ),
    }


def _criterion_agreement(
    crit: str,
    crit_rows: Sequence[Mapping[str, Any]],
    judged: Mapping[tuple[str, str], Mapping[str, Any]],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Everything :func:`agreement` reports for one criterion."""
    raters, items, mat = _rating_matrix(crit_rows)
    res: dict[str, Any] = {
        "n_items": len(items),
        "n_raters": len(raters),
        "n_items_multiply_rated": int((np.sum(~np.isnan(mat), axis=0) >= 2).sum()),
    }
    res["krippendorff_alpha_ordinal"] = bootstrap_items(
        len(items), functools.partial(_alpha_of_items, mat), n_boot, seed, f"alpha/{crit}"
    )
    res["kappa_quadratic"] = _pairwise_kappas(raters, mat, crit, n_boot, seed)
    expert_mean = {i: float(np.nanmean(mat[:, n])) for n, i in enumerate(items)}
    judges = {
        judge: _judge_vs_experts(judge, crit, scores, items, expert_mean, n_boot, seed)
        for (judge, jcrit), scores in sorted(judged.items())
        if jcrit == crit
    }
    if judges:
        res["judges"] = judges
    return res


def agreement(
    ratings: Any, judgements: Any = None, key: Any = None, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Inter-expert and judge-expert agreement per criterion.

    ``ratings``: rows with rater, item, criterion, score (as :func:`emoguide.evaluation.ratings.import_ratings`
    returns).
    ``judgements`` (optional): ``judgements.parquet`` rows; ``key``: the rating sheet's key (item → session_id,
    utt_id, condition, model), needed to map blinded items to judged replies.

    Per criterion: ``krippendorff_alpha_ordinal`` (all raters, items as units, bootstrap over items),
    ``kappa_quadratic`` per rater pair (items both rated), and per judge: ``spearman``, ``kendall`` (tau-b),
    ``bias`` (mean of judge score - expert mean score; positive = the judge is more lenient), computed over
    items with a judge score and at least one expert score, each ``{value, ci_low, ci_high, n_undefined}``,
    plus ``n_items`` and the judge's parse failures on those items.
    """
    rows = as_rows(ratings)
    judged = _judged_items(judgements, key) if judgements is not None else {}
    criteria = {
        crit: _criterion_agreement(crit, [r for r in rows if r["criterion"] == crit], judged, n_boot, seed)
        for crit in sorted({r["criterion"] for r in rows})
    }
    return {"n_boot": n_boot, "seed": seed, "ci_level": CI_LEVEL, "criteria": criteria}
