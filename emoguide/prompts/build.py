"""Prompt building for emotion-guided interventions (pure: no Ray, no models).

For every client turn that a therapist turn directly follows, :func:`build_prompts` makes one row per
condition (Haydarov et al., EMNLP 2025): the same dialogue context, with emotion cues that differ only by
condition:

* ``text``: context only, no cue block at all;
* ``face``: the client's facial emotion during their last turn;
* ``voice``: the client's vocal emotion during their last turn;
* ``multimodal``: face and voice;
* ``dissonance``: face, voice and the dissonance cue (does the face disagree with the voice?).

Turns. Utterances are ordered by start time within a session; utterances with empty text are dropped;
consecutive utterances of the same role are merged into one turn (texts joined with a space, in time
order). A turn's cues aggregate its utterances: probabilities and valence/arousal are duration-weighted
means over the utterances where that channel is present; the dissonance flag is True if any utterance
is dissonant (its label and score come from the highest-scoring one), False if all measured ones are
consonant, None when none was measured. ``role == "unknown"`` turns appear in the context as an
"Unidentified speaker"; a client turn gets rows only when the very next turn is the therapist's.

Missing channels never drop rows or conditions: every condition is rendered for every client turn (so
the conditions stay paired), and a missing channel is stated in the cue ("face: unavailable (...)").
Each row says which channels were available (``face_available``, ``voice_available``).

Security. The transcript is data: the system message (the task) is fixed per template, and the dialogue
sits between ``<transcript>`` and ``</transcript>`` in the user message. Every ``<`` and ``>`` in
transcript text is replaced by ``‹`` / ``›``, so nothing a speaker says can close that block, open a cue
block, or forge chat-template tokens such as ``<|im_start|>``.

Output column ``prompt`` is the chat (``[{"role": "system", ...}, {"role": "user", ...}]``) as a JSON
string: Parquet-friendly and exactly what the generator gets after :func:`prompt_messages`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import yaml

from emoguide.prompts.conditions import CONDITIONS
from emoguide.session.dissonance import OUT_OF_DOMAIN_CONFIDENCE
from models.emotion import LABELS

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = "intervention_v1"

ROLE_NAMES = {
    "therapist": "Therapist",
    "client": "Client",
    "unknown": "Unidentified speaker",
}
_CHANNELS = {
    "face": ("face",),
    "voice": ("voice",),
    "multimodal": ("face", "voice"),
    "dissonance": ("face", "voice"),
}
_UNAVAILABLE = {
    "face": "unavailable (the client's face was not visible during this turn)",
    "voice": "unavailable (no usable voice signal for this turn)",
}
_OUT_OF_DOMAIN = "unreliable (the speech is unlike the voice model's training recordings)"
_MIN_SHOWN = 0.10  # labels below this probability are left out of the cue
_MAX_SHOWN = 3


# --------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    name: str  # e.g. "intervention"
    version: int
    system: str
    user: str
    cue_block: str
    sha256: str  # of the template file

    @property
    def id(self) -> str:
        """Name and version, as recorded in each row (``intervention_v1``)."""
        return f"{self.name}_v{self.version}"


def read_versioned_yaml(ref: str, folder: Path, required: set[str], kind: str) -> tuple[Path, bytes, dict]:
    """(path, raw bytes, data) of a versioned YAML file given by id (``NAME_vN`` in ``folder``) or by path.

    Shared by prompt templates and judge rubrics: both are versioned files whose hash goes into every row.
    """
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml"):
        path = folder / f"{ref}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise FileNotFoundError(f"{kind} {ref!r} not found (known: {known})")
    raw = path.read_bytes()
    data = yaml.safe_load(raw)
    missing = required - set(data)
    if missing:
        raise ValueError(f"{path}: {kind} lacks {sorted(missing)}")
    return path, raw, data


@cache
def load_template(template: str = DEFAULT_TEMPLATE) -> Template:
    """A template by id (``intervention_v1`` → ``templates/intervention_v1.yaml``) or by file path."""
    path, raw, data = read_versioned_yaml(
        template, TEMPLATE_DIR, {"name", "version", "system", "user", "cue_block"}, "prompt template"
    )
    tpl = Template(
        name=str(data["name"]),
        version=int(data["version"]),
        system=str(data["system"]).strip(),
        user=str(data["user"]),
        cue_block=str(data["cue_block"]),
        sha256=hashlib.sha256(raw).hexdigest()[:16],
    )
    if path.parent == TEMPLATE_DIR and path.stem != tpl.id:
        raise ValueError(f"{path}: file name must be {tpl.id}.yaml (its name and version)")
    if "{transcript}" not in tpl.user or "{cues}" not in tpl.user or "{cues}" not in tpl.cue_block:
        raise ValueError(f"{path}: user needs {{transcript}} and {{cues}}; cue_block needs {{cues}}")
    return tpl


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace ``{key}`` placeholders in one pass (values are never re-scanned for placeholders)."""
    return re.sub(
        r"\{(\w+)\}",
        lambda m: values[m.group(1)] if m.group(1) in values else m.group(0),
        text,
    )


