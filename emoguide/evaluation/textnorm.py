"""Word error rate against known sentences (GRID file names spell theirs; RAVDESS has two statements).

Shared by the ASR tests and ``emoguide eval pipeline`` (``emoguide/evaluation/pipeline_eval.py``), so that both
normalise text and count errors the same way.
"""

from __future__ import annotations

import re

_DIGITS = "zero one two three four five six seven eight nine".split()
_COMMAND = {"b": "bin", "l": "lay", "p": "place", "s": "set"}
_COLOUR = {"b": "blue", "g": "green", "r": "red", "w": "white"}
_PREP = {"a": "at", "b": "by", "i": "in", "w": "with"}
_ADVERB = {"a": "again", "n": "now", "p": "please", "s": "soon"}


def grid_sentence(stem: str) -> list[str]:
    """'bbaf2n' -> ['bin', 'blue', 'at', 'f', 'two', 'now'] (GRID naming, see ../shared/data/README.md)."""
    code = stem.split("_")[-1]
    digit = "zero" if code[4] == "z" else _DIGITS[int(code[4])]
    return [_COMMAND[code[0]], _COLOUR[code[1]], _PREP[code[2]], code[3], digit, _ADVERB[code[5]]]


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation; digits become number words ('F2' -> 'f two'), so ASR's
    letter-digit spellings compare with the spoken sentence."""
    text = re.sub(r"([a-zA-Z])(\d)", r"\1 \2", text.lower())
    words = re.findall(r"[a-z]+|\d", text)
    return [_DIGITS[int(w)] if w.isdigit() else w for w in words]


def _distances(reference: list[str], hypothesis: list[str]) -> list[list[int]]:
    """The full Levenshtein table over words: cell [i][j] is the distance of reference[:i] to hypothesis[:j]."""
    table = [list(range(len(hypothesis) + 1))]
    for i, r in enumerate(reference, 1):
        prev, cur = table[-1], [i]
        for j, h in enumerate(hypothesis, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        table.append(cur)
    return table


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words: substitutions, deletions and insertions."""
    return _distances(reference, hypothesis)[-1][-1]


def wer(reference: list[str], hypothesis: list[str]) -> float:
    """Levenshtein distance over words divided by the reference length."""
    return word_errors(reference, hypothesis) / max(1, len(reference))


def prefix_wer(reference: list[str], hypothesis: list[str]) -> tuple[int, int]:
    """(errors, reference words) against the best-fitting non-empty prefix of ``reference``.

    For sentences cut off mid-way (the RAVDESS clips here end at 2.39 s), where the words actually said
    are an unknown prefix: the prefix with the lowest WER is taken (the longest one on a tie), so a cut
    sentence is not charged for the words it never contained.
    """
    table = _distances(reference, hypothesis)
    best = min(range(1, len(reference) + 1), key=lambda k: (table[k][-1] / k, -k))
    return table[best][-1], best


def matched_words(reference: list[str], hypothesis: list[str]) -> list[tuple[int, int]]:
    """(reference index, hypothesis index) of the words a minimal-edit alignment pairs as equal."""
    table = _distances(reference, hypothesis)
    pairs = []
    i, j = len(reference), len(hypothesis)
    while i > 0 and j > 0:
        if reference[i - 1] == hypothesis[j - 1] and table[i][j] == table[i - 1][j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif table[i][j] == table[i - 1][j - 1] + 1:
            i, j = i - 1, j - 1
        elif table[i][j] == table[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]
