"""Speakers of a whole session: clustering of window embeddings, a speaker per word, speaker turns.

Per session the reducer calls :func:`cluster_speakers` over all windows of the session, then
:func:`assign_words`, :func:`speaker_turns` and :func:`split_by_speaker` per ASR segment. No Ray here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from models.speakers.windows import word_value

# Cosine-distance threshold for average-linkage clustering of 1.5 s windows embedded with CAM++
# (``campplus-zh-en``), with clusters under 15 % of the windows folded into their nearest neighbour.
# Calibrated with scripts/diarize_der.py --calibrate on RAVDESS (18 actors, all 8 emotions, 300 simulated
# sessions of 15-40 windows per speaker): one actor -> 1 speaker in 299/300, two actors -> 2 in 281/300
# (18 -> 1, 1 -> 3; with min_speakers=2, as a therapy session allows, 299/300). 0.72 trades single-speaker
# robustness (293/300) for two-speaker recall (293/300). GE2E (resemblyzer) embeddings have no usable
# threshold (one actor's windows spread as far apart as two actors'): with them give num_speakers.
CAMPP_DISTANCE_THRESHOLD = 0.75
MIN_CLUSTER_SHARE = 0.15


def _relabel_first_appearance(labels: np.ndarray) -> np.ndarray:
    out = np.full(len(labels), -1, dtype=int)
    mapping: dict[int, int] = {}
    for i, lab in enumerate(labels):
        if lab < 0:
            continue
        if lab not in mapping:
            mapping[lab] = len(mapping)
        out[i] = mapping[lab]
    return out


def cluster_speakers(
    embeddings: np.ndarray,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int = 4,
    threshold: float = CAMPP_DISTANCE_THRESHOLD,
    min_cluster_share: float = MIN_CLUSTER_SHARE,
) -> np.ndarray:
    """Speaker label per embedding row (0, 1, ... in order of first appearance; -1 for NaN rows).

    Agglomerative clustering with average linkage on cosine distance. With ``num_speakers`` given,
    the tree is cut into that many clusters. Otherwise it is cut at ``threshold`` (calibrated for
    CAM++ windows on real speech, see :data:`CAMPP_DISTANCE_THRESHOLD`), so that one speaker stays
    one cluster, and clusters holding under ``min_cluster_share`` of the windows (a laugh, a cough,
    a burst of shouting) are folded into the nearest larger cluster. If the count then lies outside
    ``[min_speakers, max_speakers]``, the tree is re-cut at the nearest count in range (for a raised
    count, the smallest cut that still gives ``min_speakers`` clusters after folding).
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    emb = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    labels = np.full(len(emb), -1, dtype=int)
    ok = np.isfinite(emb).all(axis=1) & (np.abs(emb).sum(axis=1) > 0)
    x = emb[ok]
    n = len(x)
    if n == 0:
        return labels
    if n == 1:
        labels[ok] = 0
        return labels
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    tree = linkage(x, method="average", metric="cosine")

    def cut(k: int) -> np.ndarray:
        return fcluster(tree, t=k, criterion="maxclust") - 1

    if num_speakers is not None:
        lab = cut(int(min(max(num_speakers, 1), n)))
    else:
        lo = min(max(1, min_speakers), n)
        hi = max(lo, max_speakers)
        lab = _fold_small_clusters(x, fcluster(tree, t=threshold, criterion="distance") - 1, min_cluster_share)
        k = len(np.unique(lab))
        if k > hi:
            lab = cut(hi)
        elif k < lo:
            lab = cut(lo)
            for kk in range(lo, min(n, lo + 8) + 1):  # skip cuts that only split off outliers
                folded = _fold_small_clusters(x, cut(kk), min_cluster_share)
                if len(np.unique(folded)) >= lo:
                    lab = folded
                    break
    labels[ok] = lab
    return _relabel_first_appearance(labels)


def _fold_small_clusters(x: np.ndarray, lab: np.ndarray, min_share: float) -> np.ndarray:
    ids, counts = np.unique(lab, return_counts=True)
    big = ids[counts >= max(2, min_share * len(lab))] if min_share > 0 else ids
    if len(big) == 0 or len(big) == len(ids):
        return lab
    cents = np.stack([x[lab == c].mean(axis=0) for c in big])
    cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
    out = lab.copy()
    small = ~np.isin(lab, big)
    out[small] = big[np.argmax(x[small] @ cents.T, axis=1)]
    _, out = np.unique(out, return_inverse=True)
    return out


def _smooth_window_labels(window_times: Sequence[tuple[float, float]], labels: np.ndarray) -> np.ndarray:
    """A window whose two overlapping neighbours agree with each other takes their label."""
    lab = np.asarray(labels, dtype=int).copy()
    for i in range(1, len(lab) - 1):
        prev_overlaps = window_times[i - 1][1] > window_times[i][0]
        next_overlaps = window_times[i + 1][0] < window_times[i][1]
        if prev_overlaps and next_overlaps and labels[i - 1] == labels[i + 1] >= 0 and labels[i] != labels[i - 1]:
            lab[i] = labels[i - 1]
    return lab