def neutralise(text: str) -> str:
    """Transcript text made inert inside the delimiters: no ``<``/``>`` (so no tags, no chat tokens)."""
    return str(text).replace("<", "‹").replace(">", "›")


# --------------------------------------------------------------------------------------------------
# Cue text
# --------------------------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _probs(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(vals) != len(LABELS) or any(math.isnan(v) for v in vals) or sum(vals) <= 0:
        return None
    total = sum(vals)
    return [v / total for v in vals]


def _qualifier(p: float) -> str:
    return "mostly" if p >= 0.5 else "some" if p >= 0.2 else "a little"


def describe_probs(probs: Sequence[float]) -> str:
    """``mostly neutral (62%), some sadness (21%)``: top labels with intensity words, no raw arrays."""
    ranked = sorted(zip(LABELS, probs, strict=True), key=lambda kv: -kv[1])
    shown = [(k, p) for k, p in ranked[:_MAX_SHOWN] if p >= _MIN_SHOWN] or ranked[:1]
    return ", ".join(f"{_qualifier(p)} {k} ({round(100 * p)}%)" for k, p in shown)


def describe_valence(v: float) -> str:
    a = abs(v)
    if a < 0.1:
        word = "neutral"
    else:
        strength = "slightly" if a < 0.35 else "moderately" if a < 0.65 else "strongly"
        word = f"{strength} {'positive' if v > 0 else 'negative'}"
    return f"valence {word} ({v:+.2f})"


def describe_arousal(a: float) -> str:
    word = (
        "low"
        if a < -0.35
        else "fairly low"
        if a < -0.1
        else "medium"
        if a <= 0.1
        else "fairly high"
        if a <= 0.35
        else "high"
    )
    return f"arousal {word} ({a:+.2f})"


def describe_channel(
    channel: str, probs: Any, valence: Any, arousal: Any, out_of_domain: bool = False
) -> tuple[str, bool]:
    """(cue line, available) for one channel of one turn; speech out of the voice model's domain is
    said to be unreliable rather than described."""
    if out_of_domain:
        return f"{channel}: {_OUT_OF_DOMAIN}", False
    p, v, a = _probs(probs), _num(valence), _num(arousal)
    parts = []
    if p is not None:
        parts.append(describe_probs(p))
    if v is not None:
        parts.append(describe_valence(v))
    if a is not None:
        parts.append(describe_arousal(a))
    if not parts:
        return f"{channel}: {_UNAVAILABLE[channel]}", False
    head = parts[0] if p is not None else ""
    tail = ", ".join(parts[1:] if p is not None else parts)
    body = f"{head}; {tail}" if head and tail else head or tail
    return f"{channel}: {body}", True


def describe_dissonance(flag: Any, score: Any, label: Any, reason: Any = None) -> str:
    s = _num(score)
    score_txt = f"; mismatch score {s:.2f} of 1" if s is not None else ""
    if flag is None or (isinstance(flag, float) and math.isnan(flag)):
        why = neutralise(str(reason)) if reason else "face and voice could not both be measured"
        return f"dissonance: unknown ({why})"
    if bool(flag):
        what = f" ({neutralise(label)})" if label else ""
        return f"dissonance: yes, the face and the voice disagree{what}{score_txt}"
    return f"dissonance: no, the face and the voice agree{score_txt}"


