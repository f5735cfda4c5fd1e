"""How usable are the generated interventions? Measured offline on AnnoMI client turns.

The unit is one AnnoMI client turn that a therapist answered. Each turn becomes prompts through the
pipeline's own prompt builder (:func:`emoguide.prompts.build.build_prompts`), under the ``text`` condition and
an emotion-cue condition whose cues are synthetic but well-formed: AnnoMI has no video, so each client
utterance gets face and voice distributions drawn from a Dirichlet seeded by its ids, with valence,
arousal and dissonance computed by the real rules (:mod:`models.emotion`, :mod:`emoguide.session.dissonance`).
The cue condition therefore tests whether a model keeps to its task when a cue block is present, not
whether the cues are right.

Per reply it records three measures:

* **on task** (:func:`off_task_rules`): a documented rule set, checked by hand on samples of 30 replies
  (``hand_check*.csv`` under ``benchmarks/results/interventions/``);
* **similarity** to the therapist's real reply: cosine of sentence embeddings (MiniLM and MPNet);
* **form** (question / reflection / other, :func:`emoguide.evaluation.reference.reply_form`) next to the expert code of
  the real reply.

:func:`paired_bootstrap` compares two models on the same prompts (the CI of the mean paired difference).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from emoguide.evaluation.reference import reply_form
from emoguide.prompts.build import DEFAULT_TEMPLATE, build_prompts
from emoguide.session.dissonance import annotate
from models.emotion import LABELS, valence_arousal

SPLITS = ("tune", "report")  # prompt wording is tuned on one half of the transcripts and reported on the other
CUE_DIRICHLET_ALPHA = 0.6  # < 1: peaked distributions, as the classifiers give; a mix of agreeing and clashing turns

# --------------------------------------------------------------------------------------------------
# On-task rules
# --------------------------------------------------------------------------------------------------
# A reply is on task when it speaks to the client about what the client said. Each rule below names one
# way to fail; a reply is on task when it breaks none of them.
_WORD = re.compile(r"[a-z']+")
_SECOND_PERSON = {"you", "your", "you're", "youre", "you've", "youve", "yourself", "you'd", "you'll"}
_ANECDOTE = re.compile(
    r"\b(i've been (working|writing|reading|thinking|going|doing|dealing|struggling|trying)|my (book|novel|project|"
    r"work|job|wife|husband|partner|kids|children|son|daughter|family|friend|weekend|day|life|experience|own)|"
    r"when i was|i remember|i used to|in my (own )?experience|i also|me too|i'm (so )?glad you're enjoying|"
    r"enjoying the chat|i (went|had|have had) a|i was just|i've got|i have to say|i'll tell you|"
    r"i'm going to (give|take|talk|tell|share)|i wanted to (talk|tell|share))\b"
)
_META = re.compile(
    r"(\bas an ai\b|language model|\btranscript\b|emotion[_ ]cues?|\bcues?\b|\bthe client\b|\bthe therapist\b|"
    r"\btherapist:|\bclient:|\bclients\b|\bintervention\b|\bhere is\b|\bhere's (a|the|my)\b|"
    r"^(sure|certainly|of course)\b|\bresponse:|\bdetected\b|\brecognition\b|\bvalence\b|\barousal\b|"
    r"\bdissonance\b|<|```|\bdef |\bimport |^\(|\n\(|\bnext step\b|(our|this|the) (conversation|chat|session)"
    r"|\btopics?\b)"
)
_STOP = frozenset(
    "about after again also been before being could does doing down each from have having here just like more "
    "most much only other over same should some such than that their them then there these they this those "
    "through very what when where which while will with would your yours yourself really think know going "
    "want things thing because well yeah okay right mean kind sort maybe feel feeling felt the and but you "
    "was are for not has had can all get got one out its how why who now yes any did too see say said her his "
    "she him our way lot let "
    # words any reply could use: sharing one says nothing about what the client said
    "talk talking tell hear glad sorry take taking care help good great tough time hard lot today going "
    "sounds seems understand sure course thank thanks something anything everything people person".split()
)


COPY_WORDS = 8  # consecutive words repeated from a turn shown, or within the reply: a copy, not a shared phrase
COPY_SHARE = 0.5  # a reply is a copy when repeated stretches make up at least this share of its words
_FIRST_PERSON = frozenset({"i", "i'm", "im", "i've", "ive", "i'd", "i'll", "me", "my", "mine", "myself"})


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def _content_words(text: str) -> set[str]:
    """Content words: 3+ letters, not a stop word, possessive dropped."""
    words = (w.removesuffix("'s").strip("'") for w in _words(text))
    return {w for w in words if len(w) >= 3 and w not in _STOP}


def _share_content(a: set[str], b: set[str]) -> bool:
    """Whether two sets of content words share one: the same first five letters (a crude, dependable stem),
    or a word of 5+ letters inside another ("shame" in "ashamed")."""
    if {w[:5] for w in a} & {w[:5] for w in b}:
        return True
    return any(x in y or y in x for x in a for y in b if min(len(x), len(y)) >= 5)


def _stretches(words: Sequence[str]) -> list[tuple[str, ...]]:
    """Every run of ``COPY_WORDS`` consecutive words, in order."""
    return [tuple(words[i : i + COPY_WORDS]) for i in range(len(words) - COPY_WORDS + 1)]


def _copies_a_turn(words: Sequence[str], dialogue: str) -> bool:
    """Whether at least ``COPY_SHARE`` of the reply's words lie in stretches of ``COPY_WORDS`` repeated from
    a therapist turn shown (a question asked again, often one the client has answered) or from a client
    turn in the client's own first person (the reply speaks as the client). A reflection may repeat the
    client's words but says "you" where they said "I"; a new reply may echo a phrase of an earlier turn."""
    covered: set[int] = set()
    reply = _stretches(words)
    for line in dialogue.splitlines():
        speaker, _, said = line.partition(":")
        turn = set(_stretches(_words(said)))
        for i, stretch in enumerate(reply):
            if stretch in turn and (speaker == "Therapist" or _FIRST_PERSON.intersection(stretch)):
                covered.update(range(i, i + COPY_WORDS))
    return len(covered) >= COPY_SHARE * len(words)


