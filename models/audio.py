"""The pipeline's audio format, defined once: 16 kHz mono float32, and time to sample index.

Every model adapter and the media decoder read :data:`SAMPLE_RATE` from here, and every conversion
from seconds to a sample position in a buffer goes through :func:`to_samples`, so that one rule
(round to the nearest sample, clamp into the buffer) decides where a span starts and ends.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000


def to_samples(seconds: float, n: int | None = None, sr: int = SAMPLE_RATE) -> int:
    """Sample index of ``seconds``: rounded to the nearest sample and clamped into ``[0, n]``
    (``[0, ∞)`` without ``n``), so a span that spills past either end of a buffer is cut, never
    wrapped around by a negative index."""
    i = max(round(seconds * sr), 0)
    return i if n is None else min(i, n)
