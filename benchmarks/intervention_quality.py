"""Quality of the offline LLMs' interventions on AnnoMI-dev client turns (emoguide/evaluation/interventions.py).

Each model answers the same prompts: ``--turns`` client turns (one per transcript, seeded), each under the
``text`` condition and the ``dissonance`` condition (synthetic, well-formed cues). AnnoMI's transcripts are
split in two halves by a hash of their id (``transcript_split``): prompt wordings are compared on ``tune``
(``--template``, e.g. the variants in ``benchmarks/prompt_variants/``, ``--repetition-penalty`` and
``--context-contrast``) and figures are reported on ``report``.
Per model: on-task rate, similarity to the therapist's real reply (MiniLM and MPNet) and reply form against
the expert codes, each with a bootstrap CI; against the baseline model, paired bootstrap CIs of the
differences. Replies are kept (``replies.jsonl``) with a blinded sample of 30 for the hand check of the
on-task rules (``hand_check.csv``: fill the ``hand_on_task`` column, then ``--hand-check`` scores the rules
against it).

    python benchmarks/intervention_quality.py                                   # report split, 3 models
    python benchmarks/intervention_quality.py --split tune --template benchmarks/prompt_variants/intervention_v2.yaml \
        --models qwen2.5-coder-1.5b-instruct:llamacpp --out /tmp/tune-v2
    python benchmarks/intervention_quality.py --hand-check benchmarks/results/interventions/hand_check.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if TYPE_CHECKING:
    from ray_jobs.config import GenerationConfig

OUT = REPO / "benchmarks" / "results" / "interventions"
MODELS = ("smollm2-135m-instruct:transformers", "qwen2.5-coder-0.5b-instruct:llamacpp", "qwen2.5-coder-1.5b-instruct:llamacpp")
CONDITIONS = ("text", "dissonance")
EMBEDDINGS = ("all-minilm-l6-v2", "all-mpnet-base-v2")
HAND_CHECK_N = 30


def generate(pair: str, rows: list[dict], settings: GenerationConfig) -> tuple[list[str | None], dict]:
    """Replies of one model (``MODEL:ENGINE``) to every prompt row under a run's sampling ``settings``, with timing."""
    from emoguide.prompts.build import prompt_messages
    from models.registry import resolve
    from ray_jobs.generate import cpu_generator

    name, engine = pair.split(":")
    settings = replace(settings, engine=engine, model=name)
    gen = cpu_generator(settings, resolve("llm", name))
    t0 = time.perf_counter()
    results = gen.generate([prompt_messages(r) for r in rows])
    wall = time.perf_counter() - t0
    tokens = sum(r.n_generated_tokens for r in results)
    return [r.text for r in results], {"wall_s": round(wall, 1), "generated_tokens": tokens,
                                      "tokens_per_s": round(tokens / wall, 2), "engine": engine}


def embedders() -> dict:
    from models.registry import resolve
    from emoguide.evaluation.reference import MiniLMEmbedder

    return {name.split("-")[1]: MiniLMEmbedder(resolve("embedding", name).path).encode for name in EMBEDDINGS}


def compare(scored: dict[str, list[dict]], baseline: str) -> dict:
    """Paired differences against the baseline model on the same prompts."""
    from emoguide.evaluation.interventions import paired_bootstrap

    base = scored[baseline]
    out = {}
    for model, items in scored.items():
        if model == baseline:
            continue
        out[model] = {
            key: paired_bootstrap([float(s[key]) for s in items], [float(s[key]) for s in base])
            for key in ("on_task", *[k for k in items[0] if k.startswith("sim_")])
        }
    return out


LABEL_KEY = ("model", "session_id", "utt_id", "condition", "reply")


def _label_key(item: dict) -> tuple[str, ...]:
    """Which reply a hand label belongs to, in the form csv writes and reads back."""
    return tuple("" if item[f] is None else str(item[f]) for f in LABEL_KEY)


def _hand_labels(path: Path) -> dict[tuple[str, ...], str]:
    if not path.exists():
        return {}
    with path.open() as fh:
        return {_label_key(r): r["hand_on_task"] for r in csv.DictReader(fh)}


def write_hand_check(scored: dict[str, list[dict]], rows: list[dict], folder: Path) -> None:
    """A blinded, seeded sample of replies over all models, for labelling on-task by hand.

    ``hand_check.csv`` holds ids and replies (ours); the whole AnnoMI dialogue each reply answers goes to
    ``hand_check_context.csv`` beside it, which is not committed (AnnoMI's text is not ours to publish): a
    reply may repeat a turn from the start of it. Labels already given to the same reply are kept, so
    scoring stored replies again (``--rescore``) leaves the hand check standing.
    """
    from emoguide.evaluation.interventions import dialogue_text

    path = folder / "hand_check.csv"
    labels = _hand_labels(path)
    pool = [(m, i) for m, items in scored.items() for i in range(len(items))]
    pool.sort(key=lambda mi: zlib.crc32(f"{mi[0]}:{mi[1]}".encode()))
    with path.open("w", newline="") as fh, (folder / "hand_check_context.csv").open("w", newline="") as ctx:
        w, c = csv.writer(fh), csv.writer(ctx)
        w.writerow(["item", "session_id", "utt_id", "condition", "reply", "hand_on_task", "rules_on_task", "model"])
        c.writerow(["item", "dialogue"])
        for n, (m, i) in enumerate(pool[:HAND_CHECK_N]):
            s = scored[m][i]
            label = labels.get(_label_key({**s, "model": m}), "")
            w.writerow([n, s["session_id"], s["utt_id"], s["condition"], s["reply"], label, int(s["on_task"]), m])
            c.writerow([n, dialogue_text(rows[i])])


