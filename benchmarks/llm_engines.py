"""CPU generation speed of the offline LLMs under each CPU engine, on real intervention prompts.

For every (model, engine) pair: load time, then the intervention prompts of a scripted session (all five
conditions of each client turn, as a run sends them) generated with ``max_new_tokens`` and greedy decoding.
Reported: aggregate tokens/s (generated tokens / wall time, prompt evaluation included, the figure a run
sees) and its median per prompt. Results go to benchmarks/results/llm_engines.json with the machine and
load averages (a shared machine skews timings: compare ratios measured in one run).

    python benchmarks/llm_engines.py                                   # default matrix
    python benchmarks/llm_engines.py --pairs qwen2.5-coder-0.5b-instruct:llamacpp --prompts 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_generation import machine, scripted_utterances  # noqa: E402

DEFAULT_PAIRS = (
    "qwen2.5-coder-0.5b-instruct:llamacpp",
    "qwen2.5-coder-1.5b-instruct:llamacpp",
    "smollm2-135m-instruct:llamacpp",
    "smollm2-135m-instruct:transformers",
    "qwen2.5-coder-0.5b-instruct:transformers",
)
TARGETS_TOKENS_PER_S = {"qwen2.5-coder-0.5b-instruct": 25.0, "qwen2.5-coder-1.5b-instruct": 10.0}  # issue 17, 2 cores


def prompts(n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` prompts of the scripted session, conditions of one turn next to each other."""
    from emoguide.prompts.build import build_prompts, prompt_messages

    rows = build_prompts(scripted_utterances(), context_turns=6)
    return [prompt_messages(r) for r in rows[:n]]


def run_pair(name: str, engine: str, chats: list[list[dict[str, str]]], max_new_tokens: int) -> dict:
    """Load once, generate every chat, time it."""
    from models.registry import resolve
    from ray_jobs.config import load_config
    from ray_jobs.generate import cpu_generator

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    settings = load_config(None).generation  # a run's sampling settings, with this engine and model
    settings.engine, settings.model, settings.max_new_tokens = engine, name, max_new_tokens
    gen = cpu_generator(settings, resolve("llm", name))
    load_s = time.perf_counter() - t0
    per_prompt = []
    t0 = time.perf_counter()
    results = []
    batch = 1 if engine == "llamacpp" else settings.batch_size
    for start in range(0, len(chats), batch):
        t1 = time.perf_counter()
        out = gen.generate(chats[start:start + batch])
        dt = time.perf_counter() - t1
        results += out
        per_prompt += [sum(r.n_generated_tokens for r in out) / dt]
    wall = time.perf_counter() - t0
    tokens = sum(r.n_generated_tokens for r in results)
    target = TARGETS_TOKENS_PER_S.get(name)
    return {
        "model": name, "engine": engine, "load_s": round(load_s, 2), "n_prompts": len(chats),
        "generated_tokens": tokens, "prompt_tokens": sum(r.n_prompt_tokens for r in results),
        "wall_s": round(wall, 2), "aggregate_tokens_per_s": round(tokens / wall, 2),
        "median_tokens_per_s_per_call": round(statistics.median(per_prompt), 2),
        "target_tokens_per_s": target, "meets_target": None if target is None else tokens / wall >= target,
        "loadavg_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "first_reply": results[0].text,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), help="MODEL:ENGINE")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "llm_engines.json")
    args = ap.parse_args(argv)
    chats = prompts(args.prompts)
    runs = []
    for pair in args.pairs:
        name, engine = pair.split(":")
        runs.append(run_pair(name, engine, chats, args.max_new_tokens))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "first_reply"}), flush=True)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "max_new_tokens": args.max_new_tokens,
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
