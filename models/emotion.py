"""The canonical emotion label order and the circumplex mapping shared by every emotion model.

Every face or voice model reports probabilities in ``LABELS`` order (a class the model lacks gets 0),
so face and voice distributions can be compared directly (dissonance needs that). Categorical models
get valence/arousal as the expectation of per-class circumplex coordinates; dimensional models report
valence/arousal directly.
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


def valence_arousal(probs: np.ndarray) -> np.ndarray:
    """Circumplex valence/arousal (N × 2, in [-1, 1]) of canonical-order probabilities (N × 8)."""
    return np.asarray(probs, dtype=np.float32) @ _VA