def score_hand_check(path: Path) -> dict:
    """Agreement of the rules with the hand labels."""
    with path.open() as fh:
        items = [r for r in csv.DictReader(fh) if r["hand_on_task"].strip()]
    agree = sum(r["hand_on_task"].strip() == r["rules_on_task"].strip() for r in items)
    fp = sum(r["rules_on_task"] == "1" and r["hand_on_task"].strip() == "0" for r in items)
    fn = sum(r["rules_on_task"] == "0" and r["hand_on_task"].strip() == "1" for r in items)
    return {"n": len(items), "agreement": agree / len(items) if items else None,
            "rules_on_task_but_hand_off": fp, "rules_off_but_hand_on": fn}


def _previous_replies(folder: Path) -> dict[str, tuple[list[str | None], dict]]:
    """Replies and timing per model from an earlier run's replies.jsonl (prompt order kept)."""
    summary = json.loads((folder / "summary.json").read_text())["models"]
    out: dict[str, tuple[list[str | None], dict]] = {}
    with (folder / "replies.jsonl").open() as fh:
        for line in fh:
            r = json.loads(line)
            out.setdefault(r["model"], ([], summary[r["model"]]["timing"]))[0].append(r["reply"])
    return out


def main(argv: list[str] | None = None) -> int:
    from emoguide.evaluation.interventions import SPLITS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annomi", type=Path, default=REPO.parent / "shared" / "data" / "annomi" / "AnnoMI-dev.csv")
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="MODEL:ENGINE; the first is the baseline")
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="which client turns are sampled")
    ap.add_argument("--split", choices=SPLITS, default="report",
                    help="transcripts to sample: choose wordings on `tune`, report figures on `report`")
    ap.add_argument("--template", default=None, help="prompt template (default: the run's default)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repetition-penalty", type=float, default=None, help="default: the run's")
    ap.add_argument("--context-contrast", type=float, default=None, help="default: the run's")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--hand-check", type=Path, help="score a labelled hand_check.csv and exit")
    ap.add_argument("--rescore", action="store_true", help="score the replies already in --out again (no generation)")
    args = ap.parse_args(argv)
    if args.hand_check:
        print(json.dumps(score_hand_check(args.hand_check), indent=2))
        return 0

    from emoguide.evaluation.annomi import read_annomi
    from emoguide.evaluation.interventions import (
        annomi_utterances,
        sample_prompts,
        score_replies,
        summarise,
        transcript_split,
    )
    from ray_jobs.config import load_config

    settings = load_config(None).generation  # a run's sampling settings, with this benchmark's overrides
    settings.max_new_tokens = args.max_new_tokens
    if args.repetition_penalty is not None:
        settings.repetition_penalty = args.repetition_penalty
    if args.context_contrast is not None:
        settings.context_contrast = args.context_contrast
    template = args.template or settings.template
    table = read_annomi(args.annomi, ["main_therapist_behaviour"])
    utterances = [u for u in annomi_utterances(table) if transcript_split(u["session_id"]) == args.split]
    rows = sample_prompts(utterances, args.turns, CONDITIONS, seed=args.seed, template=template)
    encoders = embedders()
    args.out.mkdir(parents=True, exist_ok=True)
    scored, report = {}, {"data": str(args.annomi), "split": args.split, "template": template,
                          "turns": args.turns, "seed": args.seed, "conditions": list(CONDITIONS),
                          "max_new_tokens": args.max_new_tokens, "repetition_penalty": settings.repetition_penalty,
                          "context_contrast": settings.context_contrast,
                          "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                          "machine": f"{os.cpu_count()} CPU cores", "models": {}}
    previous = _previous_replies(args.out) if args.rescore else {}
    with (args.out / ("replies.jsonl.new" if args.rescore else "replies.jsonl")).open("w") as fh:
        for pair in args.models:
            if args.rescore:
                replies, timing = previous[pair]
            else:
                replies, timing = generate(pair, rows, settings)
            scored[pair] = score_replies(rows, replies, encoders)
            report["models"][pair] = {"timing": timing, **summarise(scored[pair])}
            for s in scored[pair]:
                fh.write(json.dumps({"model": pair, **s}) + "\n")
            print(pair, json.dumps(report["models"][pair]["all"]["on_task"]), timing, flush=True)
    if args.rescore:
        os.replace(args.out / "replies.jsonl.new", args.out / "replies.jsonl")
    report["paired_vs_baseline"] = {"baseline": args.models[0], **compare(scored, args.models[0])}
    (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    write_hand_check(scored, rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
