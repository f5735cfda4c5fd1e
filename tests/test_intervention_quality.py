"""emoguide.evaluation.interventions: on-task rules, AnnoMI material with synthetic cues, paired bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emoguide.evaluation.interventions import (
    annomi_utterances,
    dialogue_text,
    off_task_rules,
    paired_bootstrap,
    sample_prompts,
    synthetic_cues,
)

CLIENT = "Client: I lost my job last month and since then I just stay in bed all day."


@pytest.mark.parametrize(
    ("reply", "broken"),
    [
        ("It sounds like losing your job has left you without a reason to get up.", []),
        ("What has staying in bed been like for you since the job ended?", []),
        ("I've been working on a new piece of work for my upcoming book, and it's going well.",
         ["not_addressed", "anecdote", "unrelated"]),
        ("I'm glad you're enjoying the chat! Let me know if you need anything.", ["anecdote", "meta", "unrelated"]),
        ("Here is the therapist's intervention: you lost your job and stay in bed.", ["meta"]),
        ("Based on the emotion cues, your arousal is low since losing the job.", ["meta"]),
        ("Okay.", ["empty"]),
        ("The weather is nice today, isn't it?", ["not_addressed", "unrelated"]),
    ],
)
def test_off_task_rules(reply: str, broken: list[str]) -> None:
    assert off_task_rules(reply, CLIENT) == broken


DIALOGUE = (
    "Therapist: So what would you like to do about the drinking over the next few weeks?\n"
    "Client: I think I need to stop going to the pub after work, it is where it starts.\n"
    "Client: And I feel so ashamed when my daughter sees me like that."
)


@pytest.mark.parametrize(
    ("reply", "broken"),
    [
        # a therapist question asked again, word for word
        ("So what would you like to do about the drinking over the next few weeks?", ["copied"]),
        # the client's words in the client's first person: the reply speaks as the client
        ("You know, I think I need to stop going to the pub after work.", ["copied"]),
        # a reflection repeats the client's words but turns "I" into "you"
        ("You need to stop going to the pub after work, it is where it starts for you.", []),
        # seven words of the therapist's question are a shared phrase, not a copy
        ("What would you like to do about going to the pub?", []),
        # a word inside another counts as shared content ("shame" in "ashamed")
        ("It sounds like you carry a lot of shame.", []),
        # a decoding loop
        ("I'm so glad you're taking care of the drinking. I'm so glad you're taking care of the drinking.",
         ["looping"]),
    ],
)
def test_copy_and_shared_word_rules(reply: str, broken: list[str]) -> None:
    assert off_task_rules(reply, DIALOGUE) == broken


def _annomi() -> pd.DataFrame:
    rows = []
    for tid in ("7", "8", "9"):
        for uid, (who, text, beh) in enumerate([
            ("therapist", "What brings you in today?", "question"),
            ("client", "My drinking has been getting out of hand lately.", "n/a"),
            ("therapist", "Your drinking worries you.", "reflection"),
            ("client", "Yes, my wife says it is ruining our marriage.", "n/a"),
            ("therapist", "How do you see it?", "question"),
        ]):
            rows.append({"transcript_id": tid, "utterance_id": uid, "interlocutor": who, "utterance_text": text,
                         "main_therapist_behaviour": beh, "mi_quality": "high"})
    return pd.DataFrame(rows)


def test_synthetic_cues_are_repeatable_distributions() -> None:
    a, b = synthetic_cues("7", 1), synthetic_cues("7", 1)
    assert a == b
    assert synthetic_cues("7", 3) != a
    assert abs(sum(a["face_probs"]) - 1) < 1e-5 and -1 <= a["voice_valence"] <= 1


def test_annomi_utterances_carry_cues_and_real_dissonance() -> None:
    utts = annomi_utterances(_annomi())
    client = [u for u in utts if u["role"] == "client"]
    assert all("face_probs" in u and u["dissonance"] is not None for u in client)
    assert all("face_probs" not in u for u in utts if u["role"] == "therapist")
    flags = {bool(u["dissonance"]) for u in client}
    assert flags, "the real rule decided every client utterance"


def test_sample_prompts_one_turn_per_transcript_both_conditions() -> None:
    rows = sample_prompts(annomi_utterances(_annomi()), n_turns=2, conditions=("text", "dissonance"))
    turns = {(r["session_id"], r["utt_id"]) for r in rows}
    assert len(turns) == 2 and len({t[0] for t in turns}) == 2
    assert sorted(r["condition"] for r in rows) == ["dissonance", "dissonance", "text", "text"]
    for r in rows:
        user = json.loads(r["prompt"])[-1]["content"]
        assert ("<emotion_cues>" in user) == (r["condition"] == "dissonance")
        assert r["reference_behaviour"] in ("reflection", "question")
        assert "Client:" in dialogue_text(r)
    assert sample_prompts(annomi_utterances(_annomi()), 2, ("text",)) == [r for r in rows if r["condition"] == "text"]


def test_paired_bootstrap_separates_a_shift_from_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 200)
    shifted = paired_bootstrap(base + 0.3 + rng.normal(0, 0.1, 200), base)
    assert shifted["ci95_low"] > 0
    noise = paired_bootstrap(base + rng.normal(0, 0.1, 200), base)
    assert noise["ci95_low"] < 0 < noise["ci95_high"]


def test_transcript_split_is_fixed_per_transcript_and_uses_both_halves() -> None:
    from emoguide.evaluation.interventions import SPLITS, transcript_split

    ids = [str(i) for i in range(200)]
    assert [transcript_split(t) for t in ids] == [transcript_split(t) for t in ids]
    counts = {s: sum(transcript_split(t) == s for t in ids) for s in SPLITS}
    assert set(counts) == {"tune", "report"} and min(counts.values()) > 70, counts


def test_sample_prompts_renders_the_template_asked_for() -> None:
    variant = Path(__file__).parents[1] / "benchmarks" / "prompt_variants" / "intervention_v2.yaml"
    rows = sample_prompts(annomi_utterances(_annomi()), 1, ("text",), template=str(variant))
    assert {r["template"] for r in rows} == {"intervention_v2"}
    assert "Example of the shape" in json.loads(rows[0]["prompt"])[0]["content"]


def test_a_hand_check_written_again_keeps_the_labels_of_unchanged_replies(tmp_path: Path) -> None:
    """Scoring stored replies again rewrites hand_check.csv; a label stays with the reply it was given to."""
    import csv

    from intervention_quality import score_hand_check, write_hand_check

    rows = sample_prompts(annomi_utterances(_annomi()), n_turns=2, conditions=("text",))
    replies = ["It sounds like your drinking worries you.", None]
    scored = {"m": [{**r, "reply": reply, "on_task": True} for r, reply in zip(rows, replies)]}
    write_hand_check(scored, rows, tmp_path)
    path = tmp_path / "hand_check.csv"
    items = list(csv.DictReader(path.open()))
    for item in items:
        item["hand_on_task"] = "1" if item["reply"] else "0"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(items[0]))
        writer.writeheader()
        writer.writerows(items)
    scored["m"][0]["reply"] = "A different reply about your marriage."
    write_hand_check(scored, rows, tmp_path)
    labels = {r["reply"]: r["hand_on_task"] for r in csv.DictReader(path.open())}
    assert labels == {"A different reply about your marriage.": "", "": "0"}
    assert score_hand_check(path)["n"] == 1
    context = list(csv.DictReader((tmp_path / "hand_check_context.csv").open()))
    assert all(c["dialogue"].startswith("Therapist: What brings you in today?") for c in context)
