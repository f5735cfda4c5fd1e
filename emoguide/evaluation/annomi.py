"""AnnoMI (expert-annotated counselling transcripts) as a test bed: one loader, two validations.

* :func:`read_annomi` reads an AnnoMI-format CSV once for every use: it checks the columns, and
  collapses the copies AnnoMI keeps of each utterance (one per annotator) into one row, the therapist
  behaviour being the majority over the copies (ties broken alphabetically).
* :func:`evaluate_roles`: therapist/client role assignment (:mod:`emoguide.session.roles`) on the
  transcripts with the speakers anonymised (``emoguide eval roles``).
* :func:`evaluate_judge`: the LLM judge (:mod:`emoguide.evaluation.judge`) on real therapist utterances,
  against the expert MI-quality labels per transcript and behaviour codes per utterance (``emoguide eval
  annomi``): how well the judge's scores separate high- from low-quality counselling.
"""

from __future__ import annotations

import json
import random
import re
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emoguide.evaluation.judge import DEFAULT_RUBRIC, Rubric, generator_params, judge_replies, load_rubric
from emoguide.evaluation.reference import reply_form
from emoguide.session.roles import DEFAULT_MIN_CONFIDENCE, UNKNOWN, assign_roles

if TYPE_CHECKING:
    import pandas as pd

ANNOMI_BEHAVIOURS = ("reflection", "question", "therapist_input", "other")
_COLUMNS = {"transcript_id", "utterance_id", "interlocutor", "utterance_text"}


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------
def _majority(values: Iterable[Any]) -> Any:
    """Most frequent value; ties broken by sorted order (deterministic)."""
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    best = max(counts.values())
    return min(k for k, c in counts.items() if c == best)


def read_annomi(csv_path: str | Path, columns: Iterable[str] = ()) -> pd.DataFrame:
    """One row per (transcript_id, utterance_id), sorted by them; text cells as strings ("" when empty).

    ``columns`` are required beside the transcript, utterance, interlocutor and text columns; a file
    without them is refused with their names. ``main_therapist_behaviour``, when present, is the majority
    over the annotators' copies; every other column is identical across copies in AnnoMI.
    """
    import pandas as pd

    df = pd.read_csv(csv_path, dtype={"transcript_id": str}, keep_default_na=False)
    need = _COLUMNS | set(columns)
    if need - set(df.columns):
        raise ValueError(f"{csv_path}: not an AnnoMI CSV, missing columns {sorted(need - set(df.columns))}")
    df["utterance_id"] = df["utterance_id"].astype(int)
    keys = ["transcript_id", "utterance_id"]
    utts = df.drop_duplicates(keys).set_index(keys)
    if "main_therapist_behaviour" in df.columns:
        utts["main_therapist_behaviour"] = df.groupby(keys)["main_therapist_behaviour"].agg(_majority)
    return utts.reset_index().sort_values(keys, kind="stable")


# --------------------------------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------------------------------
def _seconds(stamp: str) -> float:
    """ "hh:mm:ss" (AnnoMI; one row has "00:09:025", read as 9 min 25 s) to seconds."""
    total = 0.0
    for part in str(stamp).strip().split(":"):
        total = total * 60 + float(part)
    return total


def annomi_sessions(csv_path: str | Path, seed: int = 0) -> list[dict]:
    """AnnoMI transcripts as sessions of anonymised utterances, with the hidden truth beside them.

    start_s comes from the timestamp; end_s from the next utterance's start (never before its own
    start), and for the last utterance from a speaking rate of 2.5 words/s. Each transcript's
    interlocutors are mapped to "S0"/"S1" in a seeded random order (transcripts in numeric order) so
    that label order cannot leak. Returns dicts: transcript_id, mi_quality, utterances
    (speaker/text/start_s/end_s), truth (speaker label -> role).
    """
    df = read_annomi(csv_path, ("timestamp", "mi_quality"))
    rng = random.Random(seed)
    sessions = []
    for tid, rows in sorted(df.groupby("transcript_id", sort=False), key=lambda g: int(str(g[0]))):
        people = sorted(rows["interlocutor"].unique())
        rng.shuffle(people)
        label = {p: f"S{i}" for i, p in enumerate(people)}
        starts = [_seconds(t) for t in rows["timestamp"]]
        texts = [str(t) for t in rows["utterance_text"]]
        utts = []
        for i, (who, text) in enumerate(zip(rows["interlocutor"], texts, strict=True)):
            end = starts[i + 1] if i + 1 < len(starts) else starts[i] + len(text.split()) / 2.5
            utts.append({"speaker": label[who], "text": text, "start_s": starts[i], "end_s": max(end, starts[i])})
        sessions.append(
            {
                "transcript_id": int(str(tid)),
                "mi_quality": str(rows["mi_quality"].iloc[0]),
                "utterances": utts,
                "truth": {label[p]: p for p in people},
            }
        )
    return sessions


