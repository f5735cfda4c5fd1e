"""Whose face is whose: face tracks over a session, and their synchrony with each speaker's speech.

The face columns describe the client's face, and with two people on screen the largest face is as
likely the therapist's. So, once a session is diarized:

1. **tracks**: each frame's faces are linked to the previous frames' faces by box overlap and colour
   signature (a cut to another person at the same place starts a new track);
2. **people**: tracks with the same colour signature that never share a frame are one person seen
   again (after a cut, or after turning away);
3. **synchrony**: for each person and speaker, the correlation between the person's mouth activity
   (opening beyond rest plus change between sampled frames) and how much of each frame's interval
   the speaker is talking;
4. **attribution**: each speaker gets at most one person, by the best total synchrony, only where the
   correlation is clearly positive, and never a person whose mouth moves with two speakers' speech
   (a track that mixes people). A session with one face and one speaker and too little evidence
   either way attributes the face to the speaker: there is nobody else it could be.

Nothing here guesses: a speaker without an attributed person has no face, and the face columns of
the utterances about that speaker are null.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.face import AllFaces

SAME_COLOUR = 0.975  # Bhattacharyya coefficient of colour signatures above which two faces may be one person
MIN_OVERLAP = 0.3  # box IoU with the track's last box for a face to continue the track
LINK_S = 2.0  # a face continues a track last seen at most this long ago
MIN_SYNC = 0.3  # correlation of mouth movement with a speaker's speech needed to attribute
MIN_EVIDENCE = 3  # intervals needed both with and without the speaker's speech to measure synchrony
SPEECH_PAD_S = 0.1  # words' edges are padded by this much: the mouth opens before the sound


@dataclass(frozen=True)
class FaceAttribution:
    """The people seen in a session and which speaker each is."""

    person: np.ndarray  # N × K person id of each face slot, -1 for an empty slot
    where: list[tuple[int, list[float]]] = field(default_factory=list)  # per person: frames seen, mean box
    speaker_person: dict[str, int] = field(default_factory=dict)
    method: dict[str, str] = field(default_factory=dict)  # speaker → "synchrony" | "only face"
    sync: dict[str, dict[int, float]] = field(default_factory=dict)  # speaker → person → correlation

    @property
    def n_people(self) -> int:
        return len(self.where)

    def slots(self, person: int | None) -> np.ndarray:
        """Per frame, the face slot that shows ``person`` (-1 where they are not seen)."""
        out = np.full(self.person.shape[0], -1, np.int64)
        if person is None:
            return out
        rows, cols = np.nonzero(self.person == person)
        out[rows] = cols
        return out

    def record(self) -> str:
        """JSON for ``sessions.face_attribution``: the people seen (frames, mean box), which speaker each is,
        how that was decided, and the synchrony measured."""
        return json.dumps(
            {
                "people": [
                    {"person": p, "frames": n, "box": [round(v, 3) for v in box]}
                    for p, (n, box) in enumerate(self.where)
                ],
                "speakers": {
                    s: {
                        "person": self.speaker_person.get(s),
                        "method": self.method.get(s),
                        "sync": {str(p): round(r, 3) for p, r in sorted(self.sync.get(s, {}).items())},
                    }
                    for s in sorted(set(self.sync) | set(self.speaker_person))
                },
            },
            sort_keys=True,
        )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def track_people(frame_times: np.ndarray, faces: AllFaces) -> np.ndarray:
    """Person id (0, 1, ...) of every face slot, -1 for empty slots (steps 1 and 2 of the module doc)."""
    n, k = faces.boxes.shape[:2]
    track = np.full((n, k), -1, np.int64)
    last: list[tuple[float, np.ndarray, np.ndarray]] = []  # per track: time, box, signature
    for i in range(n):
        t = float(frame_times[i])
        pairs = []
        for j in range(int(faces.count[i])):
            for tr, (seen, box, sig) in enumerate(last):
                if t - seen > LINK_S or t <= seen:
                    continue
                overlap = _iou(faces.boxes[i, j], box)
                if overlap >= MIN_OVERLAP and float(faces.appearance[i, j] @ sig) >= SAME_COLOUR:
                    pairs.append((overlap, j, tr))
        taken: set[int] = set()
        for _, j, tr in sorted(pairs, reverse=True):
            if track[i, j] < 0 and tr not in taken:
                track[i, j] = tr
                taken.add(tr)
        for j in range(int(faces.count[i])):
            if track[i, j] < 0:
                track[i, j] = len(last)
                last.append((t, faces.boxes[i, j], faces.appearance[i, j]))
            else:
                last[track[i, j]] = (t, faces.boxes[i, j], faces.appearance[i, j])
    return _join_tracks(track, faces.appearance, len(last))


def _join_tracks(track: np.ndarray, signatures: np.ndarray, n_tracks: int) -> np.ndarray:
    """Tracks of one colour signature that never share a frame become one person, longest tracks first."""
    frames = [set(np.nonzero(track == t)[0].tolist()) for t in range(n_tracks)]
    means = []
    for t in range(n_tracks):
        mean = signatures[track == t].mean(axis=0)
        means.append(mean / max(float(np.linalg.norm(mean)), 1e-9))
    people: list[tuple[set[int], np.ndarray, list[int]]] = []  # frames, summed signature, tracks
    for t in sorted(range(n_tracks), key=lambda t: -len(frames[t])):
        for seen, total, members in people:
            if not seen & frames[t] and float(means[t] @ (total / np.linalg.norm(total))) >= SAME_COLOUR:
                seen |= frames[t]
                total += means[t] * len(frames[t])
                members.append(t)
                break
        else:
            people.append((set(frames[t]), means[t] * len(frames[t]), [t]))
    person_of = np.full(n_tracks + 1, -1, np.int64)  # index -1 (empty slot) maps to -1
    for p, (_, _, members) in enumerate(sorted(people, key=lambda p: min(min(frames[t]) for t in p[2]))):
        person_of[members] = p
    return person_of[track]


def speech_spans(words: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Each speaker's talking time as padded word spans."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for w in words:
        if w.get("speaker") is not None:
            spans.setdefault(w["speaker"], []).append(
                (float(w["start"]) - SPEECH_PAD_S, float(w["end"]) + SPEECH_PAD_S)
            )
    return spans


TIMELINE_S = 0.01  # resolution of the talking timelines


def _talking(spans: Sequence[tuple[float, float]], end_s: float) -> np.ndarray:
    """Cumulative talking time on a ``TIMELINE_S`` grid (index k = seconds talked before k x TIMELINE_S),
    so that the share of any interval is two lookups: a session has thousands of words and frames."""
    n = int(np.ceil(end_s / TIMELINE_S)) + 2
    edges = np.zeros(n + 1, np.int64)
    for a, b in spans:
        i, j = np.clip([round(a / TIMELINE_S), round(b / TIMELINE_S)], 0, n)
        if j > i:
            edges[i] += 1
            edges[j] -= 1
    talking = (np.cumsum(edges[:-1]) > 0).astype(np.float64)  # overlapping spans count once
    return np.concatenate([[0.0], np.cumsum(talking)]) * TIMELINE_S


def _share(cumulative: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Share of each [start, end] spent talking, from :func:`_talking`."""
    last = len(cumulative) - 1
    i = np.clip(np.round(start / TIMELINE_S).astype(np.int64), 0, last)
    j = np.clip(np.round(end / TIMELINE_S).astype(np.int64), 0, last)
    return (cumulative[j] - cumulative[i]) / np.maximum(end - start, 1e-9)


