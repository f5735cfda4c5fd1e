"""Diarization error rate (DER): how far the pipeline's speaker turns are from reference turns.

Used by ``scripts/diarize_der.py``, ``benchmarks/diarization.py`` and the speaker tests; the adapters
in :mod:`models.speakers` do not score themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def diarization_error_rate(
    reference: Sequence[tuple[float, float, str]],
    hypothesis: Sequence[tuple[float, float, str]],
    step_s: float = 0.01,
    collar_s: float = 0.0,
) -> dict[str, float]:
    """Standard DER, frame-level (``step_s``), overlap scored, optimal 1:1 speaker map.

    ``reference``/``hypothesis``: (start, end, speaker) turns. DER = (missed + false alarm +
    confusion) / total reference speech, each term in speaker-seconds as in NIST md-eval and
    pyannote.metrics; the speaker mapping maximises the co-occurring time (Hungarian algorithm).
    ``collar_s`` leaves out of the scoring every frame within that distance of a reference turn's
    start or end (NIST's forgiveness collar, often 0.25 s: reference boundaries are uncertain).
    Returns der, miss, false_alarm, confusion (fractions of reference speech) and total_s.
    """
    from scipy.optimize import linear_sum_assignment

    end = max([e for _, e, _ in list(reference) + list(hypothesis)] + [0.0])
    n = int(np.ceil(end / step_s)) + 1
    ref_spk = sorted({s for _, _, s in reference})
    hyp_spk = sorted({s for _, _, s in hypothesis})

    def grid(turns, names):
        m = np.zeros((len(names), n), dtype=bool)
        idx = {s: i for i, s in enumerate(names)}
        for s, e, spk in turns:
            m[idx[spk], round(s / step_s) : round(e / step_s)] = True
        return m

    r, h = grid(reference, ref_spk), grid(hypothesis, hyp_spk)
    if collar_s > 0:
        scored = np.ones(n, dtype=bool)
        width = round(collar_s / step_s)
        for s, e, _ in reference:
            for edge in (round(s / step_s), round(e / step_s)):
                scored[max(0, edge - width) : edge + width] = False
        r, h = r[:, scored], h[:, scored]
        n = int(scored.sum())
    nr, nh = r.sum(0), h.sum(0)
    total = nr.sum()
    if total == 0:
        return {"der": float("nan"), "miss": 0.0, "false_alarm": 0.0, "confusion": 0.0, "total_s": 0.0}
    co = r.astype(np.int64) @ h.T.astype(np.int64)  # ref x hyp co-occurrence frames
    matched: int | np.ndarray = 0
    if co.size:
        ri, hi = linear_sum_assignment(-co)
        mapped = np.zeros(n, dtype=np.int64)
        for a, b in zip(ri, hi, strict=True):
            mapped += r[a] & h[b]
        matched = mapped
    miss = np.maximum(nr - nh, 0).sum()
    fa = np.maximum(nh - nr, 0).sum()
    conf = (np.minimum(nr, nh) - matched).sum()
    return {
        "der": float((miss + fa + conf) / total),
        "miss": float(miss / total),
        "false_alarm": float(fa / total),
        "confusion": float(conf / total),
        "total_s": float(total * step_s),
    }
