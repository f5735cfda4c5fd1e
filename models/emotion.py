"""The canonical emotion label order and the circumplex mapping shared by every emotion model.

Every face or voice model reports probabilities in ``LABELS`` order (a class the model lacks gets 0),
so face and voice distributions can be compared directly (dissonance needs that). Dimensional models
report valence/arousal directly; categorical models get them from their probabilities by the mapping
below.

The plain expectation of per-class coordinates invents a mood for an unsure classifier: four of the
seven classes of a FER or RAVDESS model are negative, so probability spread over them pulls valence
down (a neutral GRID face, top class neutral at 0.41, came out at valence -0.34), and a confident
emotion is diluted by its runners-up until it no longer differs from neutral by the paper's 0.5. The
mapping therefore sharpens the distribution first (``p ** (1 / VA_TEMPERATURE)``, renormalised): the
top class dominates, so a face that is mostly neutral lands near (0, 0) and a clearly angry voice near
anger's coordinates. ``VA_TEMPERATURE`` was chosen on the training actors' (1-12) dubbed videos
through the whole pipeline with the default voice model: 0.5 found 89% of the incongruent clips with
1.5% false alarms; 1.0 (the plain expectation) found 61%, and lower temperatures raised the false
alarms (0.4: 4.5%). How sure a channel is travels separately (:func:`confidence`), so that dissonance
can leave out channels that are not sure enough.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LABELS: tuple[str, ...] = ("neutral", "happiness", "sadness", "anger", "fear", "disgust", "surprise", "contempt")

# (valence, arousal) per class in [-1, 1], from the PAD ratings of Russell & Mehrabian (1977) for
# neutral / happy / sad / angry / afraid / disgusted / surprised / contemptuous (rounded to 2 places).
CIRCUMPLEX: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    "happiness": (0.81, 0.51),
    "sadness": (-0.63, -0.27),
    "anger": (-0.51, 0.59),
    "fear": (-0.64, 0.60),
    "disgust": (-0.60, 0.35),
    "surprise": (0.40, 0.67),
    "contempt": (-0.55, 0.10),
}
VA_TEMPERATURE = 0.5
_VA = np.array([CIRCUMPLEX[name] for name in LABELS], dtype=np.float32)


def to_canonical(probs: np.ndarray, model_labels: Sequence[str]) -> np.ndarray:
    """Reorder ``probs`` (N × len(model_labels)) into canonical order; missing classes get 0.

    ``model_labels`` must already use canonical names (map e.g. "happy" → "happiness" in the adapter).
    """
    probs = np.asarray(probs, dtype=np.float32)
    out = np.zeros((probs.shape[0], len(LABELS)), dtype=np.float32)
    for j, name in enumerate(model_labels):
        if name not in LABELS:
            raise ValueError(f"label {name!r} is not canonical; expected one of {LABELS}")
        out[:, LABELS.index(name)] += probs[:, j]
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0)


def sharpen(probs: np.ndarray, temperature: float = VA_TEMPERATURE) -> np.ndarray:
    """``probs ** (1 / temperature)`` renormalised per row (temperature 1: unchanged)."""
    p = np.power(np.clip(np.asarray(probs, dtype=np.float64), 0.0, None), 1.0 / temperature)
    total = p.sum(axis=-1, keepdims=True)
    return np.divide(p, total, out=np.zeros_like(p), where=total > 0).astype(np.float32)


def valence_arousal(probs: np.ndarray, temperature: float = VA_TEMPERATURE) -> np.ndarray:
    """Circumplex valence/arousal (N × 2, in [-1, 1]) of canonical-order probabilities (N × 8),
    through the sharpened distribution (see the module's docstring)."""
    return sharpen(probs, temperature) @ _VA


def confidence(probs: np.ndarray) -> np.ndarray:
    """How sure a categorical channel is: its top-class probability (N), in [1/8, 1]."""
    return np.asarray(probs, dtype=np.float32).max(axis=-1)