def mouth_activity(times: np.ndarray, opening: np.ndarray, max_step: float) -> np.ndarray:
    """Per frame of one person: how far the mouth is open beyond its resting opening, plus how much the
    opening changes to the neighbouring sampled frames. During speech the lips open and close several
    times a second, so samples are both wider and different from each other; a listener's lips rest.
    The resting opening is the person's 20th percentile: people differ in how closed "closed" is."""
    rest = float(np.percentile(opening, 20))
    change = np.abs(np.diff(opening))
    close = np.diff(times) <= max_step
    moved = np.zeros(len(opening))
    count = np.zeros(len(opening))
    moved[1:] += np.where(close, change, 0.0)
    moved[:-1] += np.where(close, change, 0.0)
    count[1:] += close
    count[:-1] += close
    return np.maximum(opening - rest, 0.0) + moved / np.maximum(count, 1)


def synchrony(
    frame_times: np.ndarray, faces: AllFaces, person: np.ndarray, spans: dict[str, list[tuple[float, float]]]
) -> dict[str, dict[int, float]]:
    """Speaker → person → correlation of the person's mouth activity with the speaker's talking.

    Talking is the share of each sampled frame's interval covered by the speaker's words. A pair is
    measured only with at least ``MIN_EVIDENCE`` frames both while the speaker talks and while not.
    """
    steps = np.diff(np.asarray(frame_times, np.float64))
    step = float(np.median(steps)) if len(steps) else 0.0
    out: dict[str, dict[int, float]] = {s: {} for s in spans}
    end_s = float(np.max(frame_times)) + step if len(frame_times) else 0.0
    timelines = {s: _talking(speaker_spans, end_s) for s, speaker_spans in spans.items()}
    for p in range(int(person.max()) + 1 if person.size else 0):
        rows, cols = np.nonzero(person == p)
        times, opening = np.asarray(frame_times, np.float64)[rows], faces.mouth[rows, cols].astype(np.float64)
        ok = np.isfinite(opening)
        times, opening = times[ok], opening[ok]
        if len(times) < 2 * MIN_EVIDENCE:
            continue
        activity = mouth_activity(times, opening, 1.5 * step)
        if activity.std() == 0:
            continue
        for speaker, timeline in timelines.items():
            share = _share(timeline, times - step / 2, times + step / 2)
            talking = share >= 0.5
            if min(int(talking.sum()), int((~talking).sum())) < MIN_EVIDENCE:
                continue
            out[speaker][p] = float(np.corrcoef(activity, share)[0, 1])
    return out


