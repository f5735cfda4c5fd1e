"""The dissonance rule on hand-built rows: edges, missing channels, graded score, session summary."""

from __future__ import annotations

import math

import pytest

from emoguide.session.dissonance import Dissonance, annotate, describe, session_summary, utterance_dissonance
from models.emotion import LABELS


def onehot(label: str) -> list[float]:
    return [1.0 if name == label else 0.0 for name in LABELS]


def utt(fv, fa, vv, va, fp=None, vp=None, role="client", **extra):
    return {"face_valence": fv, "face_arousal": fa, "voice_valence": vv, "voice_arousal": va,
            "face_probs": fp, "voice_probs": vp, "role": role, **extra}


@pytest.mark.parametrize(
    "row, expected",
    [
        (utt(0.0, 0.0, 0.5, 0.0), False),  # exactly 0.5: not dissonant (strictly greater)
        (utt(0.0, 0.0, 0.0, -0.5), False),
        (utt(0.0, 0.0, 0.5001, 0.0), True),
        (utt(0.3, 0.1, -0.3, 0.1), True),  # valence gap 0.6
        (utt(0.1, 0.6, 0.1, 0.0), True),  # arousal gap 0.6 alone suffices (max of the two)
        (utt(0.4, 0.4, 0.0, 0.0), False),  # both gaps 0.4: max, not sum
    ],
)
def test_paper_rule(row, expected):
    assert utterance_dissonance(row).dissonant is expected


def test_threshold_is_configurable():
    assert utterance_dissonance(utt(0.0, 0.0, 0.3, 0.0), threshold=0.25).dissonant is True


@pytest.mark.parametrize("missing", ["face_valence", "face_arousal", "voice_valence", "voice_arousal"])
def test_missing_channel_is_null_never_false(missing):
    row = utt(0.1, 0.1, 0.1, 0.1, onehot("neutral"), onehot("neutral"))
    row[missing] = None
    channel = missing.split("_")[0]
    assert utterance_dissonance(row) == Dissonance(None, None, None, f"no {channel}")
    row[missing] = float("nan")
    assert utterance_dissonance(row).dissonant is None


def test_graded_score_is_jensen_shannon_base2():
    same = utterance_dissonance(utt(0, 0, 0, 0, onehot("happiness"), onehot("happiness")))
    opposite = utterance_dissonance(utt(0.8, 0.5, -0.6, 0.3, onehot("happiness"), onehot("sadness")))
    half = [0.5 if n in ("happiness", "sadness") else 0.0 for n in LABELS]
    partial = utterance_dissonance(utt(0, 0, 0, 0, onehot("happiness"), half))
    assert same.score == pytest.approx(0.0, abs=1e-9)
    assert opposite.score == pytest.approx(1.0)  # disjoint distributions: the maximum
    # JSD(p, (p+q)/2 mix) by hand: 0.5*KL(p||m) + 0.5*KL(q||m), m = (0.75, 0.25)
    m = (0.75, 0.25)
    expected = 0.5 * math.log2(1 / m[0]) + 0.5 * (0.5 * math.log2(0.5 / m[0]) + 0.5 * math.log2(0.5 / m[1]))
    assert partial.score == pytest.approx(expected)
    # score needs both distributions; the flag only needs valence/arousal
    only_va = utterance_dissonance(utt(0.8, 0.5, -0.6, 0.3))
    assert only_va.dissonant is True and only_va.score is None


def test_direction_label():
    row = utt(0.7, 0.4, -0.6, 0.5, onehot("happiness"), onehot("fear"))
    assert utterance_dissonance(row).label == "happy face, distressed voice"
    assert describe(0.05, -0.1) == "neutral" and describe(-0.5, -0.3) == "sad" and describe(0.3, -0.4) == "calm"


def test_annotate_skips_therapist_and_summarises_session():
    rows = [
        utt(0.0, 0.0, 0.9, 0.0, utt_id="u0", start_s=0.0, end_s=1.0),  # dissonant
        utt(0.0, 0.0, 0.9, 0.0, utt_id="u1", start_s=1.0, end_s=2.5),  # dissonant
        utt(0.0, 0.0, 0.9, 0.0, role="therapist", utt_id="u2", start_s=3.0, end_s=4.0),
        utt(0.0, 0.0, 0.1, 0.0, utt_id="u3", start_s=5.0, end_s=6.0),  # consonant
        utt(None, None, 0.1, 0.0, utt_id="u4", start_s=7.0, end_s=8.0),  # no face
        utt(0.0, 0.0, -0.9, 0.0, utt_id="u5", start_s=9.0, end_s=9.5),  # dissonant
    ]
    annotate(rows)
    assert [r["dissonance"] for r in rows] == [True, True, None, False, None, True]
    assert [r["dissonance_reason"] for r in rows] == [None, None, "therapist", None, "no face", None]
    summary = session_summary(rows)
    assert summary["dissonance_rate"] == pytest.approx(3 / 4)
    assert summary["dissonance_longest_run"] == 2 and summary["dissonance_longest_run_s"] == pytest.approx(2.5)
    assert [m["utt_id"] for m in summary["dissonance_top"]] == ["u0", "u1", "u5"]
    assert session_summary([utt(None, None, None, None)])["dissonance_rate"] is None


def test_unsure_or_out_of_domain_channels_are_left_out_with_their_reason():
    sure = utt(0.0, 0.0, 0.9, 0.0, face_confidence=0.8, voice_confidence=0.7)
    assert utterance_dissonance(sure, min_face_confidence=0.5, min_voice_confidence=0.5).dissonant is True
    unsure_face = {**sure, "face_confidence": 0.3}
    assert utterance_dissonance(unsure_face, min_face_confidence=0.5) == Dissonance(None, None, None, "face unsure")
    unsure_voice = {**sure, "voice_confidence": 0.4}
    assert utterance_dissonance(unsure_voice, min_voice_confidence=0.5).reason == "voice unsure"
    # confidence 0 is the voice model's word for speech unlike its training data, whatever the floor
    assert utterance_dissonance({**sure, "voice_confidence": 0.0}).reason == "voice out of domain"
    # a channel without a confidence (a dimensional model) is compared as it is
    assert utterance_dissonance(utt(0.0, 0.0, 0.9, 0.0), min_voice_confidence=0.9).dissonant is True