def assign_words(
    words: Sequence[Mapping],
    window_times: Sequence[tuple[float, float]],
    labels: Sequence[int] | np.ndarray,
    max_distance_s: float = 5.0,
) -> list[str | None]:
    """Speaker ("S0", "S1", ...) per word, or None where no labelled window is near it.

    Window labels are first smoothed (a window whose overlapping neighbours both carry another
    label takes theirs), then each word takes the label with the largest total overlap with the
    word, counting the overlap of each window (ties: the window whose centre is closest to the word
    centre). A word no window overlaps takes the nearest labelled window within ``max_distance_s``.
    Labels are renamed S0, S1, ... in order of first appearance over the words.
    """
    lab = _smooth_window_labels(list(window_times), np.asarray(labels, dtype=int))
    wt = np.asarray(window_times, dtype=float).reshape(-1, 2)
    keep = lab >= 0
    wt, lab = wt[keep], lab[keep]
    raw: list[int] = []
    for w in words:
        s, e = float(word_value(w, "start")), float(word_value(w, "end"))
        if len(lab) == 0:
            raw.append(-1)
            continue
        mid = 0.5 * (s + e)
        ov = np.minimum(wt[:, 1], max(e, s + 1e-3)) - np.maximum(wt[:, 0], s)
        centres = wt.mean(axis=1)
        if (ov > 0).any():
            scores: dict[int, float] = {}
            for j in np.flatnonzero(ov > 0):
                scores[int(lab[j])] = scores.get(int(lab[j]), 0.0) + float(ov[j])
            best = max(scores.values())
            tied = [c for c, v in scores.items() if v >= best - 1e-9]
            if len(tied) > 1:
                cand = [j for j in np.flatnonzero(ov > 0) if lab[j] in tied]
                tied = [int(lab[min(cand, key=lambda j: abs(centres[j] - mid))])]
            raw.append(tied[0])
        else:
            gap = np.maximum(wt[:, 0] - e, 0) + np.maximum(s - wt[:, 1], 0)
            nearest = int(np.argmin(gap))
            raw.append(int(lab[nearest]) if gap[nearest] <= max_distance_s else -1)
    renamed = _relabel_first_appearance(np.asarray(raw, dtype=int))
    return [f"S{r}" if r >= 0 else None for r in renamed]


def speaker_turns(
    window_times: Sequence[tuple[float, float]],
    labels: Sequence[int] | np.ndarray,
    words: Sequence[Mapping],
    speakers: Sequence[str | None],
) -> list[tuple[float, float, str]]:
    """The session's speech as speaker turns (start, end, speaker), like an RTTM file.

    Each labelled window (after the same smoothing as :func:`assign_words`) holds its speaker over its
    span, and two overlapping windows share their overlap at its middle. Labels take the names the
    words got (``speakers``, from :func:`assign_words`) by overlap; a cluster no word fell into (speech
    the ASR did not transcribe) gets the next free name.
    """
    lab = _smooth_window_labels(list(window_times), np.asarray(labels, dtype=int))
    wt = np.asarray(window_times, dtype=float).reshape(-1, 2)
    votes: dict[tuple[int, str], float] = {}
    for w, name in zip(words, speakers, strict=True):
        if name is None or not len(wt):
            continue
        overlap = np.minimum(wt[:, 1], float(word_value(w, "end"))) - np.maximum(
            wt[:, 0], float(word_value(w, "start"))
        )
        for j in np.flatnonzero((overlap > 0) & (lab >= 0)):
            votes[(int(lab[j]), name)] = votes.get((int(lab[j]), name), 0.0) + float(overlap[j])
    names: dict[int, str] = {}
    for (label, name), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
        if label not in names and name not in names.values():
            names[label] = name
    taken = {int(n[1:]) for n in names.values()}
    for label in sorted({int(v) for v in lab if v >= 0} - set(names)):
        names[label] = f"S{next(k for k in range(len(taken) + len(lab) + 1) if k not in taken)}"
        taken.add(int(names[label][1:]))
    turns: list[list] = []
    for i, (s, e) in enumerate(wt):
        if lab[i] < 0:
            continue
        if i > 0 and wt[i - 1][1] > s:
            s = (s + wt[i - 1][1]) / 2
        if i + 1 < len(wt) and wt[i + 1][0] < e:
            e = (wt[i + 1][0] + e) / 2
        if turns and turns[-1][2] == names[lab[i]] and s - turns[-1][1] <= 1e-6:
            turns[-1][1] = max(turns[-1][1], e)
        else:
            turns.append([float(s), float(e), names[lab[i]]])
    return [(s, e, n) for s, e, n in turns]


def split_by_speaker(segment: Mapping) -> list[dict]:
    """Split one ASR segment into utterances where the words' ``speaker`` changes.

    ``segment["words"]``: dicts with start, end, word and speaker (None: unknown, joins the current
    utterance). Each utterance gets ``start``/``end`` from its words, ``text`` re-joined from the
    words (faster-whisper words carry their leading space), ``speaker`` and ``words``; the segment's
    other keys are copied. A segment without words comes back whole with its own speaker (or None).
    """
    words = list(segment.get("words") or [])
    base = {k: v for k, v in segment.items() if k not in ("words", "start", "end", "text", "speaker")}
    if not words:
        return [
            {
                **base,
                "start": segment.get("start"),
                "end": segment.get("end"),
                "text": (segment.get("text") or "").strip(),
                "speaker": segment.get("speaker"),
                "words": [],
            }
        ]
    groups: list[list[Mapping]] = []
    speakers: list[str | None] = []
    for w in words:
        spk = w.get("speaker")
        if groups and (spk is None or speakers[-1] is None or spk == speakers[-1]):
            groups[-1].append(w)
            if speakers[-1] is None:
                speakers[-1] = spk
        else:
            groups.append([w])
            speakers.append(spk)
    out = []
    for grp, spk in zip(groups, speakers, strict=True):
        text = "".join(str(w.get("word", "")) for w in grp)
        if not any(str(w.get("word", "")).startswith(" ") for w in grp[1:]):
            text = " ".join(str(w.get("word", "")).strip() for w in grp)
        out.append(
            {
                **base,
                "start": float(grp[0]["start"]),
                "end": float(grp[-1]["end"]),
                "text": " ".join(text.split()),
                "speaker": spk,
                "words": [dict(w) for w in grp],
            }
        )
    return out