def _loops(words: Sequence[str]) -> bool:
    """Whether a stretch of ``COPY_WORDS`` words occurs twice in the reply: a small model's decoding loop."""
    stretches = _stretches(words)
    return len(set(stretches)) < len(stretches)


def off_task_rules(reply: str | None, dialogue: str) -> list[str]:
    """The on-task rules a reply breaks (empty: on task).

    * ``empty``: fewer than three words;
    * ``not_addressed``: no second-person word: a therapist speaks *to* the client;
    * ``anecdote``: first-person stories or small talk ("I've been working on my book", "my weekend");
    * ``meta``: talk about the task, the prompt or the cues (transcript, cues, "the client", "Here is",
      "As an AI", arousal, dissonance), chat-markup or code;
    * ``unrelated``: shares no content word with the dialogue shown (the topic the client is talking about;
      a therapist's earlier question may have named it);
    * ``copied``: repeats a turn shown instead of answering it (:func:`_copies_a_turn`);
    * ``looping``: says the same thing over (:func:`_loops`).
    """
    lower = str(reply or "").strip().lower().replace("’", "'")
    words = _words(lower)
    broken = []
    if len(words) < 3:
        return ["empty"]
    if not _SECOND_PERSON.intersection(words):
        broken.append("not_addressed")
    if _ANECDOTE.search(lower):
        broken.append("anecdote")
    if _META.search(lower):
        broken.append("meta")
    if not _share_content(_content_words(lower), _content_words(dialogue)):
        broken.append("unrelated")
    if _copies_a_turn(words, dialogue):
        broken.append("copied")
    if _loops(words):
        broken.append("looping")
    return broken


# --------------------------------------------------------------------------------------------------
# Material
# --------------------------------------------------------------------------------------------------
def _rng(*keys: object) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def transcript_split(session_id: str) -> str:
    """``tune`` or ``report``, fixed per transcript by a hash of its id, so that what a prompt wording was
    chosen on is never what its figures are reported on."""
    return SPLITS[zlib.crc32(f"split:{session_id}".encode()) % len(SPLITS)]


def synthetic_cues(session_id: str, utt_id: int) -> dict[str, Any]:
    """Face and voice readings for one client utterance, repeatable from its ids."""
    rng = _rng(session_id, utt_id, "cues")
    cues: dict[str, Any] = {}
    for channel in ("face", "voice"):
        probs = rng.dirichlet(np.full(len(LABELS), CUE_DIRICHLET_ALPHA)).astype(np.float32)
        valence, arousal = valence_arousal(probs[None, :])[0]
        cues.update(
            {
                f"{channel}_probs": probs.tolist(),
                f"{channel}_valence": float(valence),
                f"{channel}_arousal": float(arousal),
                f"{channel}_confidence": float(probs.max()),
            }
        )
    return cues


def annomi_utterances(table: Any, with_cues: bool = True) -> list[dict[str, Any]]:
    """AnnoMI rows (one per utterance, annotator copies collapsed) as the pipeline's utterance records."""
    rows = []
    for r in table.itertuples(index=False):
        utt: dict[str, Any] = {
            "session_id": str(r.transcript_id),
            "utt_id": int(r.utterance_id),
            "role": str(r.interlocutor),
            "text": str(r.utterance_text),
            "start_s": float(r.utterance_id),
            "end_s": float(r.utterance_id) + 0.9,
            "behaviour": str(r.main_therapist_behaviour),
        }
        if with_cues and utt["role"] == "client":
            utt.update(synthetic_cues(utt["session_id"], utt["utt_id"]))
        rows.append(utt)
    annotate(rows)
    return rows


