"""``emoguide eval pipeline``: how well the whole pipeline's tables match sessions with known truth.

The perception models are measured on pre-cut clips elsewhere (``evaluation.py``); this measures what a
user gets from ``emoguide run``, where the pipeline itself decides what an utterance is. The sessions are
built from ``../shared/data`` (``benchmarks/pipeline_material.py``: RAVDESS clips joined with silence,
a GRID face lip-synced to RAVDESS voices, GRID clips), run through ``emoguide run --no-generate``, and
the run's ``utterances.parquet`` is scored against each clip's speech span, words and emotion. The
scoring is pure functions of plain rows (no Ray), so it reads any pipeline version's tables: a column
that is absent (e.g. ``dissonance_reason``) is simply not tallied.

Definitions (also in the report and the README):

* boundaries: a clip's speech span and an utterance match when both its start and its end lie within
  ``BOUNDARY_TOL_S`` of the span's; matching is one-to-one, closest pairs first. Precision = matched /
  utterances, recall = matched / clips.
* words: every word of the session belongs to the clip whose region holds its midpoint (regions split the
  session halfway between neighbouring clips' speech, so words invented in a pause still count). WER is
  pooled (errors / reference words); RAVDESS clips end mid-sentence, so their reference is the prefix of
  the statement with the lowest WER (``textnorm.prefix_wer``); words per reference word is pooled
  against the full statement (a clip cannot hold more words than that).
* word times: on the GRID clip with the corpus alignment, mean absolute start and end error of the words
  a minimal-edit alignment pairs; on RAVDESS clips, the first word's start and last word's end against the
  clip's speech span (``word_edge_error_s``).
* voice: a clip's label is the argmax of its overlapping utterances' ``voice_probs``, weighted by overlap
  with its speech span (calm counts as neutral: 7 classes). A clip with no voice value counts as wrong in
  ``accuracy`` and is left out of ``accuracy_scored``.
* dissonance: a clip takes the ``dissonance`` of the utterance with a value that overlaps its speech span
  most; false-alarm rate over congruent clips with a value, hit rate over incongruent ones, and the share
  of clips with no value.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emoguide.dataio.tables import open_atomic
from emoguide.evaluation.textnorm import matched_words, normalise, prefix_wer, word_errors
from models.emotion import LABELS

BOUNDARY_TOL_S = 0.5
CLASSES = tuple(label for label in LABELS if label != "contempt")  # RAVDESS has no contempt: 7 classes
NO_VALUE = "no value"
KINDS = ("audio", "dubbed", "grid")
# The targets on RAVDESS actors 13-18 (issue 16), shown beside the numbers.
TARGETS = {
    "boundary_f1": "≥ 0.9",
    "wer": "≤ 0.25",
    "words_per_ref_word": "≤ 1.1",
    "voice_accuracy": "≥ 0.50",
    "dissonance_false_alarm_rate": "≤ 0.2",
    "dissonance_hit_rate": "≥ 0.6",
    "dissonance_null_share": "≤ 0.1",
}


# --------------------------------------------------------------------------------------------------
# Per clip
# --------------------------------------------------------------------------------------------------


def match_boundaries(
    truth: Sequence[tuple[float, float]], utterances: Sequence[tuple[float, float]], tol_s: float = BOUNDARY_TOL_S
) -> list[int | None]:
    """For each true span, the index of the utterance matched to it (or None), one-to-one.

    A pair can match when both edges are within ``tol_s``; pairs are taken closest first (by the larger of
    the two edge errors), which is optimal here because true spans are further apart than ``2 * tol_s``.
    """
    pairs = sorted(
        (max(abs(us - ts), abs(ue - te)), i, j)
        for i, (ts, te) in enumerate(truth)
        for j, (us, ue) in enumerate(utterances)
        if abs(us - ts) <= tol_s and abs(ue - te) <= tol_s
    )
    matched: list[int | None] = [None] * len(truth)
    used: set[int] = set()
    for _, i, j in pairs:
        if matched[i] is None and j not in used:
            matched[i] = j
            used.add(j)
    return matched


def prf(n_matched: int, n_true: int, n_pred: int) -> dict[str, float | int]:
    """Precision, recall and F1 from counts (0 where undefined)."""
    precision = n_matched / n_pred if n_pred else 0.0
    recall = n_matched / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n_clips": n_true,
        "n_utterances": n_pred,
        "n_matched": n_matched,
    }


def clip_regions(clips: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """The part of the session timeline each clip owns: halfway to its neighbours' speech, open-ended at
    both ends of the session, so every moment (and every word) belongs to exactly one clip."""
    cuts = [(a["speech_end_s"] + b["speech_start_s"]) / 2 for a, b in itertools.pairwise(clips)]
    return list(zip([-np.inf, *cuts], [*cuts, np.inf], strict=True))


def words_by_clip(clips: Sequence[Mapping[str, Any]], utterances: Sequence[Mapping[str, Any]]) -> list[list[dict]]:
    """Each clip's words (from every utterance's ``words``), by the clip region holding the word's midpoint."""
    regions = clip_regions(clips)
    out: list[list[dict]] = [[] for _ in clips]
    for utt in utterances:
        for word in utt.get("words") or []:
            mid = (word["start"] + word["end"]) / 2
            out[next(i for i, (a, b) in enumerate(regions) if a <= mid < b)].append(word)
    for words in out:
        words.sort(key=lambda w: w["start"])
    return out