def attribute(frame_times: np.ndarray, faces: AllFaces, words: Sequence[dict[str, Any]]) -> FaceAttribution:
    """Track the session's faces and attribute people to speakers (the whole module doc)."""
    person = track_people(frame_times, faces)
    spans = speech_spans(words)
    sync = synchrony(frame_times, faces, person, spans)
    where = []
    for p in range(int(person.max()) + 1 if person.size else 0):
        rows, cols = np.nonzero(person == p)
        where.append((len(rows), [float(v) for v in faces.boxes[rows, cols].mean(axis=0)]))
    result = FaceAttribution(person, where, sync=sync)
    speakers = sorted(sync)
    people = sorted({p for scores in sync.values() for p in scores})
    # a person whose mouth moves with more than one speaker's speech is a track that mixes people
    mixed = {p for p in people if sum(sync[s].get(p, -1.0) >= MIN_SYNC for s in speakers) > 1}
    if speakers and people:
        score = np.array([[sync[s].get(p, -1.0) for p in people] for s in speakers])
        for i, j in zip(*linear_sum_assignment(-score), strict=True):
            if score[i, j] >= MIN_SYNC and people[j] not in mixed:
                result.speaker_person[speakers[i]] = people[j]
                result.method[speakers[i]] = "synchrony"
    if result.n_people == 1 and len(spans) == 1 and not result.speaker_person:
        speaker = next(iter(spans))
        if 0 not in sync.get(speaker, {}):  # no evidence either way; evidence against keeps it unattributed
            result.speaker_person[speaker] = 0
            result.method[speaker] = "only face"
    return result
