"""Therapist / client role assignment for diarized speakers, from the session as a whole (no Ray here).

Diarization gives anonymous labels ("S0", "S1", ...). Which label is the therapist is decided from what
each speaker says across the whole session, because a single utterance is weak evidence but a session of
them is strong: therapists ask (especially open questions), reflect ("it sounds like ..."), use
motivational-interviewing moves (asking permission, scaling questions) and talk about *you*; clients
answer, self-disclose ("I've been ...", "my wife ...") and talk about *I*.

Method, kept deliberately small so that it generalises rather than fits one corpus:

* Every utterance gets a therapist-likeness score :func:`utterance_score`: +1 per therapist cue present
  (question, open question, reflection, MI move), -1 for client self-disclosure, and +1 / -1 / 0 for
  whether it uses more second- than first-person pronouns. All weights are 1: there are no per-cue
  weights to tune.
* A speaker's score is the mean of its utterance scores, shrunk toward 0 by a prior of ``PRIOR_N``
  neutral utterances, so a speaker with two lucky questions does not outrank one with fifty.
* The therapist is the speaker with the highest score, the client the one with the lowest. Confidence
  is a two-sided Welch-style test of the difference between them: ``erf(z / sqrt 2)``, i.e. one minus
  the p-value of "these two speakers talk alike" (0 with no difference, -> 1 with a large difference
  on many utterances). Each speaker's variance is regularised by ``PRIOR_N`` pseudo utterances of
  variance ``PRIOR_VAR``, so one utterance (or identical ones) never gives infinite z. On short AnnoMI
  windows (2-10 utterances) it is conservative: decisions at confidence 0.6-0.7 were right 98 % of the
  time, at 0.8-1.0 99.8-100 %.
* Below ``min_confidence`` every role is ``"unknown"``: a guess is never presented as fact.

Turn structure enters as *who asks* (the question cues); the score does not depend on utterance order.
Talk time was measured on AnnoMI and is not used: therapists had more words (or seconds) than clients
in only ~59 % of sessions, close to chance, so it would add noise, not evidence. Who opens the session
was not used either: 86 % of AnnoMI clips open with the therapist, but that reflects how demonstration
videos are cut, and a cue that cannot be checked on real sessions should not vote.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

THERAPIST = "therapist"
CLIENT = "client"
UNKNOWN = "unknown"

# Default threshold: with 0.6 the therapist-client difference must be about 0.84 standard errors
# (two-sided p < 0.4). Chosen a priori, not fitted: on AnnoMI-dev no threshold from 0 to 0.9 gives a
# wrong role; 0.6 abstains on 2 of 109 sessions.
DEFAULT_MIN_CONFIDENCE = 0.6
# Prior for the per-speaker mean and variance: PRIOR_N pseudo utterances scoring 0 with variance
# PRIOR_VAR (within-speaker variance of utterance scores on AnnoMI: ~1.6 therapists, ~0.7 clients).
PRIOR_N = 2.0
PRIOR_VAR = 1.0

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _rx(*phrases: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(phrases) + r")\b")


# Open questions invite elaboration rather than yes/no ("what ...?", "how ...?", "tell me about ...").
_OPEN_WH = _rx("what", "how", "why", "in what way")
_OPEN_REQUEST = _rx("tell me", "help me understand", "say more", "talk about", "describe")
# Reflections restate the other person's experience back to them.
_REFLECTION = _rx(
    r"(?:it |that )?sounds? like",
    r"it (?:seems|sounds) (?:like|that|as if)",
    "you seem",
    r"you(?:'re| are) (?:feeling|saying|telling me|wondering|worried|concerned|not sure)",
    r"you feel",
    r"so you(?:'re| are|'ve| have)?",
    r"what i(?:'m| am) hearing",
    r"if i(?:'m| am) hearing",
    r"on (?:the )?one hand",
    r"on the other hand",
    r"part of you",
    r"you(?:'ve| have) been",
    r"you mentioned",
    r"you said",
    r"for you",
)
# Motivational-interviewing moves: asking permission, scaling/importance/confidence questions,
# autonomy support, and eliciting the client's own reasons and plans.
_MI = _rx(
    r"(?:would|is) it (?:be )?(?:ok|okay|alright|all right) (?:if|with you)",
    r"do you mind if",
    r"(?:would|could) (?:we|i) (?:talk|go over|discuss)",
    r"on a scale",
    r"scale of",
    r"how (?:important|confident|ready)",
    "what would it take",
    r"(?:it's|it is) (?:your|up to you)",
    r"your (?:choice|decision|goals?|reasons?|options|plan)",
    r"what do you think",
)
# Self-disclosure: first-person states and personal life.
_DISCLOSURE = _rx(
    r"i (?:feel|felt|was|were|just|guess|don't know|can't|couldn't|need|wish|hate|love)",
    r"i(?:'ve| have) been",
    r"i(?:'m| am) (?:so |really |just |not |kind of |a bit )?"
    r"(?:tired|scared|afraid|worried|stressed|sad|angry|upset|depressed|anxious|fine|ok|okay|good|trying)",
    r"my (?:wife|husband|partner|girlfriend|boyfriend|kids?|children|son|daughter|mom|mother|dad|father"
    r"|family|job|boss|work|life|doctor|friends?|health)",
)
_SECOND = frozenset(("you", "your", "you're", "you've", "you'd", "you'll", "yourself", "yours"))
_FIRST = frozenset(("i", "i'm", "i've", "i'd", "i'll", "me", "my", "myself", "mine"))
# Fixed expressions where "you"/"I" do not refer to the listener/speaker ("you know", "thank you").
_DISCOURSE = _rx("you know", "you see", "thank you", "mind you", "i mean", "see you")


@dataclass(frozen=True)
class RoleAssignment:
    """Roles of one session's speakers.

    ``roles`` maps each (non-None) speaker label to "therapist" | "client" | "unknown";
    ``confidence`` in 0..1 is how clearly the therapist stands out from the most client-like speaker
    (1.0 for a caller-given therapist); ``evidence`` is each speaker's therapist score, kept for audit.
    """

    roles: dict[str, str]
    confidence: float
    evidence: dict[str, float] = field(default_factory=dict)

    def role_for(self, speaker: str | None) -> str:
        """Role of one utterance's speaker; "unknown" for a missing (None) or unseen speaker."""
        return self.roles.get(speaker, UNKNOWN) if speaker is not None else UNKNOWN


