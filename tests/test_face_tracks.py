"""Whose face is whose: tracking, synchrony and attribution on constructed face arrays, then through the
whole pipeline on two-person videos built at test time from real GRID clips (side by side, as in a
video call): each speaker is matched to their own panel, and a session where only one of the two is on
screen attributes that face and leaves the other speaker's face null."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emoguide.session.face_tracks import MIN_SYNC, attribute, track_people
from models.face import APPEARANCE_DIM, AllFaces

FPS = 4.0


def _signature(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).random(APPEARANCE_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _faces(people: list[list[tuple[int, tuple[float, float, float, float], float]]]) -> AllFaces:
    """AllFaces from, per frame, a list of (person seed, box, mouth opening)."""
    faces = AllFaces.empty(len(people), 4)
    for i, frame in enumerate(people):
        faces.count[i] = len(frame)
        for k, (seed, box, mouth) in enumerate(frame):
            faces.boxes[i, k], faces.mouth[i, k], faces.appearance[i, k] = box, mouth, _signature(seed)
            faces.scores[i, k] = 0.9
    return faces


LEFT, RIGHT, MIDDLE = (0.1, 0.3, 0.3, 0.7), (0.6, 0.3, 0.8, 0.7), (0.35, 0.3, 0.65, 0.7)


def _talk(t: float, turns: list[tuple[float, float]]) -> bool:
    return any(a <= t < b for a, b in turns)


def _mouth(t: float, talking: bool, seed: int) -> float:
    """Lips that open and close while talking and rest, with a little jitter, while not."""
    jitter = 0.005 * np.random.default_rng(int(t * 100) + seed).random()
    return (0.05 + 0.15 * abs(np.sin(9.0 * t + seed))) if talking else 0.01 + jitter


def _conversation(n_turns: int = 8, turn_s: float = 3.0) -> tuple[np.ndarray, list[dict], dict[str, list]]:
    turns = {"A": [(k * turn_s, (k + 1) * turn_s) for k in range(0, n_turns, 2)],
             "B": [(k * turn_s, (k + 1) * turn_s) for k in range(1, n_turns, 2)]}
    words = [{"start": a + 0.2 * j, "end": a + 0.2 * j + 0.15, "speaker": s}
             for s, spans in turns.items() for a, b in spans for j in range(int((b - a) / 0.2))]
    return np.arange(0, n_turns * turn_s, 1 / FPS), words, turns


def test_two_people_side_by_side_are_tracked_and_attributed():
    times, words, turns = _conversation()
    faces = _faces([[(1, LEFT, _mouth(t, _talk(t, turns["A"]), 1)), (2, RIGHT, _mouth(t, _talk(t, turns["B"]), 2))]
                    for t in times])
    who = attribute(times, faces, words)
    assert who.n_people == 2
    left = who.person[0, 0]
    assert (who.person[:, 0] == left).all() and (who.person[:, 1] == 1 - left).all()
    assert who.speaker_person == {"A": left, "B": 1 - left}
    assert who.method == {"A": "synchrony", "B": "synchrony"}
    assert who.sync["A"][left] > MIN_SYNC and who.sync["A"][1 - left] < 0
    record = json.loads(who.record())
    assert record["speakers"]["A"]["person"] == left and len(record["people"]) == 2
    np.testing.assert_array_equal(who.slots(left), np.zeros(len(times)))


def test_a_cut_between_people_at_one_place_splits_tracks_and_joins_each_person():
    # single-camera edit: whoever talks fills the frame, at the same place, over and over
    times, words, turns = _conversation()
    faces = _faces([[(1 if _talk(t, turns["A"]) else 2, MIDDLE, 0.02)] for t in times])
    person = track_people(times, faces)
    a_frames = np.array([_talk(t, turns["A"]) for t in times])
    assert len(set(person[a_frames, 0])) == 1 and len(set(person[~a_frames, 0])) == 1
    assert person[a_frames, 0][0] != person[~a_frames, 0][0]


def test_two_faces_in_one_frame_are_never_one_person():
    times = np.arange(0, 4, 1 / FPS)
    faces = _faces([[(1, LEFT, 0.02), (1, RIGHT, 0.02)] for _ in times])  # twins: same colours
    person = track_people(times, faces)
    assert set(person[:, 0]) != set(person[:, 1])


def test_a_track_mixing_people_is_not_attributed():
    # one face slot whose mouth moves with both speakers (e.g. a cut the colours could not tell apart)
    times, words, turns = _conversation()
    faces = _faces([[(1, MIDDLE, _mouth(t, _talk(t, turns["A"]) or _talk(t, turns["B"]), 1) if t % 3 > 0.5 else 0.01)]
                    for t in times])
    who = attribute(times, faces, words)
    assert who.n_people == 1
    assert who.speaker_person == {}


def test_one_face_listening_only_is_not_the_speaker():
    # the only face on screen never moves its lips: it is the listener, not the voice
    times, words, turns = _conversation()
    words = [w for w in words if w["speaker"] == "A"]
    faces = _faces([[(2, RIGHT, _mouth(t, False, 2))] for t in times])
    who = attribute(times, faces, words)
    assert who.speaker_person == {}
    assert who.sync["A"][0] < MIN_SYNC


def test_one_face_one_speaker_without_evidence_is_the_only_face():
    times = np.arange(0, 3, 0.5)  # a 3-second clip at 2 fps: too few frames to measure synchrony
    faces = _faces([[(1, MIDDLE, 0.05)] for _ in times])
    who = attribute(times, faces, [{"start": 0.5, "end": 2.5, "speaker": "S0"}])
    assert who.speaker_person == {"S0": 0} and who.method == {"S0": "only face"}


def test_no_faces_no_attribution():
    times = np.arange(0, 5, 0.5)
    who = attribute(times, AllFaces.empty(len(times), 4), [{"start": 0.5, "end": 2.5, "speaker": "S0"}])
    assert who.n_people == 0 and who.speaker_person == {}
    assert (who.slots(None) == -1).all()


# ---------------------------------------------------------------------------------------------------
# Through the pipeline, on real faces and voices
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(conversations_run):
    return conversations_run  # one run with the speaker tests' sessions (conftest.py)


def _speaker_of(turns, utterances, side: str) -> str:
    """The diarized label of the person on ``side``, from which turns its utterances fall in."""
    spans = [(t.start_s, t.end_s) for t in turns if t.speaker == side]
    labels = [u["speaker"] for u in utterances if any(a <= (u["start_s"] + u["end_s"]) / 2 <= b for a, b in spans)]
    assert labels and len(set(labels)) == 1, labels
    return labels[0]


@pytest.mark.slow
def test_each_voice_gets_its_own_face(run):
    turns, sessions, utterances = run
    turns, utts = turns["both"], [u for u in utterances if u["session_id"] == "both"]
    record = json.loads(sessions["both"]["face_attribution"])
    centre = {p["person"]: (p["box"][0] + p["box"][2]) / 2 for p in record["people"]}
    assert len(centre) == 2
    for side, is_left in (("left", True), ("right", False)):
        speaker = _speaker_of(turns, utts, side)
        person = record["speakers"][speaker]["person"]
        assert record["speakers"][speaker]["method"] == "synchrony"
        assert (centre[person] < 0.5) == is_left, record
    # roles are unknown (GRID commands), so every utterance shows its own speaker's face
    for u in utts:
        assert u["face_person"] == record["speakers"][u["speaker"]]["person"]
        assert u["face_coverage"] == 1.0 and u["face_probs"] is not None


@pytest.mark.slow
def test_the_face_on_screen_is_attributed_and_the_other_voice_has_none(run):
    turns, sessions, utterances = run
    turns, utts = turns["right_only"], [u for u in utterances if u["session_id"] == "right_only"]
    record = json.loads(sessions["right_only"]["face_attribution"])
    assert len(record["people"]) == 1
    seen, unseen = _speaker_of(turns, utts, "right"), _speaker_of(turns, utts, "left")
    assert record["speakers"][seen]["person"] == 0
    assert record["speakers"][unseen]["person"] is None
    for u in utts:
        if u["speaker"] == seen:
            assert u["face_person"] == 0 and u["face_probs"] is not None
        else:  # frames exist but not this voice's face: coverage 0, the rest null, no dissonance
            assert u["face_person"] is None and u["face_coverage"] == 0.0
            assert u["face_probs"] is None and u["dissonance"] is None
