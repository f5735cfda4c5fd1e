"""Emotional dissonance: the mismatch between the client's facial and vocal emotion (no Ray here).

After Hochschild's emotional labour, and as the paper reports its rule: both channels in
valence–arousal space ([-1, 1]); an utterance is dissonant when
``max(|V_face − V_voice|, |A_face − A_voice|) > threshold`` (0.5 by default; strictly greater, so a
difference of exactly 0.5 is not dissonant). The graded ``dissonance_score`` is the Jensen–Shannon
divergence (base 2, so in [0, 1]) of the two canonical-order distributions. A missing channel gives
null everywhere: absence of evidence is not consonance. So does a channel less sure than its
``min_*_confidence`` (top-class probability), and voice out of its model's domain (confidence 0):
an unsure classifier's valence is a guess, and a guess compared with a guess is no finding.
``dissonance_reason`` says why a value is null.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

DEFAULT_THRESHOLD = 0.5
# A voice model's confidence for speech unlike its training recordings (models/voice.py): its
# probabilities are kept, but neither dissonance nor the prompts read it as a finding.
OUT_OF_DOMAIN_CONFIDENCE = 0.0
NEUTRAL_BAND = 0.15  # |valence| and |arousal| below this read as "neutral"


@dataclass(frozen=True)
class Dissonance:
    dissonant: bool | None
    score: float | None
    label: str | None  # e.g. "happy face, distressed voice"; None when a channel is missing
    reason: str | None = None  # why dissonant is None: "no face", "voice unsure", ...


def describe(valence: float, arousal: float) -> str:
    """A plain word for a point of the circumplex (its quadrant, or neutral near the origin)."""
    if abs(valence) < NEUTRAL_BAND and abs(arousal) < NEUTRAL_BAND:
        return "neutral"
    if valence >= 0:
        return "happy" if arousal >= 0 else "calm"
    return "distressed" if arousal >= 0 else "sad"


def _present(*values: Any) -> bool:
    return all(v is not None and np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in values)


def utterance_dissonance(
    utt: Mapping[str, Any],
    threshold: float = DEFAULT_THRESHOLD,
    min_face_confidence: float = 0.0,
    min_voice_confidence: float = 0.0,
) -> Dissonance:
    """Dissonance of one utterance from its face_* and voice_* columns."""
    fv, fa, vv, va = (utt.get(k) for k in ("face_valence", "face_arousal", "voice_valence", "voice_arousal"))
    unusable = _unusable(utt, min_face_confidence, min_voice_confidence)
    if unusable:
        return Dissonance(None, None, None, unusable)
    assert fv is not None and fa is not None and vv is not None and va is not None  # _unusable checked them
    gap = max(abs(fv - vv), abs(fa - va))
    score = None
    fp, vp = utt.get("face_probs"), utt.get("voice_probs")
    if _present(fp, vp):
        score = float(np.clip(jensenshannon(np.asarray(fp, float), np.asarray(vp, float), base=2) ** 2, 0.0, 1.0))
    label = f"{describe(fv, fa)} face, {describe(vv, va)} voice"
    return Dissonance(bool(gap > threshold), score, label)


def _unusable(utt: Mapping[str, Any], min_face_confidence: float, min_voice_confidence: float) -> str | None:
    """Why a channel cannot be compared (None: both can). A channel without a confidence (a dimensional
    model reports valence/arousal, not classes) is taken as it is."""
    for channel, floor in (("face", min_face_confidence), ("voice", min_voice_confidence)):
        if not _present(utt.get(f"{channel}_valence"), utt.get(f"{channel}_arousal")):
            return f"no {channel}"
        sure = utt.get(f"{channel}_confidence")
        if channel == "voice" and sure == OUT_OF_DOMAIN_CONFIDENCE:
            return "voice out of domain"
        if sure is not None and sure < floor:
            return f"{channel} unsure"
    return None


def annotate(
    utterances: Sequence[dict[str, Any]],
    threshold: float = DEFAULT_THRESHOLD,
    min_face_confidence: float = 0.0,
    min_voice_confidence: float = 0.0,
) -> None:
    """Set dissonance, dissonance_score and dissonance_label on every utterance that is not the therapist's.

    The paper's cue is about the client; the therapist's utterances keep nulls. While roles are unknown
    (a single speaker, or low-confidence role assignment) every utterance with both channels is scored.
    """
    for utt in utterances:
        result = (
            Dissonance(None, None, None, "therapist")
            if utt.get("role") == "therapist"
            else utterance_dissonance(utt, threshold, min_face_confidence, min_voice_confidence)
        )
        utt["dissonance"], utt["dissonance_score"] = result.dissonant, result.score
        utt["dissonance_label"], utt["dissonance_reason"] = result.label, result.reason


def session_summary(utterances: Sequence[Mapping[str, Any]], top_k: int = 3) -> dict[str, Any]:
    """Dissonance rate over scored utterances, the longest dissonant stretch and the top moments."""
    scored = [u for u in utterances if u.get("dissonance") is not None]
    if not scored:
        return {
            "dissonance_rate": None,
            "dissonance_longest_run": None,
            "dissonance_longest_run_s": None,
            "dissonance_top": [],
        }
    longest, run, best_span, start = 0, 0, 0.0, 0.0
    for u in scored:  # consecutive in the client's own turns
        if u["dissonance"]:
            start = u["start_s"] if run == 0 else start
            run += 1
            if run > longest:
                longest, best_span = run, u["end_s"] - start
        else:
            run = 0
    dissonant = sorted((u for u in scored if u["dissonance"]), key=lambda u: -(u.get("dissonance_score") or 0.0))
    return {
        "dissonance_rate": sum(bool(u["dissonance"]) for u in scored) / len(scored),
        "dissonance_longest_run": longest,
        "dissonance_longest_run_s": best_span,
        "dissonance_top": [
            {
                "utt_id": u["utt_id"],
                "start_s": u["start_s"],
                "end_s": u["end_s"],
                "score": u.get("dissonance_score"),
                "label": u["dissonance_label"],
            }
            for u in dissonant[:top_k]
        ],
    }