def _normalise(text: str | None) -> str:
    return (text or "").lower().replace("\u2019", "'").replace("\u2018", "'")


def utterance_score(text: str | None) -> float:
    """Therapist-likeness of one utterance: the sum of +-1 cues described in the module docstring."""
    t = _normalise(text)
    if not t.strip():
        return 0.0
    question = "?" in t
    score = float(question)
    score += float((question and bool(_OPEN_WH.search(t))) or bool(_OPEN_REQUEST.search(t)))
    score += float(bool(_REFLECTION.search(t)))
    score += float(bool(_MI.search(t)))
    score -= float(bool(_DISCLOSURE.search(t)))
    words = _WORD.findall(_DISCOURSE.sub(" ", t))
    second = sum(w in _SECOND for w in words)
    first = sum(w in _FIRST for w in words)
    score += (second > first) - (second < first)
    return score


def assign_roles(
    utterances: Sequence[Mapping],
    therapist_speaker: str | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
) -> RoleAssignment:
    """Decide which diarized speaker is the therapist and which the client(s), for one session.

    ``utterances``: mappings with ``speaker`` and ``text`` (pipeline rows also carry ``start_s`` /
    ``end_s``; timing is not used as evidence, see the module docstring). Utterances whose speaker is
    None carry no evidence (their role is "unknown", see ``RoleAssignment.role_for``).

    ``therapist_speaker`` (e.g. from a manifest) overrides the inference: that speaker is the
    therapist, every other speaker a client, confidence 1.0 (scores still reported as evidence). A
    label that is not among the speakers raises ValueError rather than silently mislabelling everyone.

    Decisions, and why:

    * One speaker: "unknown". Roles are relational; with one voice there is nothing to contrast, and
      the usual cause is diarization merging both people, in which case any single label would be
      wrong for part of the utterances.
    * Two or more speakers: the highest-scoring speaker is the therapist and the lowest-scoring the
      client, if the confidence of that contrast reaches ``min_confidence``; otherwise everyone is
      "unknown".
    * Three or more speakers: each speaker in between is a client if the therapist confidently
      out-scores it and it does not confidently out-score the client (same test), since several
      clients (couple or family therapy) is the ordinary multi-party case. Otherwise it stays
      "unknown": a fragment of the therapist split off by diarization, a co-therapist, or a speaker
      with too few utterances to resemble either side.
    """
    speakers: list[str] = []
    for u in utterances:
        s = u.get("speaker")
        if s is not None and s not in speakers:
            speakers.append(s)
    scores: dict[str, list[float]] = defaultdict(list)
    for u in utterances:
        if u.get("speaker") is not None:
            scores[u["speaker"]].append(utterance_score(u.get("text")))
    stats = {s: _speaker_stats(scores[s]) for s in speakers}
    evidence = {s: round(stats[s][0], 4) for s in speakers}
    if therapist_speaker is not None:
        if therapist_speaker not in speakers:
            raise ValueError(f"therapist_speaker {therapist_speaker!r} is not among the speakers {speakers}")
        roles = {s: THERAPIST if s == therapist_speaker else CLIENT for s in speakers}
        return RoleAssignment(roles, 1.0, evidence)
    if len(speakers) < 2:
        return RoleAssignment(dict.fromkeys(speakers, UNKNOWN), 0.0, evidence)

    ranked = sorted(speakers, key=lambda s: stats[s][0], reverse=True)
    therapist, client = ranked[0], ranked[-1]
    confidence = _confidence(stats[therapist], stats[client])
    if confidence < min_confidence:
        return RoleAssignment(dict.fromkeys(speakers, UNKNOWN), confidence, evidence)
    roles = {therapist: THERAPIST, client: CLIENT}
    for s in ranked[1:-1]:
        below_therapist = _confidence(stats[therapist], stats[s]) >= min_confidence
        above_client = _confidence(stats[s], stats[client]) >= min_confidence
        roles[s] = CLIENT if below_therapist and not above_client else UNKNOWN
    return RoleAssignment({s: roles[s] for s in speakers}, confidence, evidence)


def _speaker_stats(values: list[float]) -> tuple[float, float, int]:
    """(shrunk mean, regularised variance, n) of one speaker's utterance scores."""
    n = len(values)
    mean = sum(values) / n if n else 0.0
    ss = sum((v - mean) ** 2 for v in values)
    return sum(values) / (n + PRIOR_N), (ss + PRIOR_N * PRIOR_VAR) / (n + PRIOR_N), n


def _confidence(a: tuple[float, float, int], b: tuple[float, float, int]) -> float:
    """erf(z/sqrt 2) for the difference of two speakers' means (0 when b is not below a)."""
    (ma, va, na), (mb, vb, nb) = a, b
    se = math.sqrt(va / max(na, 1) + vb / max(nb, 1))
    z = (ma - mb) / se
    return max(0.0, math.erf(z / math.sqrt(2.0)))