def _role_result(sess: dict, min_confidence: float) -> dict:
    got = assign_roles(sess["utterances"], min_confidence=min_confidence)
    truth = sess["truth"]
    return {
        "transcript_id": sess["transcript_id"],
        "mi_quality": sess["mi_quality"],
        "right": all(got.role_for(s) == r for s, r in truth.items()),
        "abstained": all(r == UNKNOWN for r in got.roles.values()),
        "wrong": any(got.role_for(s) not in (r, UNKNOWN) for s, r in truth.items()),
        "utt_right": sum(got.role_for(u["speaker"]) == truth[u["speaker"]] for u in sess["utterances"]),
        "utt_total": len(sess["utterances"]),
    }


def _role_summary(rows: list[dict]) -> dict:
    n = len(rows)
    total = sum(r["utt_total"] for r in rows)
    return {
        "sessions": n,
        "session_accuracy": sum(r["right"] for r in rows) / n if n else float("nan"),
        "utterance_accuracy": sum(r["utt_right"] for r in rows) / total if total else float("nan"),
        "abstained": sum(r["abstained"] for r in rows) / n if n else float("nan"),
        "errors": [r["transcript_id"] for r in rows if r["wrong"]],
    }


def evaluate_roles(
    csv_path: str | Path,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    transcript_filter: Callable[[int], bool] | None = None,
    seed: int = 0,
) -> dict:
    """Role-assignment accuracy on AnnoMI-format transcripts (speakers anonymised, see annomi_sessions).

    ``transcript_filter`` (optional callable on transcript_id) selects a subset, e.g. for a split.
    Returns: ``sessions`` (count), ``session_accuracy`` (every speaker's role right),
    ``utterance_accuracy`` (each utterance's role right; "unknown" counts as wrong), ``abstained``
    (share of sessions left all "unknown"), ``errors`` (transcript ids with a wrong, non-unknown role),
    and ``by_quality``: the same numbers per ``mi_quality`` (high / low).
    """
    results = [
        _role_result(sess, min_confidence)
        for sess in annomi_sessions(csv_path, seed=seed)
        if transcript_filter is None or transcript_filter(sess["transcript_id"])
    ]
    out = _role_summary(results)
    out["by_quality"] = {
        q: _role_summary([r for r in results if r["mi_quality"] == q])
        for q in sorted({r["mi_quality"] for r in results})
    }
    return out


# --------------------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------------------
def annomi_sample(
    csv_path: str | Path, per_transcript: int = 3, seed: int = 0, context_turns: int = 6
) -> list[dict[str, Any]]:
    """The deterministic sample of therapist utterances judged by :func:`evaluate_judge`.

    Consecutive same-speaker utterances before the sampled one are kept as they are. Candidates:
    therapist utterances with non-empty text and at least one earlier utterance. From each transcript
    ``per_transcript`` are drawn without replacement with a generator seeded by (seed,
    crc32(transcript_id)), so the sample of one transcript does not depend on the others. Context: the
    ``context_turns`` utterances before it, rendered "Therapist: ..." / "Client: ...".
    """
    utts = read_annomi(csv_path, ("mi_quality", "main_therapist_behaviour"))
    sample = []
    for tid, g in utts.groupby("transcript_id", sort=True):
        g = g.reset_index(drop=True)
        cands = [
            i
            for i in range(1, len(g))
            if g.at[i, "interlocutor"] == "therapist" and str(g.at[i, "utterance_text"]).strip()
        ]
        if not cands:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(str(tid).encode())])
        picked = sorted(rng.choice(cands, size=min(per_transcript, len(cands)), replace=False).tolist())
        for i in picked:
            ctx = g.iloc[max(0, i - context_turns) : i]
            context = "\n".join(
                f"{'Therapist' if s == 'therapist' else 'Client'}: {t}"
                for s, t in zip(ctx["interlocutor"], ctx["utterance_text"], strict=True)
            )
            sample.append(
                {
                    "transcript_id": str(tid),
                    "utterance_id": int(str(g.at[i, "utterance_id"])),
                    "mi_quality": str(g.at[i, "mi_quality"]),
                    "behaviour": str(g.at[i, "main_therapist_behaviour"]),
                    "context": context,
                    "reply": str(g.at[i, "utterance_text"]),
                }
            )
    return sample


