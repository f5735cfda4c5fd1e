"""The pipeline's utterance rule (emoguide/session/utterances.py) on hand-made word timings."""

from __future__ import annotations

from emoguide.session.utterances import MIN_SENTENCE_S, split_segment, split_words
from models.asr import Segment, Word


def _words(*spec: tuple[float, float, str]) -> list[Word]:
    return [Word(a, b, f" {w}", 0.9) for a, b, w in spec]


def test_a_long_pause_ends_an_utterance_a_short_one_does_not():
    words = _words((0.0, 0.4, "so"), (0.6, 1.0, "I"), (2.2, 2.6, "think"), (2.8, 3.1, "yes"))
    parts = split_words(words, max_pause_s=0.8, max_duration_s=20.0)
    assert [[w.word.strip() for w in p] for p in parts] == [["so", "I"], ["think", "yes"]]
    # a pause of exactly max_pause_s does not split
    assert len(split_words(_words((0.0, 1.0, "a"), (1.8, 2.0, "b")), 0.8, 20.0)) == 1


def test_sentence_ends_split_only_between_long_enough_sentences():
    long_two = _words((0.0, 0.6, "I"), (0.7, 1.3, "left."), (1.4, 2.0, "Then"), (2.1, 2.7, "came"), (2.8, 3.2, "back"))
    assert [len(p) for p in split_words(long_two, 0.8, 20.0)] == [2, 3]
    short = _words((0.0, 0.3, "Yes."), (0.4, 0.8, "I"), (0.9, 1.6, "see"))
    assert MIN_SENTENCE_S > 0.3 and len(split_words(short, 0.8, 20.0)) == 1


def test_a_long_utterance_is_cut_at_its_longest_pause():
    words = [Word(i * 1.0, i * 1.0 + 0.7, f" w{i}", 0.9) for i in range(30)]
    words[12] = Word(12.3, 12.7, " w12", 0.9)  # the longest pause is before word 12... and after it is short
    parts = split_words(words, max_pause_s=0.8, max_duration_s=20.0)
    assert all(p[-1].end - p[0].start <= 20.0 for p in parts)
    assert sum(len(p) for p in parts) == 30 and parts[0][-1].word == " w11"


def test_split_segment_keeps_scores_and_flags_and_rebuilds_text():
    seg = Segment(0.0, 3.1, "so I think yes", -0.3, 0.01,
                  tuple(_words((0.0, 0.4, "so"), (0.6, 1.0, "I"), (2.2, 2.6, "think"), (2.8, 3.1, "yes"))),
                  flags=("redecoded",))
    parts = split_segment(seg, 0.8, 20.0)
    assert [(p.start, p.end, p.text) for p in parts] == [(0.0, 1.0, "so I"), (2.2, 3.1, "think yes")]
    assert all(p.flags == ("redecoded",) and p.avg_logprob == -0.3 for p in parts)
