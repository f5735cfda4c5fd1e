"""The mapping from class probabilities to valence/arousal (models/emotion.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.emotion import CIRCUMPLEX, LABELS, confidence, sharpen, valence_arousal


def _probs(**mass: float) -> np.ndarray:
    p = np.array([[mass.get(name, 0.0) for name in LABELS]], np.float32)
    return p / p.sum()


def test_an_unsure_mostly_neutral_distribution_lands_near_the_origin():
    # top class neutral at 0.41, the rest spread over the negative classes (what GRID faces look like)
    p = _probs(neutral=0.41, sadness=0.2, anger=0.12, fear=0.15, disgust=0.05, surprise=0.07)
    plain = p @ np.array([CIRCUMPLEX[n] for n in LABELS], np.float32)
    mapped = valence_arousal(p)
    assert plain[0, 0] < -0.25  # the expectation invents a negative mood
    assert abs(mapped[0, 0]) < 0.2 and abs(mapped[0, 1]) < 0.2


def test_a_clear_emotion_keeps_its_coordinates():
    p = _probs(anger=0.7, fear=0.2, happiness=0.1)
    v, a = valence_arousal(p)[0]
    assert (v, a) == pytest.approx(CIRCUMPLEX["anger"], abs=0.12)


def test_sharpen_keeps_a_distribution_and_its_order():
    p = _probs(neutral=0.5, sadness=0.3, happiness=0.2)
    q = sharpen(p, 0.5)
    assert q.sum() == pytest.approx(1.0) and np.argsort(q[0]).tolist() == np.argsort(p[0]).tolist()
    np.testing.assert_allclose(sharpen(p, 1.0), p, atol=1e-6)
    assert confidence(p)[0] == pytest.approx(0.5) and confidence(q)[0] > 0.5