def sample_prompts(
    utterances: Sequence[Mapping[str, Any]],
    n_turns: int,
    conditions: Sequence[str],
    seed: int = 0,
    context_turns: int = 6,
    template: str = DEFAULT_TEMPLATE,
) -> list[dict[str, Any]]:
    """Prompt rows for ``n_turns`` client turns (one per transcript, transcripts in a seeded order)."""
    rows = build_prompts(utterances, conditions, context_turns, template)
    by_turn: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for row in rows:
        by_turn.setdefault((row["session_id"], row["utt_id"]), []).append(row)
    per_session: dict[str, list[tuple[str, Any]]] = {}
    for key in by_turn:
        per_session.setdefault(key[0], []).append(key)
    sessions = sorted(per_session, key=lambda s: zlib.crc32(f"{seed}:{s}".encode()))
    chosen = []
    for session in sessions[:n_turns]:
        keys = sorted(per_session[session], key=lambda k: int(k[1]))
        chosen.append(keys[int(_rng(seed, session).integers(len(keys)))])
    behaviour = {(u["session_id"], u["utt_id"]): u.get("behaviour") for u in utterances}
    out = []
    for key in chosen:
        for row in by_turn[key]:
            ref_id = row["reference_utt_ids"][0]
            out.append({**row, "reference_behaviour": behaviour.get((row["session_id"], ref_id))})
    return out


def dialogue_text(prompt_row: Mapping[str, Any]) -> str:
    """The dialogue a prompt shows (its transcript block): what the reply should be about."""
    import json

    user = json.loads(prompt_row["prompt"])[-1]["content"]
    return "\n".join(line for line in user.splitlines() if line.startswith(("Client:", "Therapist:")))


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------
def score_replies(
    rows: Sequence[Mapping[str, Any]],
    replies: Sequence[str | None],
    embedders: Mapping[str, Callable[[Sequence[str]], np.ndarray]],
) -> list[dict[str, Any]]:
    """Per reply: on-task verdict and broken rules, form, and similarity to the real reply per embedder."""
    sims = {}
    for name, encode in embedders.items():
        a = encode([str(r or "") for r in replies])
        b = encode([str(row["reference"]) for row in rows])
        sims[name] = np.sum(a * b, axis=1)  # embeddings are L2-normalised
    scored = []
    for i, (row, reply) in enumerate(zip(rows, replies, strict=True)):
        broken = off_task_rules(reply, dialogue_text(row))
        scored.append(
            {
                "session_id": row["session_id"],
                "utt_id": row["utt_id"],
                "condition": row["condition"],
                "reply": reply,
                "on_task": not broken,
                "broken_rules": broken,
                "form": reply_form(reply),
                "reference_behaviour": row.get("reference_behaviour"),
                **{f"sim_{name}": float(v[i]) for name, v in sims.items()},
            }
        )
    return scored


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 5000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over paired items with a 95% percentile bootstrap CI (items resampled together)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean_diff": float(d.mean()), "ci95_low": float(lo), "ci95_high": float(hi), "n": len(d)}


def bootstrap_mean(values: Sequence[float], n_boot: int = 5000, seed: int = 0) -> dict[str, float]:
    """Mean with a 95% percentile bootstrap CI."""
    zeros = [0.0] * len(values)
    res = paired_bootstrap(values, zeros, n_boot, seed)
    return {"mean": res["mean_diff"], "ci95_low": res["ci95_low"], "ci95_high": res["ci95_high"], "n": res["n"]}


def summarise(scored: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """On-task rate, mean similarities and form agreement with the experts' codes, overall and per condition."""

    def block(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        coded = [s for s in items if s["reference_behaviour"] in ("question", "reflection")]
        rules: dict[str, int] = {}
        for s in items:
            for r in s["broken_rules"]:
                rules[r] = rules.get(r, 0) + 1
        sims = {k: bootstrap_mean([s[k] for s in items]) for k in items[0] if k.startswith("sim_")}
        return {
            "n": len(items),
            "on_task": bootstrap_mean([float(s["on_task"]) for s in items]),
            **sims,
            "broken_rules": rules,
            "forms": {f: sum(s["form"] == f for s in items) for f in ("question", "reflection", "other")},
            "form_matches_expert": (sum(s["form"] == s["reference_behaviour"] for s in coded) / len(coded))
            if coded
            else None,
        }

    conditions = sorted({s["condition"] for s in scored})
    return {"all": block(scored), **{c: block([s for s in scored if s["condition"] == c]) for c in conditions}}