def render_cues(turn: Mapping[str, Any], condition: str) -> tuple[str, dict[str, bool]]:
    """The cue lines of a turn for a condition ('' for ``text``) and which channels were available."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    avail = {}
    lines = []
    for ch in ("face", "voice"):
        line, ok = describe_channel(
            ch,
            turn.get(f"{ch}_probs"),
            turn.get(f"{ch}_valence"),
            turn.get(f"{ch}_arousal"),
            bool(turn.get(f"{ch}_out_of_domain")),
        )
        avail[ch] = ok
        if ch in _CHANNELS.get(condition, ()):
            lines.append(line)
    if condition == "dissonance":
        lines.append(
            describe_dissonance(
                turn.get("dissonance"),
                turn.get("dissonance_score"),
                turn.get("dissonance_label"),
                turn.get("dissonance_reason"),
            )
        )
    return "\n".join(lines), avail


# --------------------------------------------------------------------------------------------------
# Turns
# --------------------------------------------------------------------------------------------------
def _weighted_mean(values: list[tuple[list[float] | float, float]]) -> Any:
    total = sum(w for _, w in values)
    if not values:
        return None
    if total <= 0:
        values, total = [(x, 1.0) for x, _ in values], float(len(values))
    first = values[0][0]
    if isinstance(first, list):
        vectors = cast(list[tuple[list[float], float]], values)
        return [sum(x[i] * w for x, w in vectors) / total for i in range(len(first))]
    scalars = cast(list[tuple[float, float]], values)
    return sum(x * w for x, w in scalars) / total


def _role(u: Mapping[str, Any]) -> str:
    role = u.get("role")
    return str(role) if role in ROLE_NAMES else "unknown"


def _role_runs(utterances: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Utterances with text, in time order, grouped into runs of the same role."""
    rows = sorted(
        (u for u in utterances if str(u.get("text") or "").strip()),
        key=lambda u: (_num(u.get("start_s")) or 0.0, _num(u.get("end_s")) or 0.0),
    )
    groups: list[list[Mapping[str, Any]]] = []
    for u in rows:
        if groups and _role(groups[-1][0]) == _role(u):
            groups[-1].append(u)
        else:
            groups.append([u])
    return groups


def _channel_readings(g: Sequence[Mapping[str, Any]], ch: str) -> dict[str, Any]:
    """A channel's probabilities, valence and arousal over a turn, weighted by utterance duration; readings
    of speech unlike the voice model's training data are left out (and flagged when they were all there is)."""
    weights = [max((_num(u.get("end_s")) or 0.0) - (_num(u.get("start_s")) or 0.0), 0.0) for u in g]
    usable = [(u, w) for u, w in zip(g, weights, strict=True) if u.get(f"{ch}_confidence") != OUT_OF_DOMAIN_CONFIDENCE]
    out: dict[str, Any] = {
        f"{ch}_out_of_domain": not usable and any(_probs(u.get(f"{ch}_probs")) for u in g),
        f"{ch}_probs": _weighted_mean([(p, w) for u, w in usable if (p := _probs(u.get(f"{ch}_probs")))]),
    }
    for dim in ("valence", "arousal"):
        key = f"{ch}_{dim}"
        out[key] = _weighted_mean([(x, w) for u, w in usable if (x := _num(u.get(key))) is not None])
    return out


