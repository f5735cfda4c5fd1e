"""``emoguide report``: a run folder's tables as self-contained HTML pages (pure: no Ray, no models).

:func:`build_report` reads ``sessions.parquet`` and ``utterances.parquet`` (required) and, when they
exist, ``interventions.parquet`` and ``judgements.parquet`` from a run folder, and writes one HTML page
per session plus an ``index.html`` for the run. Every page is a single file with no external resource
(CSS inline, the timeline an inline SVG made by matplotlib, no JavaScript at all), so it works offline
and can be sent as an attachment; a Content-Security-Policy forbids scripts and any network fetch.

Everything that comes from the data (transcript, generations, prompts, errors, file names) is
HTML-escaped by Jinja2's autoescaping; the only markup inserted unescaped is the SVG that matplotlib
wrote (whose own text is XML-escaped by matplotlib and never contains transcript text).

The timeline plots the client's face and voice valence and arousal per utterance (at its midpoint);
when no utterance is attributed to the client (e.g. roles not assigned), it plots every non-therapist
utterance and says so. Dissonant utterances are shaded; each shaded span and each point is a link to
that utterance's transcript row (``#utt-<utt_id>``).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import jinja2
import pyarrow.parquet as pq
from markupsafe import Markup

from emoguide.dataio.inputs import safe_id
from emoguide.dataio.tables import open_atomic
from emoguide.evaluation.judge import CRITERIA, REFERENCE
from emoguide.prompts.conditions import CONDITIONS
from models.emotion import LABELS

ASSETS = Path(__file__).resolve().parent / "assets"
REFERENCE_CONDITIONS = (REFERENCE,)  # judgements of the therapist's actual reply, if any
# Every report page's policy (in a <meta> tag): inline CSS and the SVG only, no script, no fetch.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
MAX_PROMPT_CHARS = 20_000  # a shown prompt keeps its end (context + cue) beyond this
_KEYS = (
    "session_id",
    "utt_id",
    "condition",
    "model",
)  # how judgements join interventions

FACE_COLOR, VOICE_COLOR, DISSONANT_COLOR = "#1f77b4", "#d95f02", "#e41a1c"


class ReportError(ValueError):
    """A run folder that cannot be reported (no tables, unknown session)."""


# ----------------------------------------------------------------------------------------------------
# formatting helpers (also used as Jinja filters)


def fmt_time(seconds: float | None, decimals: int = 1) -> str:
    """0:07.3, 12:05.0, 1:02:03.4 (— when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, float(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    width = 3 + decimals if decimals else 2
    sec = f"{s:0{width}.{decimals}f}"
    return f"{int(h)}:{int(m):02d}:{sec}" if h >= 1 else f"{int(m)}:{sec}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return fmt_time(seconds, decimals=0)


def fmt_pct(x: float | None, decimals: int = 0) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.{decimals}f}%"


def fmt_num(x: float | None, decimals: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{decimals}f}"


def top_label(probs: Sequence[float] | None) -> str | None:
    """'neutral 82%' for a canonical-order probability vector, None when the channel is missing."""
    if probs is None or len(probs) != len(LABELS):
        return None
    values = [float(p) if p is not None else float("nan") for p in probs]
    finite = [(p, i) for i, p in enumerate(values) if math.isfinite(p)]
    if not finite:
        return None
    p, i = max(finite)
    return f"{LABELS[i]} {100 * p:.0f}%"


def abbrev(criterion: str | None) -> str:
    """A judge criterion's column header in a card: E, C, A (the full name is the tooltip and the key)."""
    text = str(criterion)
    return {"empathy": "E", "comprehensiveness": "C", "applicability": "A"}.get(text, text[:3])


# ----------------------------------------------------------------------------------------------------
# reading


def _read(path: Path, exclude: Iterable[str] = ()) -> list[dict[str, Any]] | None:
    """A table's rows (without the ``exclude`` columns), or None when the file does not exist."""
    if not path.is_file():
        return None
    names = pq.read_schema(path).names
    columns = [c for c in names if c not in set(exclude)]
    return pq.read_table(path, columns=columns).to_pylist()


def _by_session(rows: list[dict[str, Any]] | None) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows or []:
        grouped.setdefault(cast(str, row.get("session_id")), []).append(row)
    return grouped


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------------
# timeline (matplotlib → inline SVG)


def plotted_utterances(
    utts: Sequence[Mapping[str, Any]],
) -> tuple[list[Mapping[str, Any]], str]:
    """The utterances the timeline shows and whose they are (the client's, else every non-therapist)."""
    client = [u for u in utts if u.get("role") == "client"]
    if client:
        return client, "the client"
    others = [u for u in utts if u.get("role") != "therapist"]
    if others:
        return (
            others,
            "all non-therapist speakers (no utterance is attributed to the client)",
        )
    return list(utts), "all speakers (no utterance is attributed to the client)"


_Point = tuple[Mapping[str, Any], float, float, dict[str, float | None]]  # (utterance, start, end, values)
_CHANNELS = (("face", FACE_COLOR, "-", "o"), ("voice", VOICE_COLOR, "--", "s"))  # (name, colour, line, marker)


def _timeline_points(utts: Sequence[Mapping[str, Any]]) -> list[_Point]:
    """The timed utterances in time order, with their face/voice valence and arousal (None if missing)."""
    points = []
    for u in sorted(utts, key=lambda u: _finite(u.get("start_s")) or 0.0):
        start, end = _finite(u.get("start_s")), _finite(u.get("end_s"))
        if start is None or end is None:
            continue
        values = {k: _finite(u.get(k)) for k in ("face_valence", "voice_valence", "face_arousal", "voice_arousal")}
        points.append((u, start, max(end, start), values))
    return points


def _shade_dissonant(ax: Any, points: Sequence[_Point], dim: str, min_width: float) -> None:
    """A clickable span over each dissonant utterance, at least ``min_width`` seconds wide."""
    k = 0
    for u, s, e, _ in points:
        if not u.get("dissonance"):
            continue
        mid, half = (s + e) / 2, max(e - s, min_width) / 2
        span = ax.axvspan(mid - half, mid + half, color=DISSONANT_COLOR, alpha=0.18, lw=0, zorder=1)
        span.set_url(f"#utt-{u.get('utt_id')}")
        span.set_gid(f"dissonant-{k}-{dim}")
        k += 1


def _plot_channels(ax: Any, points: Sequence[_Point], dim: str, marker_size: int) -> None:
    """Face and voice lines over the utterances' midpoints (gaps where a value is missing), and a clickable
    dot per value."""
    nan = float("nan")
    mids = [(s + e) / 2 for _, s, e, _ in points]
    urls = [f"#utt-{u.get('utt_id')}" for u, *_ in points]
    for channel, color, style, marker in _CHANNELS:
        ys = [vals[f"{channel}_{dim}"] for *_, vals in points]
        (line,) = ax.plot(mids, [nan if y is None else y for y in ys], color=color, ls=style, lw=1.4, zorder=3)
        line.set_gid(f"{channel}-{dim}-line")
        keep = [i for i, y in enumerate(ys) if y is not None]
        if keep:
            dots = ax.scatter(
                [mids[i] for i in keep], [ys[i] for i in keep], s=marker_size, color=color, marker=marker, zorder=4
            )
            dots.set_urls([urls[i] for i in keep])
            dots.set_gid(f"{channel}-{dim}-points")


def _dimension_axes(ax: Any, points: Sequence[_Point], dim: str, t_end: float, marker_size: int) -> None:
    """One panel (valence or arousal): dissonant spans, the zero line, both channels, a fixed -1..1 scale."""
    _shade_dissonant(ax, points, dim, max(t_end, 1e-6) / 300)  # a short dissonant utterance stays clickable
    ax.patch.set_gid(f"axes-{dim}")  # its extent maps time to x (the studio's playhead)
    ax.axhline(0, color="#999999", lw=0.8, zorder=2)
    _plot_channels(ax, points, dim, marker_size)
    ax.set_ylim(-1.08, 1.08)
    ax.set_yticks([-1, -0.5, 0, 0.5, 1])
    ax.set_ylabel(dim)
    ax.grid(True, axis="y", color="#e5e5e5", lw=0.6)
    ax.set_xlim(0, t_end if t_end > 0 else 1)


def _time_axis(ax: Any, width_in: float, t_end: float) -> None:
    """Session time ticks (about one per inch), in m:ss, with tenths for sessions under a minute."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=max(6, int(width_in * 1.2)), steps=[1, 2, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_time(x, decimals=0 if t_end >= 60 else 1)))
    ax.set_xlabel("time in session")


def _legend(ax: Any) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        *(Line2D([], [], color=color, ls=style, marker=marker, label=name) for name, color, style, marker in _CHANNELS),
        Patch(color=DISSONANT_COLOR, alpha=0.18, label="dissonant utterance (click to open)"),
    ]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False, borderaxespad=0.2)


def timeline_svg(utts: Sequence[Mapping[str, Any]], duration_s: float | None = None) -> str | None:
    """Face/voice valence (top) and arousal (bottom) over time as an SVG string; None if nothing to plot.

    Dissonant utterances are shaded (group ids ``dissonant-<k>-valence`` / ``-arousal``); spans and points
    link to ``#utt-<utt_id>``. Every other element ignores the pointer (CSS in the page), so lines drawn
    over a span never swallow its click.
    """
    import matplotlib
    from matplotlib.figure import Figure

    points = _timeline_points(utts)
    if not points or all(v is None for *_, vals in points for v in vals.values()):
        return None
    t_end = max([_finite(duration_s) or 0.0] + [p[2] for p in points])
    width_in = min(40.0, max(10.0, 4.0 + 0.06 * len(points)))
    marker_size = 22 if len(points) <= 150 else 10
    style = {"svg.fonttype": "none", "svg.hashsalt": "emoguide-report", "font.family": "sans-serif", "font.size": 10}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(width_in, 4.6), layout="constrained")
        ax_v, ax_a = fig.subplots(2, 1, sharex=True)
        for ax, dim in ((ax_v, "valence"), (ax_a, "arousal")):
            _dimension_axes(ax, points, dim, t_end, marker_size)
        _time_axis(ax_a, width_in, t_end)
        _legend(ax_v)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _inline_svg(buf.getvalue(), width_in, t_end if t_end > 0 else 1.0)


def _inline_svg(svg: str, width_in: float, t_end: float) -> str:
    """matplotlib's SVG document as an element for inline HTML: no XML prologue, links open in place,
    responsive width (scrolls horizontally below its natural width when the session is long). The x axis
    runs from 0 to ``data-t-end`` seconds across the ``axes-*`` patches."""
    svg = svg[svg.index("<svg") :]
    svg = svg.replace(' target="_blank"', "")  # matplotlib opens every link in a new window
    head_end = svg.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", svg[:head_end])
    min_px = int(width_in * 96 * 0.95)  # about natural size (96 px per inch): never squeezed illegible
    head += (
        f' width="100%" style="min-width: {min_px}px" role="img" aria-label="emotion timeline" data-t-end="{t_end:.3f}"'
    )
    return head + svg[head_end:]


# ----------------------------------------------------------------------------------------------------
# page models


def _models(raw: Any) -> tuple[list[dict[str, Any]], str | None]:
    """(rows slot/name/source/version, raw text when it is not the JSON we expect)."""
    if raw in (None, ""):
        return [], None
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        rows = []
        for slot, info in dict(data).items():
            info = info if isinstance(info, Mapping) else {"name": info}
            rows.append(
                {
                    "slot": slot,
                    "name": info.get("name"),
                    "source": info.get("source"),
                    "version": info.get("version"),
                }
            )
        return rows, None
    except (TypeError, ValueError):
        return [], str(raw)


def _prompt_text(prompt: Any) -> str | None:
    if prompt is None:
        return None
    try:
        messages = json.loads(prompt) if isinstance(prompt, str) else prompt
        text = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
    except (TypeError, ValueError, KeyError):
        text = str(prompt)
    if len(text) > MAX_PROMPT_CHARS:
        text = f"… ({len(text) - MAX_PROMPT_CHARS} characters omitted)\n" + text[-MAX_PROMPT_CHARS:]
    return text


def _compact(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def _order(values: Iterable[str], canonical: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(v for v in values if v is not None))
    return [c for c in canonical if c in seen] + sorted(v for v in seen if v not in canonical)


def _judge_index(judgements: list[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    index: dict[tuple, list[dict[str, Any]]] = {}
    for j in judgements:
        index.setdefault(tuple(j.get(k) for k in keys), []).append(j)
    return index


def _score_table(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Judgements of one generation as {criteria, judges, cells[judge][criterion] = (score, rationale)}."""
    if not rows:
        return None
    criteria = _order((cast(str, r.get("criterion")) for r in rows), CRITERIA)
    judges = list(dict.fromkeys(str(r.get("judge")) for r in rows))
    cells: dict[str, dict[str, dict[str, Any]]] = {j: {} for j in judges}
    for r in rows:
        score = _finite(r.get("score"))
        cells[str(r.get("judge"))][cast(str, r.get("criterion"))] = {
            "score": None if score is None else (int(score) if score == int(score) else round(score, 2)),
            "rationale": r.get("rationale"),
        }
    return {"criteria": criteria, "judges": judges, "cells": cells}


def _join_keys(interventions: list[dict[str, Any]], judgements: list[dict[str, Any]] | None) -> list[str]:
    """The columns of :data:`_KEYS` that both tables have: what joins a judgement to its intervention."""
    first_col = set(interventions[0]) if interventions else set()
    return [k for k in _KEYS if k in first_col and (not judgements or k in judgements[0])]


def _new_turn(
    row: dict[str, Any],
    by_utt: Mapping[Any, dict[str, Any]],
    ridx: Mapping[tuple, list[dict[str, Any]]],
    ref_keys: Sequence[str],
) -> dict[str, Any]:
    """The block of one client turn (the utterances merged into it), with the reference reply's scores."""
    utt_id = row.get("utt_id")
    u = by_utt.get(utt_id, {})
    ids = [i for i in (row.get("turn_utt_ids") or [utt_id]) if i is not None]
    texts = [by_utt[i].get("text") or "" for i in ids if i in by_utt]
    starts = (_finite(by_utt[i].get("start_s")) for i in ids if i in by_utt)
    start = min((t for t in starts if t is not None), default=_finite(u.get("start_s")))
    ref_rows = []
    for cond in REFERENCE_CONDITIONS:
        ref_rows += ridx.get(tuple({**row, "condition": cond}.get(k) for k in ref_keys), [])
    return {
        "utt_id": utt_id,
        "anchor": f"utt-{utt_id}",
        "start_s": start,
        "client_text": " ".join(t for t in texts if t) or (u.get("text") or ""),
        "dissonance": bool(u.get("dissonance")),
        "dissonance_label": u.get("dissonance_label"),
        "reference": row.get("reference"),
        "reference_scores": _score_table(ref_rows),
        "models": {},
    }


def _card(row: dict[str, Any], jrows: list[dict[str, Any]]) -> dict[str, Any]:
    """One generated intervention as shown: its condition, text or error, cue, prompt and scores."""
    return {
        "condition": row.get("condition"),
        "generation": row.get("generation"),
        "error": row.get("error"),
        "cue": _compact(row.get("cue")),
        "prompt": _prompt_text(row.get("prompt")),
        "scores": _score_table(jrows),
    }


def _turn_blocks(turns: Mapping[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns in time order (untimed last), each model's cards in condition order."""
    blocks = []
    for turn in turns.values():
        models = []
        for model, conds in turn["models"].items():
            cards = [card for c in _order(conds, CONDITIONS) for card in conds[c]]
            models.append({"model": model, "cards": cards})
        turn["models"] = models
        blocks.append(turn)
    blocks.sort(key=lambda t: (t["start_s"] is None, t["start_s"] or 0.0))
    return blocks


def _judge_summary(
    interventions: list[dict[str, Any]], judgements: list[dict[str, Any]], keys: Sequence[str]
) -> dict[str, Any] | None:
    """Mean judge score and count per condition x criterion (None when nothing was scored)."""
    cond_of = {tuple(row.get(k) for k in keys): row.get("condition") for row in interventions}
    agg: dict[tuple[str, str], list[float]] = {}
    for j in judgements:
        cond = j.get("condition") if "condition" in j else cond_of.get(tuple(j.get(k) for k in keys))
        score = _finite(j.get("score"))
        if cond is not None and score is not None:
            agg.setdefault((cond, cast(str, j.get("criterion"))), []).append(score)
    if not agg:
        return None
    conds = _order((c for c, _ in agg), CONDITIONS + REFERENCE_CONDITIONS)
    crits = _order((k for _, k in agg), CRITERIA)
    return {
        "conditions": conds,
        "criteria": crits,
        "cells": {
            c: {k: ({"mean": sum(v) / len(v), "n": len(v)} if (v := agg.get((c, k))) else None) for k in crits}
            for c in conds
        },
    }


def _interventions_view(
    utts: list[dict[str, Any]],
    interventions: list[dict[str, Any]],
    judgements: list[dict[str, Any]] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
    """(turn blocks in time order, judge summary per condition × criterion, distinct model/params)."""
    by_utt = {u.get("utt_id"): u for u in utts}
    keys = _join_keys(interventions, judgements)
    jidx = _judge_index(judgements or [], keys) if keys else {}
    ref_keys = [k for k in keys if k != "model"]
    ridx = _judge_index([j for j in judgements or [] if j.get("condition") in REFERENCE_CONDITIONS], ref_keys)
    turns: dict[Any, dict[str, Any]] = {}
    configs: dict[tuple, dict[str, Any]] = {}
    for row in interventions:
        utt_id = row.get("utt_id")
        turn = turns.get(utt_id)
        if turn is None:
            turn = turns[utt_id] = _new_turn(row, by_utt, ridx, ref_keys)
        if turn["reference"] is None and row.get("reference") is not None:
            turn["reference"] = row.get("reference")
        model = row.get("model")
        params = _compact(row.get("params"))
        configs.setdefault((model, params), {"model": model, "params": params})
        jrows = jidx.get(tuple(row.get(k) for k in keys), []) if keys else []
        turn["models"].setdefault(model, {}).setdefault(row.get("condition"), []).append(_card(row, jrows))
    summary = _judge_summary(interventions, judgements, keys) if judgements else None
    return _turn_blocks(turns), summary, list(configs.values())


def _utterance_rows(utts: list[dict[str, Any]], with_interventions: set) -> list[dict[str, Any]]:
    rows = []
    for u in utts:
        diss = u.get("dissonance")
        rows.append(
            {
                "utt_id": u.get("utt_id"),
                "start": fmt_time(_finite(u.get("start_s"))),
                "end": fmt_time(_finite(u.get("end_s"))),
                "start_s": _finite(u.get("start_s")),
                "end_s": _finite(u.get("end_s")),
                "speaker": u.get("speaker"),
                "role": u.get("role") or "unknown",
                "text": u.get("text") or "",
                "face": top_label(u.get("face_probs")),
                "face_coverage": _finite(u.get("face_coverage")),
                "voice": top_label(u.get("voice_probs")),
                "dissonance": diss,
                "dissonance_label": u.get("dissonance_label"),
                "dissonance_score": _finite(u.get("dissonance_score")),
                "has_interventions": u.get("utt_id") in with_interventions,
            }
        )
    return rows


def session_context(
    session: dict[str, Any],
    utts: list[dict[str, Any]],
    interventions: list[dict[str, Any]] | None,
    judgements: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """Everything one session page shows (plain data; the template does the HTML)."""
    utts = sorted(
        utts,
        key=lambda u: (
            _finite(u.get("start_s")) is None,
            _finite(u.get("start_s")) or 0.0,
        ),
    )
    by_utt = {u.get("utt_id"): u for u in utts}
    shown, whose = plotted_utterances(utts)
    svg = timeline_svg(shown, session.get("duration_s")) if shown else None
    top = []
    for m in session.get("dissonance_top") or []:
        u = by_utt.get(m.get("utt_id"), {})
        top.append(
            {
                **m,
                "start": fmt_time(_finite(m.get("start_s"))),
                "end": fmt_time(_finite(m.get("end_s"))),
                "text": u.get("text"),
                "in_transcript": m.get("utt_id") in by_utt,
            }
        )
    models, models_raw = _models(session.get("models"))
    blocks, judge_summary, configs = _interventions_view(utts, interventions or [], judgements)
    n_diss = sum(1 for u in utts if u.get("dissonance"))
    return {
        "s": session,
        "timeline": Markup(svg) if svg else None,
        "timeline_whose": whose,
        "n_dissonant": n_diss,
        "n_measured": sum(1 for u in utts if u.get("dissonance") is not None),
        "top": top,
        "models": models,
        "models_raw": models_raw,
        "utterances": _utterance_rows(utts, {b["utt_id"] for b in blocks}),
        "has_interventions_table": interventions is not None,
        "has_judgements_table": judgements is not None,
        "turns": blocks,
        "judge_summary": judge_summary,
        "generation_configs": configs,
        "conditions": CONDITIONS,
    }


# ----------------------------------------------------------------------------------------------------
# writing


def template_env(*search: Path) -> jinja2.Environment:
    """The report's Jinja environment (autoescaping, filters, macros); templates in ``search`` come first,
    so the review studio renders its pages with the report's macros and filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in search] + [str(ASSETS)]),
        autoescape=True,  # every template renders HTML: escape all data
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(abbrev=abbrev, time=fmt_time, duration=fmt_duration, pct=fmt_pct, num=fmt_num)
    env.globals["csp"] = Markup(CSP)  # a constant of ours: its quotes stay quotes
    env.globals["css"] = Markup((ASSETS / "report.css").read_text(encoding="utf-8"))
    return env


def _write_text(path: Path, text: str) -> Path:
    """Atomic, owner-only write: reports are health data."""
    with open_atomic(path, "w") as fh:
        fh.write(text)
    return path


def page_names(session_ids: Sequence[str]) -> dict[str, str]:
    """A distinct, file-name-safe ``<id>.html`` per session (never ``index.html``)."""
    names: dict[str, str] = {}
    used = {"index"}
    for sid in session_ids:
        base = safe_id(sid)
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name.lower())
        names[sid] = f"{name}.html"
    return names


@dataclass
class RunTables:
    """A run folder's tables as rows; ``*_rows`` is None when that optional table does not exist."""

    sessions: list[dict[str, Any]]
    utterances: dict[str, list[dict[str, Any]]]  # by session, without word timings
    interventions_rows: list[dict[str, Any]] | None
    judgements_rows: list[dict[str, Any]] | None

    @cached_property
    def interventions(self) -> dict[str, list[dict[str, Any]]]:
        return _by_session(self.interventions_rows)

    @cached_property
    def judgements(self) -> dict[str, list[dict[str, Any]]]:
        return _by_session(self.judgements_rows)

    def session_page(self, session: dict[str, Any]) -> dict[str, Any]:
        """:func:`session_context` of one of this run's sessions."""
        sid = cast(str, session.get("session_id"))  # the contract: a non-null string
        return session_context(
            session,
            self.utterances.get(sid, []),
            self.interventions.get(sid, []) if self.interventions_rows is not None else None,
            self.judgements.get(sid, []) if self.judgements_rows is not None else None,
        )


def read_run(run_dir: Path) -> RunTables:
    """The tables the report and the review studio show; :class:`ReportError` without sessions.parquet."""
    sessions = _read(run_dir / "sessions.parquet")
    if sessions is None:
        raise ReportError(
            f"{run_dir} has no sessions.parquet: not an emoguide run folder (or the run has not finished)"
        )
    return RunTables(
        sessions,
        _by_session(_read(run_dir / "utterances.parquet", exclude=("words",))),
        _read(run_dir / "interventions.parquet"),
        _read(run_dir / "judgements.parquet"),
    )


def build_report(run_dir: Path, session_id: str | None = None, out: Path | None = None) -> list[Path]:
    """Write the run's HTML report and return the written paths (session pages first, index.html last).

    ``out`` defaults to ``run_dir / "report"`` (created owner-only). With ``session_id`` only that
    session's page is (re)written, plus the index. Raises :class:`ReportError` when ``run_dir`` has no
    ``sessions.parquet`` or ``session_id`` is not in it.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    sessions = run.sessions
    interventions_rows, judgements_rows = run.interventions_rows, run.judgements_rows
    interventions, judgements = run.interventions, run.judgements

    ids = [cast(str, s.get("session_id")) for s in sessions]
    if session_id is not None and session_id not in ids:
        known = ", ".join(map(str, ids[:20])) + (" …" if len(ids) > 20 else "")
        raise ReportError(f"session {session_id!r} is not in {run_dir / 'sessions.parquet'} (sessions: {known})")
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = page_names(ids)
    env = template_env()

    written = []
    for s in sessions:
        sid = cast(str, s.get("session_id"))
        if session_id is not None and sid != session_id:
            continue
        ctx = run.session_page(s)
        html = env.get_template("session.html.j2").render(**ctx, index_href="index.html")
        written.append(_write_text(out / names[sid], html))

    rows = []
    for s in sessions:
        sid = cast(str, s.get("session_id"))
        page = out / names[sid]
        rows.append(
            {
                "s": s,
                "href": names[sid] if page.exists() else None,
                "n_interventions": len(interventions.get(sid, [])),
                "n_judgements": len(judgements.get(sid, [])),
            }
        )
    counts = {st: sum(1 for s in sessions if s.get("status") == st) for st in ("ok", "partial", "failed")}
    html = env.get_template("index.html.j2").render(
        rows=rows,
        run_name=run_dir.resolve().name,
        counts=counts,
        has_interventions_table=interventions_rows is not None,
        has_judgements_table=judgements_rows is not None,
        config_hashes=sorted({s.get("config_hash") for s in sessions if s.get("config_hash")}),
    )
    written.append(_write_text(out / "index.html", html))
    return written
