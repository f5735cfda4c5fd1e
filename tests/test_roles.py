"""Therapist / client role assignment: hand-built sessions, abstention, overrides, and AnnoMI accuracy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from conftest import DATA
from emoguide.evaluation.annomi import annomi_sessions
from emoguide.evaluation.annomi import evaluate_roles as evaluate_annomi
from emoguide.session.roles import RoleAssignment, assign_roles, utterance_score

ANNOMI = DATA / "annomi" / "AnnoMI-dev.csv"

THERAPIST_LINES = [
    "Hi, thanks for coming in today. What brings you here?",
    "It sounds like work has been really stressful for you lately.",
    "How has that been affecting your sleep?",
    "So you're saying the drinking helps you unwind after a long day.",
    "Tell me more about what a typical evening looks like for you.",
    "Would it be okay if we looked at some options together?",
    "On a scale of one to ten, how important is it for you to cut back?",
    "You feel torn: part of you wants to change, and part of you isn't sure.",
]
CLIENT_LINES = [
    "Well, my wife said I should come. I've been drinking a lot more.",
    "Yeah. I just feel so tired all the time.",
    "I don't know, I can't really sleep. I wake up at three.",
    "I guess so. It's the only time I get to myself.",
    "I come home, I have a few beers, I watch TV with my kids.",
    "Okay, sure.",
    "Maybe a seven. I was thinking about it last week.",
    "Yeah, that's exactly it. I'm just not sure I can do it.",
]


def session(therapist: str = "S1", client: str = "S0") -> list[dict]:
    """Alternating turns, the therapist first; labels chosen by the caller so order cannot leak."""
    utts, t = [], 0.0
    for th, cl in zip(THERAPIST_LINES, CLIENT_LINES):
        for speaker, text in ((therapist, th), (client, cl)):
            utts.append({"speaker": speaker, "text": text, "start_s": t, "end_s": t + 4.0})
            t += 4.0
    return utts


@pytest.mark.parametrize("therapist,client", [("S0", "S1"), ("S1", "S0"), ("spk_b", "spk_a")])
def test_hand_built_session_gets_right_roles(therapist, client):
    got = assign_roles(session(therapist, client))
    assert got.roles == {therapist: "therapist", client: "client"}
    assert 0.6 <= got.confidence <= 1.0
    assert got.evidence[therapist] > 0 > got.evidence[client]


def test_input_order_does_not_matter():
    utts = session()
    shuffled = utts[:]
    random.Random(3).shuffle(shuffled)
    assert assign_roles(shuffled) == assign_roles(utts)


def test_utterance_cues():
    assert utterance_score("It sounds like you feel stuck. What would help?") > 0
    assert utterance_score("I've been so tired, my job is killing me.") < 0
    # "you know" is a filler, not talk about the listener
    assert utterance_score("I was, you know, you know, just tired") < 0
    assert utterance_score("") == utterance_score(None) == 0


def test_override_sets_therapist_and_clients():
    got = assign_roles(session("S1", "S0"), therapist_speaker="S0")
    assert got.roles == {"S0": "therapist", "S1": "client"}
    assert got.confidence == 1.0
    assert set(got.evidence) == {"S0", "S1"}
    with pytest.raises(ValueError, match="S7"):
        assign_roles(session(), therapist_speaker="S7")


def test_single_speaker_is_unknown_and_no_speaker_is_invented():
    utts = [u | {"speaker": "S0"} for u in session()]
    got = assign_roles(utts)
    assert got.roles == {"S0": "unknown"}
    assert got.confidence == 0.0
    # even a speaker that only ever asks and reflects: roles are relational
    only_therapist = [u for u in session() if u["speaker"] == "S1"]
    assert assign_roles(only_therapist).roles == {"S1": "unknown"}


def test_low_evidence_abstains():
    bland = [
        {"speaker": f"S{i % 2}", "text": "Okay.", "start_s": float(i), "end_s": i + 1.0} for i in range(20)
    ]
    got = assign_roles(bland)
    assert got.roles == {"S0": "unknown", "S1": "unknown"}
    assert got.confidence < 0.6
    # nor is one exchange of weak cues
    short = [
        {"speaker": "S0", "text": "Okay, so, how are things?", "start_s": 0.0, "end_s": 2.0},
        {"speaker": "S1", "text": "Fine, thanks.", "start_s": 2.0, "end_s": 3.0},
    ]
    assert set(assign_roles(short).roles.values()) == {"unknown"}
    # a caller may accept weaker evidence explicitly
    assert assign_roles(session()[:6], min_confidence=0.0).roles == {"S1": "therapist", "S0": "client"}


def test_none_speakers():
    utts = session()
    utts[3] = utts[3] | {"speaker": None}
    got = assign_roles(utts)
    assert None not in got.roles
    assert got.roles == {"S1": "therapist", "S0": "client"}
    assert got.role_for(None) == "unknown"
    assert got.role_for("S9") == "unknown"
    nobody = assign_roles([u | {"speaker": None} for u in session()])
    assert nobody == RoleAssignment({}, 0.0, {})


def test_three_speakers():
    # couple therapy: two clients
    utts = session("T", "A")
    t = utts[-1]["end_s"]
    for i, text in enumerate(CLIENT_LINES):
        utts.append({"speaker": "B", "text": text, "start_s": t + i, "end_s": t + i + 1})
    assert assign_roles(utts).roles == {"T": "therapist", "A": "client", "B": "client"}
    # a one-utterance diarization fragment is too little evidence to be called anything
    frag = session("T", "A") + [{"speaker": "X", "text": "Right.", "start_s": 999.0, "end_s": 1000.0}]
    assert assign_roles(frag).roles == {"T": "therapist", "A": "client", "X": "unknown"}
    # a therapist split in two by diarization: the weaker half is left unknown, never called client
    split = session("T", "A")
    for i in (2, 6, 10, 14):  # every other therapist turn
        split[i] = split[i] | {"speaker": "T2"}
    assert assign_roles(split).roles == {"T": "therapist", "T2": "unknown", "A": "client"}


@pytest.fixture(scope="module")
def annomi() -> Path:
    if not ANNOMI.exists():
        pytest.skip(f"AnnoMI data not available at {ANNOMI} (see ../shared/data/README.md)")
    return ANNOMI


def test_annomi_sessions_are_deduplicated_and_anonymised(annomi):
    sessions = annomi_sessions(annomi)
    assert len(sessions) == 109
    # 11,625 rows, several annotators on some transcripts: 8,394 distinct utterances
    assert sum(len(s["utterances"]) for s in sessions) == 8394
    assert all(set(s["truth"]) == {"S0", "S1"} for s in sessions)
    # the seeded shuffle puts the therapist on both labels
    assert {s["truth"]["S0"] for s in sessions} == {"therapist", "client"}
    for s in sessions:
        assert all(u["end_s"] >= u["start_s"] for u in s["utterances"])


def test_annomi_targets(annomi):
    r = evaluate_annomi(annomi)
    assert r["sessions"] == 109
    assert r["session_accuracy"] >= 0.95
    assert r["utterance_accuracy"] >= 0.95
    assert r["errors"] == []  # abstentions only, never a wrong role
    assert set(r["by_quality"]) == {"high", "low"}
    # no threshold is fitted, but check both halves of an even/odd split anyway
    for parity in (0, 1):
        half = evaluate_annomi(annomi, transcript_filter=lambda t, p=parity: t % 2 == p)
        assert half["session_accuracy"] >= 0.95 and half["utterance_accuracy"] >= 0.95