def _tokens(words: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float]]:
    """Normalised tokens of timed words (a word like 'F2' gives two tokens with its times)."""
    return [(token, w["start"], w["end"]) for w in words for token in normalise(w["word"])]


def text_score(clip: Mapping[str, Any], words: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Word errors of one clip: errors and reference length (prefix for truncated clips), words heard,
    full statement length, and how far the first and last word lie from the speech span's edges."""
    reference = clip["statement"].split()
    hypothesis = [t for t, _, _ in _tokens(words)]
    if clip.get("truncated"):
        errors, ref_len = prefix_wer(reference, hypothesis)
    else:
        errors, ref_len = word_errors(reference, hypothesis), len(reference)
    edges = (
        [abs(words[0]["start"] - clip["speech_start_s"]), abs(words[-1]["end"] - clip["speech_end_s"])] if words else []
    )
    return {
        "errors": errors,
        "ref_words": ref_len,
        "hyp_words": len(hypothesis),
        "statement_words": len(reference),
        "edge_errors_s": edges,
    }


def word_time_error(
    reference: Sequence[Mapping[str, Any]], words: Sequence[Mapping[str, Any]], offset_s: float = 0.0
) -> dict[str, Any]:
    """Mean absolute start and end error (s) of the hypothesis words aligned to reference words."""
    ref = [(w["word"].lower(), w["start"] + offset_s, w["end"] + offset_s) for w in reference]
    hyp = _tokens(words)
    pairs = matched_words([r[0] for r in ref], [h[0] for h in hyp])
    if not pairs:
        return {"start_s": None, "end_s": None, "n_words": 0, "n_reference": len(ref)}
    return {
        "start_s": float(np.mean([abs(hyp[j][1] - ref[i][1]) for i, j in pairs])),
        "end_s": float(np.mean([abs(hyp[j][2] - ref[i][2]) for i, j in pairs])),
        "n_words": len(pairs),
        "n_reference": len(ref),
    }


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _has(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def voice_label(span: tuple[float, float], utterances: Sequence[Mapping[str, Any]]) -> str:
    """The clip's voice label: argmax of overlap-weighted ``voice_probs`` (calm is neutral already), or
    ``NO_VALUE`` when no overlapping utterance has one."""
    total = np.zeros(len(LABELS))
    for utt in utterances:
        weight = _overlap(span, (utt["start_s"], utt["end_s"]))
        probs = utt.get("voice_probs")
        if weight > 0 and probs is not None and np.all(np.isfinite(probs)):
            total += weight * np.asarray(probs, float)
    return LABELS[int(total.argmax())] if total.any() else NO_VALUE


def dissonance_of(span: tuple[float, float], utterances: Sequence[Mapping[str, Any]]) -> tuple[bool | None, str | None]:
    """(dissonance, reason) of the clip: the value of the utterance with a value that overlaps it most;
    with none, (None, why): the ``dissonance_reason`` of the most-overlapping utterance when the table has
    that column, else "null dissonance", or "no utterance" when nothing overlaps."""
    overlapping = sorted(
        ((_overlap(span, (u["start_s"], u["end_s"])), k) for k, u in enumerate(utterances)), reverse=True
    )
    overlapping = [(w, k) for w, k in overlapping if w > 0]
    for _, k in overlapping:
        if _has(utterances[k].get("dissonance")):
            return bool(utterances[k]["dissonance"]), None
    if not overlapping:
        return None, "no utterance"
    return None, utterances[overlapping[0][1]].get("dissonance_reason") or "null dissonance"


def score_session(
    session: Mapping[str, Any], utterances: Sequence[Mapping[str, Any]], ok: bool = True
) -> dict[str, Any]:
    """Per-clip records and boundary counts of one session (a failed session: nothing found)."""
    clips = session["clips"]
    utterances = sorted(utterances if ok else [], key=lambda u: u["start_s"])
    spans = [(c["speech_start_s"], c["speech_end_s"]) for c in clips]
    matched = match_boundaries(spans, [(u["start_s"], u["end_s"]) for u in utterances])
    records = []
    for clip, span, words, match in zip(clips, spans, words_by_clip(clips, utterances), matched, strict=True):
        dissonant, reason = dissonance_of(span, utterances)
        record = {
            "session_id": session["session_id"],
            "kind": session["kind"],
            "actor": session["actor"],
            "source": clip["source"],
            "emotion": clip["emotion"],
            "congruent": clip.get("congruent"),
            "boundary_matched": match is not None,
            "voice": voice_label(span, utterances),
            "dissonance": dissonant,
            "dissonance_reason": reason,
            **text_score(clip, words),
        }
        if "words" in clip:
            record["word_time_error"] = word_time_error(clip["words"], words, offset_s=clip["start_s"])
        records.append(record)
    return {
        "records": records,
        "boundaries": (sum(m is not None for m in matched), len(clips), len(utterances)),
        "asr_flags": asr_flags(utterances),
    }


def asr_flags(utterances: Sequence[Mapping[str, Any]]) -> Counter:
    """How often each ASR flag was raised (an ``asr_flags`` column of flag names, or one name per row);
    empty where the table has no such column."""
    counts: Counter = Counter()
    for utt in utterances:
        flags = utt.get("asr_flags")
        counts.update([flags] if isinstance(flags, str) else (flags or []))
    return counts


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def voice_summary(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy (no value counts as wrong), accuracy over clips with a value, macro-F1 over the 7 classes
    (no value is a wrong prediction), and the confusion matrix (rows true, columns predicted + no value)."""
    from sklearn.metrics import f1_score

    n = len(truth)
    scored = [(t, p) for t, p in zip(truth, predicted, strict=True) if p != NO_VALUE]
    columns = [*LABELS, NO_VALUE]
    confusion = [
        [sum(1 for t, p in zip(truth, predicted, strict=True) if t == row and p == col) for col in columns]
        for row in CLASSES
    ]
    return {
        "accuracy": sum(t == p for t, p in scored) / n if n else None,
        "accuracy_scored": sum(t == p for t, p in scored) / len(scored) if scored else None,
        "macro_f1": float(f1_score(truth, predicted, labels=list(CLASSES), average="macro", zero_division=0))
        if n
        else None,
        "n_clips": n,
        "n_no_value": n - len(scored),
        "confusion_columns": columns,
        "confusion": confusion,
    }


def dissonance_summary(
    congruent: Sequence[bool], values: Sequence[bool | None], reasons: Sequence[str | None]
) -> dict[str, Any]:
    """False-alarm rate (congruent clips) and hit rate (incongruent), each over the clips with a value;
    share of clips with no value and why."""

    def rate(want: bool) -> tuple[float | None, int, int]:
        scored = [v for c, v in zip(congruent, values, strict=True) if c == want and v is not None]
        return (sum(scored) / len(scored) if scored else None), sum(scored), len(scored)

    fa_rate, fa, n_cong = rate(True)
    hit_rate, hits, n_incong = rate(False)
    nulls = [r for v, r in zip(values, reasons, strict=True) if v is None]
    return {
        "false_alarm_rate": fa_rate,
        "false_alarms": fa,
        "n_congruent_scored": n_cong,
        "n_congruent": sum(congruent),
        "hit_rate": hit_rate,
        "hits": hits,
        "n_incongruent_scored": n_incong,
        "n_incongruent": len(congruent) - sum(congruent),
        "null_share": len(nulls) / len(values) if values else None,
        "n_null": len(nulls),
        "null_reasons": dict(Counter(nulls)),
    }


def summarise(records: Sequence[Mapping[str, Any]], boundaries: Sequence[tuple[int, int, int]]) -> dict[str, Any]:
    """Every measure over a group of clips (one kind, one actor or all actors)."""
    ref = sum(r["ref_words"] for r in records)
    statement = sum(r["statement_words"] for r in records)
    edges = [e for r in records for e in r["edge_errors_s"]]
    summary = {
        "clips": len(records),
        "boundary": prf(*(sum(b[k] for b in boundaries) for k in range(3))),
        "wer": sum(r["errors"] for r in records) / ref if ref else None,
        "words_per_ref_word": sum(r["hyp_words"] for r in records) / statement if statement else None,
        "word_edge_error_s": float(np.mean(edges)) if edges else None,
        "voice": voice_summary([r["emotion"] for r in records], [r["voice"] for r in records]),
    }
    if any(r["congruent"] is not None for r in records):
        summary["dissonance"] = dissonance_summary(
            [bool(r["congruent"]) for r in records],
            [r["dissonance"] for r in records],
            [r["dissonance_reason"] for r in records],
        )
    timed = [r["word_time_error"] for r in records if "word_time_error" in r]
    if timed:
        summary["word_time_error"] = timed[0] if len(timed) == 1 else timed
    return summary


def score_run(
    manifest: Mapping[str, Any], sessions: Sequence[Mapping[str, Any]], utterances: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Scores of a run's tables against the manifest: totals per kind, and per actor."""
    status = {s["session_id"]: s["status"] for s in sessions}
    by_session: dict[str, list[Mapping[str, Any]]] = {}
    for utt in utterances:
        by_session.setdefault(utt["session_id"], []).append(utt)
    scored = [
        (s, score_session(s, by_session.get(s["session_id"], []), ok=status.get(s["session_id"]) == "ok"))
        for s in manifest["sessions"]
    ]

    def group(keep) -> dict[str, Any]:
        chosen = [r for s, r in scored if keep(s)]
        summary = summarise([x for r in chosen for x in r["records"]], [r["boundaries"] for r in chosen])
        return summary | {"asr_flags": dict(sum((r["asr_flags"] for r in chosen), Counter()))}

    totals = {
        kind: group(lambda s, k=kind: s["kind"] == k)
        for kind in KINDS
        if any(s["kind"] == kind for s in manifest["sessions"])
    }
    per_actor = {
        str(a): {kind: group(lambda s, k=kind, a=a: s["kind"] == k and s["actor"] == a) for kind in ("audio", "dubbed")}
        for a in manifest["actors"]
    }
    not_ok = {sid: st for sid, st in status.items() if st != "ok"}
    missing = [s["session_id"] for s in manifest["sessions"] if s["session_id"] not in status]
    return {
        "totals": totals,
        "per_actor": per_actor,
        "sessions_not_ok": not_ok,
        "sessions_missing": missing,
        "clips": [x for _, r in scored for x in r["records"]],
    }


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _rows(s: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(measure key, label, value) rows of one group's summary, for the markdown table."""
    b, v = s["boundary"], s["voice"]
    rows = [
        (
            "boundary_f1",
            "boundary F1 (P / R)",
            f"{_fmt(b['f1'])} ({_fmt(b['precision'])} / {_fmt(b['recall'])}; "
            f"{b['n_utterances']} utt. for {b['n_clips']} clips)",
        ),
        ("wer", "WER", _fmt(s["wer"])),
        ("words_per_ref_word", "words per reference word", _fmt(s["words_per_ref_word"])),
        ("", "word edge error (s)", _fmt(s["word_edge_error_s"])),
        (
            "voice_accuracy",
            "voice accuracy by overlap (scored only; macro-F1)",
            f"{_fmt(v['accuracy'])} ({_fmt(v['accuracy_scored'])}; {_fmt(v['macro_f1'])}; "
            f"{v['n_no_value']} of {v['n_clips']} without value)",
        ),
    ]
    if "dissonance" in s:
        d = s["dissonance"]
        rows += [
            (
                "dissonance_false_alarm_rate",
                "dissonance false alarms (congruent)",
                f"{_fmt(d['false_alarm_rate'])} ({d['false_alarms']} of {d['n_congruent_scored']})",
            )
        ]
        if d["n_incongruent"]:
            rows += [
                (
                    "dissonance_hit_rate",
                    "dissonance hits (incongruent)",
                    f"{_fmt(d['hit_rate'])} ({d['hits']} of {d['n_incongruent_scored']})",
                )
            ]
        reasons = ", ".join(f"{k}: {n}" for k, n in sorted(d["null_reasons"].items()))
        rows += [
            (
                "dissonance_null_share",
                "clips without a dissonance value",
                f"{_fmt(d['null_share'])} ({d['n_null']} of {s['clips']}{'; ' + reasons if reasons else ''})",
            )
        ]
    if s.get("asr_flags"):
        rows += [
            ("", "ASR flags raised (utterances)", ", ".join(f"{k}: {n}" for k, n in sorted(s["asr_flags"].items())))
        ]
    if isinstance(s.get("word_time_error"), dict):
        w = s["word_time_error"]
        rows += [
            (
                "",
                "word-time error, aligned clip (start / end, s)",
                f"{_fmt(w['start_s'], 3)} / {_fmt(w['end_s'], 3)} ({w['n_words']} of {w['n_reference']} words)",
            )
        ]
    return rows


KIND_TITLES = {
    "audio": "RAVDESS audio sessions (one per actor, clips 1.5 s apart)",
    "dubbed": "Dubbed videos (GRID face, RAVDESS voice, lip-synced)",
    "grid": "GRID clips (one session each)",
}


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown tables: totals per kind with the targets, then voice and dissonance per actor."""
    lines = [
        f"# Pipeline accuracy end to end: RAVDESS actors {report['actors_spec']} ({report['split']})",
        "",
        f"Measured {report['measured']} on {report['machine']}: `emoguide run` took {report['pipeline_wall_s']} s "
        f"for {report['media_s']} s of media (Ray start included). Boundary tolerance "
        f"{report['boundary_tolerance_s']} s; definitions in `pipeline.json` and the README.",
        "",
    ]
    if report["sessions_not_ok"] or report["sessions_missing"]:
        lines += [
            f"Sessions not ok (their clips count as found nothing): {report['sessions_not_ok']}; "
            f"missing from the run: {report['sessions_missing']}.",
            "",
        ]
    for kind, s in report["totals"].items():
        lines += [f"## {KIND_TITLES[kind]}", "", "| measure | value | target (13–18) |", "|---|---|---|"]
        lines += [
            f"| {label} | {value} | {TARGETS.get(key, '') if kind != 'grid' else ''} |"
            for key, label, value in _rows(s)
        ]
        lines.append("")
    actors = list(report["per_actor"])
    columns = ["boundary F1", "WER", "words/ref", "voice acc.", "dubbed: false alarms", "dubbed: hits", "dubbed: null"]
    lines += ["## Per actor", "", "| actor | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for a in actors:
        au, du = report["per_actor"][a]["audio"], report["per_actor"][a]["dubbed"]
        d = du.get("dissonance", {})
        lines.append(
            f"| {a} | {_fmt(au['boundary']['f1'])} | {_fmt(au['wer'])} | {_fmt(au['words_per_ref_word'])} | "
            f"{_fmt(au['voice']['accuracy'])} | {_fmt(d.get('false_alarm_rate'))} | "
            f"{_fmt(d.get('hit_rate'))} | {_fmt(d.get('null_share'))} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    """``pipeline.json`` and ``pipeline.md`` under ``out``, each written atomically."""
    paths = out / "pipeline.json", out / "pipeline.md"
    summary = json.dumps({k: v for k, v in report.items() if k != "clips"}, indent=1, default=float)
    clips = ",\n".join("  " + json.dumps(clip, default=float) for clip in report.get("clips", []))
    with open_atomic(paths[0], "w") as fh:  # one line per clip: a third of the size, and diffs clip by clip
        fh.write(f'{summary[:-2]},\n "clips": [\n{clips}\n ]\n}}\n')
    with open_atomic(paths[1], "w") as fh:
        fh.write(to_markdown(report))
    return paths


# --------------------------------------------------------------------------------------------------
# Build, run, score
# --------------------------------------------------------------------------------------------------


def _build_material(data: Path, actors: list[int], work: Path, max_clips: int | None) -> dict[str, Any]:
    """The sessions and their truth, from ``benchmarks/pipeline_material.py`` of this source checkout: the
    builder lives with the other benchmark builders (``synth.py``), and needs a checkout beside
    ``../shared/data`` anyway."""
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (benchmarks / "pipeline_material.py").exists():
        raise FileNotFoundError(f"{benchmarks}/pipeline_material.py: eval pipeline needs the source checkout")
    if str(benchmarks) not in sys.path:
        sys.path.insert(0, str(benchmarks))
    from pipeline_material import build_material

    return build_material(data, actors, work, max_clips)


def run_pipeline_cli(inputs: Path, run_dir: Path, config: Path | None) -> tuple[int, str]:
    """``emoguide run INPUTS --out RUN_DIR --no-generate --force`` in a child process, as a user runs it.

    ``--force``: the run folder is reused between evaluations, and a changed pipeline under an unchanged
    config would otherwise be resumed, not re-run. Returns the exit code and the tail of its log.
    """
    command = [
        sys.executable,
        "-m",
        "ray_jobs.cli",
        "run",
        str(inputs),
        "--out",
        str(run_dir),
        "--no-generate",
        "--force",
        "-q",
        *(["--config", str(config)] if config else []),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    return proc.returncode, (proc.stdout + proc.stderr)[-3000:]


def evaluate_pipeline(
    data: Path,
    actors: list[int],
    actors_spec: str,
    work: Path,
    config: Path | None = None,
    max_clips: int | None = None,
) -> dict[str, Any]:
    """Build the material, run the pipeline on it and score the tables: the full report."""
    import pyarrow.parquet as pq

    started = time.monotonic()
    manifest = _build_material(data, actors, work, max_clips)
    build_s = time.monotonic() - started
    folder = Path(manifest["folder"])
    inputs = folder / "inputs.csv"
    with open_atomic(inputs, "w") as fh:
        fh.write("session_id,path\n" + "".join(f"{s['session_id']},{s['path']}\n" for s in manifest["sessions"]))
    run_dir = folder / "run"
    started = time.monotonic()
    code, log = run_pipeline_cli(inputs, run_dir, config)
    wall = time.monotonic() - started
    if code not in (0, 1) or not (run_dir / "utterances.parquet").exists():
        raise RuntimeError(f"emoguide run failed (exit {code}):\n{log}")
    sessions = pq.read_table(run_dir / "sessions.parquet").to_pylist()
    utterances = pq.read_table(run_dir / "utterances.parquet").to_pylist()
    report = {
        "measured": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "actors": actors,
        "actors_spec": actors_spec,
        "split": split_name(actors),
        "max_clips": max_clips,
        "config": str(config) if config else None,
        "build_s": round(build_s, 1),
        "pipeline_wall_s": round(wall, 1),
        "media_s": round(sum(s["duration_s"] or 0.0 for s in sessions), 1),
        "boundary_tolerance_s": BOUNDARY_TOL_S,
        "speech_span": manifest["speech_span"],
        "definitions": __doc__.split("Definitions (also in the report and the README):")[1].strip(),
    }
    return report | score_run(manifest, sessions, utterances)


def split_name(actors: Sequence[int]) -> str:
    """Which split the actors are: 1-12 train/tune, 13-18 report (speaker-independent)."""
    if all(a <= 12 for a in actors):
        return "train/tune split"
    if all(a >= 13 for a in actors):
        return "report split"
    return "mixed train/tune and report actors"