def _judge_sample(sample: list[dict[str, Any]], generator: Any, rb: Rubric) -> float:
    """Judge every sampled reply, storing scores, error, raw output and mean score on it; the wall time."""
    t0 = time.perf_counter()
    judged = judge_replies([(s["context"], s["reply"]) for s in sample], generator, rb)
    wall = time.perf_counter() - t0
    for s, (p, raw) in zip(sample, judged, strict=True):
        s["scores"], s["expected"], s["error"], s["raw"] = p.scores, p.expected, p.error, raw
        s["mean_score"] = float(np.mean(list(p.scores.values()))) if p.scores else None
    return wall


def _transcript_means(
    ok: Sequence[dict[str, Any]], key: str | None, kind: str = "scores"
) -> tuple[list[float], list[int]]:
    """Per transcript (sorted by id): the mean score (of ``key``, or of the utterances' means) and high = 1.

    ``kind`` is ``scores`` (the digits the judge wrote) or ``expected`` (:func:`judge.expected_scores`)."""
    by_t: dict[str, list[float]] = {}
    label: dict[str, int] = {}
    for s in ok:
        value = np.mean(list(s[kind].values())) if key is None else s[kind][key]
        by_t.setdefault(s["transcript_id"], []).append(float(value))
        label[s["transcript_id"]] = int(s["mi_quality"] == "high")
    tids = sorted(by_t)
    return [float(np.mean(by_t[t])) for t in tids], [label[t] for t in tids]


