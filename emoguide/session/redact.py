"""``--redact``: replace names, places, numbers and e-mail addresses in transcripts (a documented rule set).

Presidio would need a spaCy model from a hub, which an offline run cannot fetch; these rules run
anywhere and are predictable. They favour recall over precision: any capitalised word that does not
start a sentence and is not a common capitalised English word is treated as a name or place. The
rules, in order:

1. e-mail addresses → ``[EMAIL]``; web addresses → ``[URL]``;
2. phone-like digit runs (7+ digits with spaces, dots, dashes, brackets) → ``[PHONE]``;
3. any other number, in digits or words (one, twenty, hundred, first, ...) → ``[NUMBER]``;
4. capitalised words not at the start of a sentence (and not "I", weekdays, months, or a few
   capitalised words of ordinary speech) → ``[NAME]``; sentence-initial words are kept, so a name
   that opens a sentence is missed — the documented price of not guessing at every first word.

Known limits: lower-case names ("i saw john"), names that open a sentence, and indirect identifiers
(job, diagnosis) are not caught. Redaction is applied before prompts are built, so generated
interventions and the judge never see the originals.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_PHONE = re.compile(r"(?<![\w])(?:\+?\d[\s().-]*){7,}\d(?![\w])")
_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion first second third fourth fifth sixth seventh eighth ninth tenth twelfth twentieth hundredth"
).split()
_NUMBER = re.compile(r"\b\d+(?:[.,:/]\d+)*(?:st|nd|rd|th|s)?\b|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
_KEEP = {
    "I",
    "I'm",
    "I've",
    "I'll",
    "I'd",
    "OK",
    "Okay",
    "Mr",
    "Mrs",
    "Ms",
    "Dr",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
    "God",
    "English",
    "Christmas",
    "Easter",
    "TV",
    "Internet",
}
_WORD = re.compile(r"[A-Z][\w'’-]*")
_SENTENCE_END = re.compile(r"[.!?]\s*$")


def redact(text: str) -> str:
    """The text with e-mails, URLs, phone numbers, numbers and (mid-sentence) capitalised names replaced."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _URL.sub("[URL]", text)
    text = _PHONE.sub("[PHONE]", text)
    text = _NUMBER.sub("[NUMBER]", text)
    out: list[str] = []
    last = 0
    for match in _WORD.finditer(text):
        before = text[: match.start()]
        sentence_start = not before.strip() or bool(_SENTENCE_END.search(before)) or before.rstrip().endswith("[")
        word = match.group(0)
        if sentence_start or word in _KEEP or word.rstrip("'’s") in _KEEP:
            continue
        out.append(text[last : match.start()])
        out.append("[NAME]")
        last = match.end()
    out.append(text[last:])
    return "".join(out)


def redact_words(words: list[dict]) -> list[dict]:
    """Word timings with each word redacted in mid-sentence context (the first word as a sentence start)."""
    out = []
    for i, w in enumerate(words):
        token = w["word"].strip()
        replaced = redact(token) if i == 0 else redact("x " + token)[2:]
        out.append({**w, "word": (" " if w["word"].startswith(" ") else "") + replaced})
    return out
