"""Word error rate for GRID sentences, whose file names spell what was said."""

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
    """Lower-case words; 'F2' -> 'f two' so ASR's letter-digit spellings compare with the sentence."""
    text = re.sub(r"([a-zA-Z])(\d)", r"\1 \2", text.lower())
    words = re.findall(r"[a-z]+|\d", text)
    return [_DIGITS[int(w)] if w.isdigit() else w for w in words]


def wer(reference: list[str], hypothesis: list[str]) -> float:
    """Levenshtein distance over words divided by the reference length."""
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        cur = [i]
        for j, h in enumerate(hypothesis, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1] / max(1, len(reference))