def _auc(scores: list[float], labels: list[int]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None


def _auc_ci(scores: list[float], labels: list[int], n_boot: int, seed: int) -> list[float]:
    """Stratified percentile bootstrap 95% CI of the AUC (high and low transcripts resampled separately)."""
    from scipy import stats

    hi = np.array([s for s, y in zip(scores, labels, strict=True) if y == 1])
    lo = np.array([s for s, y in zip(scores, labels, strict=True) if y == 0])

    def auc_stat(high: np.ndarray, low: np.ndarray) -> float:
        # P(high > low) + 0.5 P(tie): the Mann-Whitney form of ROC AUC
        d = high[:, None] - low[None, :]
        return float((d > 0).mean() + 0.5 * (d == 0).mean())

    res = stats.bootstrap(
        (hi, lo),
        auc_stat,
        n_resamples=n_boot,
        vectorized=False,
        paired=False,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def _mi_quality_auc(
    ok: Sequence[dict[str, Any]], rb: Rubric, n_boot: int, seed: int, kind: str = "scores"
) -> dict[str, Any]:
    """How well the transcript-level mean judge score separates high from low MI quality."""
    scores, labels = _transcript_means(ok, None, kind)
    auc_all = _auc(scores, labels)
    n_high = sum(labels)
    return {
        "auc": auc_all,
        "ci95": _auc_ci(scores, labels, n_boot, seed) if auc_all is not None else None,
        "n_transcripts_high": n_high,
        "n_transcripts_low": len(labels) - n_high,
        "per_criterion": {c: _auc(*_transcript_means(ok, c, kind)) for c in rb.criterion_names},
        "mean_score_high": float(np.mean([s for s, y in zip(scores, labels, strict=True) if y])) if n_high else None,
        "mean_score_low": float(np.mean([s for s, y in zip(scores, labels, strict=True) if not y]))
        if len(labels) > n_high
        else None,
        "n_boot": n_boot,
        "bootstrap": "stratified percentile (high and low transcripts resampled separately)",
    }


def _by_behaviour(ok: Sequence[dict[str, Any]], rb: Rubric) -> tuple[dict[str, Any], float | None]:
    """Mean judge scores per expert behaviour code, and the Kruskal-Wallis p across the codes."""
    from scipy import stats

    by_behaviour: dict[str, Any] = {}
    groups = []
    for b in ANNOMI_BEHAVIOURS:
        vals = [s["mean_score"] for s in ok if s["behaviour"] == b]
        by_behaviour[b] = {
            "n": len(vals),
            "mean_score": float(np.mean(vals)) if vals else None,
            **{
                f"mean_{c}": (float(np.mean([s["scores"][c] for s in ok if s["behaviour"] == b])) if vals else None)
                for c in rb.criterion_names
            },
        }
        if vals:
            groups.append(vals)
    kw_p = None
    if len(groups) >= 2 and len({v for g in groups for v in g}) > 1:
        kw_p = float(stats.kruskal(*groups).pvalue)
    return by_behaviour, kw_p


def _parse_error_kinds(sample: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Parse failures by kind (line numbers folded), most frequent first."""
    errors: dict[str, int] = {}
    for s in sample:
        if s["error"]:
            kind = re.sub(r"line \d+", "line N", s["error"]).split(":")[0]
            errors[kind] = errors.get(kind, 0) + 1
    return dict(sorted(errors.items(), key=lambda kv: -kv[1]))


def _form_rules(sample: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Agreement of :func:`reply_form`'s surface rules with the expert reflection/question codes."""
    coded = [
        (f, b) for f, b in ((reply_form(s["reply"]), s["behaviour"]) for s in sample) if b in ("reflection", "question")
    ]
    return {
        "n_question_or_reflection": len(coded),
        "accuracy": (sum(f == b for f, b in coded) / len(coded)) if coded else None,
    }


def evaluate_judge(
    csv_path: str | Path,
    generator: Any,
    judge_name: str,
    per_transcript: int = 3,
    seed: int = 0,
    *,
    rubric: str = DEFAULT_RUBRIC,
    context_turns: int = 6,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Judge a deterministic sample of AnnoMI therapist utterances and compare with the expert labels.

    Reports: n transcripts / utterances / judge calls, parse failure rate, how often one score is given to
    every criterion (a judge that does not tell the criteria apart), the score distribution per criterion, ROC AUC of
    the transcript-level mean judge score (mean over the transcript's parsed utterances of the mean of their three
    criteria) for high vs low ``mi_quality`` with a stratified
    bootstrap 95% CI (scipy.stats.bootstrap resampling high and low transcripts separately), per-criterion
    AUCs, the mean judge score per expert behaviour label with a Kruskal-Wallis p, the agreement of
    :func:`reply_form`'s surface rules with the expert behaviour codes, and timing. With an engine that exposes
    its score distributions, the AUC is also given for the expected scores (``mi_quality_auc_expected``).
    """
    rb = load_rubric(rubric)
    sample = annomi_sample(csv_path, per_transcript, seed, context_turns)
    wall = _judge_sample(sample, generator, rb)
    ok = [s for s in sample if s["mean_score"] is not None]
    by_behaviour, kw_p = _by_behaviour(ok, rb)
    return {
        "data": str(csv_path),
        "judge": judge_name,
        "rubric": rb.id,
        "rubric_sha256": rb.sha256,
        "judge_params": json.loads(generator_params(generator)),
        "sample": {
            "per_transcript": per_transcript,
            "seed": seed,
            "context_turns": context_turns,
            "n_transcripts": len({s["transcript_id"] for s in sample}),
            "n_utterances": len(sample),
        },
        "n_judge_calls": len(sample),
        "parse_failure_rate": (len(sample) - len(ok)) / len(sample) if sample else None,
        "parse_errors": _parse_error_kinds(sample),
        "one_score_for_all_criteria": (sum(len(set(x["scores"].values())) == 1 for x in ok) / len(ok)) if ok else None,
        "score_distribution": {
            c: {str(k): sum(1 for s in ok if s["scores"][c] == k) for k in range(1, 6)} for c in rb.criterion_names
        },
        "mi_quality_auc": _mi_quality_auc(ok, rb, n_boot, seed),
        "mi_quality_auc_expected": _mi_quality_auc(ok, rb, n_boot, seed, "expected")
        if ok and all(s["expected"] for s in ok)
        else None,
        "by_behaviour": by_behaviour,
        "behaviour_kruskal_p": kw_p,
        "form_rules": _form_rules(sample),
        "wall_s": wall,
        "s_per_call": wall / len(sample) if sample else None,
        "examples": [
            {k: s[k] for k in ("transcript_id", "utterance_id", "behaviour", "raw", "error")} for s in sample[:5]
        ],
    }