def _turn_dissonance(g: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A turn is dissonant when any utterance is (label and score of the strongest); not dissonant when some
    were measured and none is; unmeasured otherwise, with the most common reason."""
    measured = [
        u
        for u in g
        if u.get("dissonance") is not None
        and not (isinstance(u.get("dissonance"), float) and math.isnan(u["dissonance"]))
    ]
    dissonant = [u for u in measured if bool(u["dissonance"])]
    if dissonant:
        top = max(dissonant, key=lambda u: _num(u.get("dissonance_score")) or 0.0)
        return {
            "dissonance": True,
            "dissonance_score": _num(top.get("dissonance_score")),
            "dissonance_label": top.get("dissonance_label"),
        }
    if measured:
        scores = [s for u in measured if (s := _num(u.get("dissonance_score"))) is not None]
        return {"dissonance": False, "dissonance_score": max(scores) if scores else None, "dissonance_label": None}
    reasons = Counter(u.get("dissonance_reason") for u in g if u.get("dissonance_reason"))
    return {
        "dissonance": None,
        "dissonance_score": None,
        "dissonance_label": None,
        "dissonance_reason": reasons.most_common(1)[0][0] if reasons else None,
    }


def merge_turns(utterances: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One session's utterances (any order) → turns: consecutive same-role utterances merged."""
    turns = []
    for g in _role_runs(utterances):
        turn: dict[str, Any] = {
            "role": _role(g[0]),
            "text": " ".join(str(u["text"]).strip() for u in g),
            "utt_id": g[-1].get("utt_id"),
            "utt_ids": [u.get("utt_id") for u in g],
        }
        for ch in ("face", "voice"):
            turn.update(_channel_readings(g, ch))
        turn.update(_turn_dissonance(g))
        turns.append(turn)
    return turns


def _clip(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return "… " + text[-max_chars:].lstrip()  # the end of a long turn is what the next speaker answers


def render_transcript(turns: Sequence[Mapping[str, Any]], max_turn_chars: int | None = None) -> str:
    return "\n".join(f"{ROLE_NAMES[t['role']]}: {neutralise(_clip(t['text'], max_turn_chars))}" for t in turns)


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------
# The dialogue block's markers. Everything before its end is the same for every condition of a client turn,
# which the llama.cpp engine evaluates once per turn (models.llm.LlamaCppGenerator's prefix_marker); the
# block is what context-aware decoding leaves out of its second prompt (GenerationConfig.context_contrast).
TRANSCRIPT_START, TRANSCRIPT_END = "<transcript>", "</transcript>"
# A reply is one therapist turn. A line that opens with a speaker label starts the transcript's next turn
# (small models go on to write the client's answer, then the therapist's), so generation stops there.
TURN_STARTS = tuple(f"\n{name}:" for name in ROLE_NAMES.values())


def render_messages(
    context: Sequence[Mapping[str, Any]],
    condition: str,
    template: Template,
    max_turn_chars: int | None = None,
) -> tuple[list[dict[str, str]], str, dict[str, bool]]:
    """(chat messages, cue text, channel availability) for a context whose last turn is the client's."""
    cues, avail = render_cues(context[-1], condition)
    cue_block = fill(template.cue_block, {"cues": cues}) if cues else ""
    user = fill(
        template.user,
        {"transcript": render_transcript(context, max_turn_chars), "cues": cue_block},
    )
    user = re.sub(r"\n{3,}", "\n\n", user.replace(f"{TRANSCRIPT_END}\n\n", f"{TRANSCRIPT_END}\n")).strip()
    return (
        [
            {"role": "system", "content": template.system},
            {"role": "user", "content": user},
        ],
        cues,
        avail,
    )


def prompt_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages of a row built by :func:`build_prompts` (its ``prompt`` is JSON)."""
    prompt = row["prompt"]
    return json.loads(prompt) if isinstance(prompt, str) else list(prompt)


def build_prompts(
    utterances: Sequence[Mapping[str, Any]],
    conditions: Sequence[str] = CONDITIONS,
    context_turns: int = 6,
    template: str = DEFAULT_TEMPLATE,
    *,
    max_turn_chars: int | None = 2000,
) -> list[dict[str, Any]]:
    """One row per (client turn followed by a therapist turn) × condition.

    ``context_turns`` is the number of turns in the transcript, counting the client turn itself (older
    turns are dropped). ``max_turn_chars`` keeps only the end of very long turns (None: keep all).
    Rows: session_id, utt_id (last utterance of the client turn), condition, prompt (JSON chat),
    reference (the therapist's next turn), template (``intervention_v1``), plus template_sha256,
    cue, face_available, voice_available, turn_utt_ids, reference_utt_ids, n_context_turns.
    """
    if context_turns < 1:
        raise ValueError("context_turns must be >= 1")
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise ValueError(f"unknown conditions {bad}; expected a subset of {CONDITIONS}")
    tpl = load_template(template)
    sessions: dict[Any, list[Mapping[str, Any]]] = {}
    for u in utterances:
        sessions.setdefault(u["session_id"], []).append(u)
    rows: list[dict[str, Any]] = []
    for session_id, utts in sessions.items():
        turns = merge_turns(utts)
        for i in range(len(turns) - 1):
            turn, nxt = turns[i], turns[i + 1]
            if turn["role"] != "client" or nxt["role"] != "therapist":
                continue
            context = turns[max(0, i + 1 - context_turns) : i + 1]
            for condition in conditions:
                messages, cues, avail = render_messages(context, condition, tpl, max_turn_chars)
                rows.append(
                    {
                        "session_id": session_id,
                        "utt_id": turn["utt_id"],
                        "condition": condition,
                        "prompt": json.dumps(messages, ensure_ascii=False),
                        "reference": nxt["text"],
                        "template": tpl.id,
                        "template_sha256": tpl.sha256,
                        "cue": cues,
                        "face_available": avail["face"],
                        "voice_available": avail["voice"],
                        "turn_utt_ids": list(turn["utt_ids"]),
                        "reference_utt_ids": list(nxt["utt_ids"]),
                        "n_context_turns": len(context),
                    }
                )
    return rows
