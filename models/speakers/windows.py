"""Speech windows for speaker embedding: regions of speech, fixed windows over them, their samples.

Per chunk the speaker stage calls :func:`region_windows` on the chunk's speech regions (voice
activity from :mod:`models.segmentation`) and :func:`cut_windows` on its audio, then
:class:`models.speakers.embedders.SpeakerEmbedder` embeds each window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.audio import SAMPLE_RATE, to_samples


def word_value(word: Mapping | object, key: str) -> Any:
    """A word's field, whether the word is a dict (a Parquet row) or an object (an ASR word)."""
    return word[key] if isinstance(word, Mapping) else getattr(word, key)


def speech_regions(words: Sequence[Mapping], max_gap_s: float = 0.5) -> list[tuple[float, float]]:
    """Merge word spans (sorted by start) into speech regions; gaps above ``max_gap_s`` split them."""
    spans = sorted(
        (float(word_value(w, "start")), float(word_value(w, "end")))
        for w in words
        if word_value(w, "end") is not None and float(word_value(w, "end")) > float(word_value(w, "start"))
    )
    regions: list[list[float]] = []
    for s, e in spans:
        if regions and s - regions[-1][1] <= max_gap_s:
            regions[-1][1] = max(regions[-1][1], e)
        else:
            regions.append([s, e])
    return [(s, e) for s, e in regions]


def region_windows(
    regions: Sequence[tuple[float, float]], window_s: float = 1.5, hop_s: float = 0.75
) -> list[tuple[float, float]]:
    """Windows (start, end) in seconds over speech regions only.

    A region no longer than ``window_s`` gets one window covering it exactly (it may be too short to
    embed: the embedder then returns a NaN row); a longer region gets windows of ``window_s`` every
    ``hop_s``, the last one ending at the region's end. Windows are in time order and never cover
    silence between regions.
    """
    out: list[tuple[float, float]] = []
    for s, e in regions:
        if e - s <= window_s + 1e-9:
            out.append((s, e))
            continue
        n = int(np.ceil((e - s - window_s) / hop_s - 1e-9)) + 1
        starts = [s + k * hop_s for k in range(n)]
        starts[-1] = e - window_s
        out.extend((round(a, 4), round(a + window_s, 4)) for a in starts)
    return out


def speech_windows(
    words: Sequence[Mapping],
    window_s: float = 1.5,
    hop_s: float = 0.75,
    max_gap_s: float = 0.5,
) -> list[tuple[float, float]]:
    """:func:`region_windows` over the speech regions of word timings (words closer than ``max_gap_s``
    form one region)."""
    return region_windows(speech_regions(words, max_gap_s), window_s, hop_s)


def cut_windows(
    audio: np.ndarray, windows: Sequence[tuple[float, float]], offset_s: float = 0.0, sr: int = SAMPLE_RATE
) -> list[np.ndarray]:
    """Samples of each window (absolute seconds) from ``audio`` that starts at ``offset_s``."""
    n = len(audio)
    out = []
    for s, e in windows:
        a = to_samples(s - offset_s, n, sr)
        b = max(to_samples(e - offset_s, n, sr), a)
        out.append(audio[a:b])
    return out
