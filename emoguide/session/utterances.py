"""What an utterance is: the pipeline's rule, not Whisper's (no Ray here).

Whisper groups words into segments by what its decoder finds likely, and those segments ran across
pauses (one RAVDESS "utterance" covered seven clips and 25 s). Face, voice and dissonance are computed
per utterance, so its span has to be the span of one stretch of speech. An utterance ends where

* the speaker pauses for longer than ``max_pause_s`` between two words (speech regions closer than
  that are one Whisper input, so the decoder keeps its context over short pauses);
* a sentence ends (a word ending in ``.``, ``?`` or ``!``) and both sides last at least
  ``MIN_SENTENCE_S``, so "Yes. I see." is not cut into two half-second pieces;
* it would last longer than ``max_duration_s``: it is cut at its longest pause.

Speaker changes cut utterances later, per session, once speakers are clustered (``reduce``).
"""

from __future__ import annotations

from dataclasses import replace

from models.asr import Segment, Word, words_text

MIN_SENTENCE_S = 1.0  # a sentence end splits only when both sides last at least this long
_SENTENCE_END = (".", "?", "!")


def split_segment(segment: Segment, max_pause_s: float, max_duration_s: float) -> list[Segment]:
    """One ASR segment (a Whisper input's words) as the utterances it holds; each keeps the segment's
    scores and flags."""
    return [
        replace(segment, start=words[0].start, end=words[-1].end, text=words_text(words), words=tuple(words))
        for words in split_words(list(segment.words), max_pause_s, max_duration_s)
    ]


def split_words(words: list[Word], max_pause_s: float, max_duration_s: float) -> list[list[Word]]:
    """Words in time order cut at long pauses, then at sentence ends, then to the longest duration."""
    pieces: list[list[Word]] = []
    for word in words:
        if pieces and word.start - pieces[-1][-1].end <= max_pause_s:
            pieces[-1].append(word)
        else:
            pieces.append([word])
    sentences = [part for piece in pieces for part in _sentences(piece)]
    return [part for piece in sentences for part in _cap_duration(piece, max_duration_s)]


def _sentences(words: list[Word]) -> list[list[Word]]:
    """Cut after sentence-final words where both sides last at least ``MIN_SENTENCE_S``."""
    out: list[list[Word]] = []
    start = 0
    for i, word in enumerate(words[:-1]):
        if (
            word.word.strip().endswith(_SENTENCE_END)
            and word.end - words[start].start >= MIN_SENTENCE_S
            and words[-1].end - words[i + 1].start >= MIN_SENTENCE_S
        ):
            out.append(words[start : i + 1])
            start = i + 1
    out.append(words[start:])
    return out


def _cap_duration(words: list[Word], max_duration_s: float) -> list[list[Word]]:
    """Cut at the longest pause until every piece lasts at most ``max_duration_s``."""
    if len(words) < 2 or words[-1].end - words[0].start <= max_duration_s:
        return [words]
    gaps = [words[i + 1].start - words[i].end for i in range(len(words) - 1)]
    cut = max(range(len(gaps)), key=gaps.__getitem__) + 1
    return _cap_duration(words[:cut], max_duration_s) + _cap_duration(words[cut:], max_duration_s)
