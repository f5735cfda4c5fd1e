"""CPU generation throughput of models.llm.TransformersGenerator on real intervention prompts.

Builds intervention prompts (emoguide.prompts.build, template intervention_v1, 6-turn context) from a scripted
therapy dialogue, keeps those of 300-600 prompt tokens, and measures, per configuration (dtype, threads,
attention, KV cache): single-prompt tokens/s and batched aggregate tokens/s (generated tokens / wall time,
prefill included). Also measures load time from the GGUF file (dequantisation) and from the derived
safetensors cache. Writes benchmarks/results/generation.json with a machine description (CPU, cores,
load average before/after each run: other processes on a shared machine skew the numbers).

    python benchmarks/bench_generation.py                      # default matrix
    python benchmarks/bench_generation.py --configs fp32-t2 bf16-t2 --batches 1 8 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIGS = {
    "fp32-t2": {"dtype": "float32", "num_threads": 2},
    "fp32-t1": {"dtype": "float32", "num_threads": 1},
    "bf16-t2": {"dtype": "bfloat16", "num_threads": 2},
    "bf16-t1": {"dtype": "bfloat16", "num_threads": 1},
    "fp32-t2-eager": {
        "dtype": "float32",
        "num_threads": 2,
        "attn_implementation": "eager",
    },
    "fp32-t2-static": {
        "dtype": "float32",
        "num_threads": 2,
        "cache_implementation": "static",
    },
    "bf16-t2-static": {
        "dtype": "bfloat16",
        "num_threads": 2,
        "cache_implementation": "static",
    },
    "bf16-t1-static": {
        "dtype": "bfloat16",
        "num_threads": 1,
        "cache_implementation": "static",
    },
    "bf16-t1-eager": {
        "dtype": "bfloat16",
        "num_threads": 1,
        "attn_implementation": "eager",
    },
}

# A scripted session (client and therapist alternate; a few consecutive client utterances get merged).
_DIALOGUE = [
    (
        "therapist",
        "Welcome back. Last time we talked about the pressure you have been feeling at work and how it follows you home in the evenings. How has this week been for you?",
    ),
    (
        "client",
        "Honestly it has been a strange week. On Monday my manager asked me to take over a project from a colleague who left, and I said yes straight away, like I always do, even though I already had too much on my plate.",
    ),
    (
        "client",
        "And then I stayed up until two in the morning twice, trying to catch up, and I kept telling myself it is fine, it is just a busy period, it will pass.",
    ),
    (
        "therapist",
        "So you said yes before you had a moment to check in with yourself, and then you carried the cost of that late into the night. What was it like, saying yes so quickly?",
    ),
    (
        "client",
        "In the moment it felt like relief, like I avoided disappointing him. But walking back to my desk I had this tight feeling in my chest, and I started doing the maths of how many hours I would need, and I felt a bit sick.",
    ),
    (
        "therapist",
        "The relief came first, and right behind it the tightness and the counting. It sounds like disappointing someone feels more dangerous to you than overloading yourself.",
    ),
    (
        "client",
        "Yes, I think that is true. My dad used to go very quiet when I did not do what he expected, and that silence was worse than shouting. I can still feel it. When my manager pauses before he answers me, I get that same feeling in my stomach.",
    ),
    (
        "therapist",
        "That is an important link. The pause in your manager's voice brings back your father's silence, and your body reacts before you can think. What do you usually do when that feeling comes?",
    ),
    (
        "client",
        "I make a joke, or I over-explain, or I offer to do more. Anything to fill the silence. My partner says I apologise for things that are not my fault, and she is right, I do it all the time, even to the cashier at the supermarket.",
    ),
    (
        "therapist",
        "Filling the silence, joking, offering more, apologising: they all seem to be ways of keeping someone from pulling away. I wonder what you imagine would happen if you just let the silence be there.",
    ),
    (
        "client",
        "I don't know. Nothing, probably. It sounds stupid when I say it out loud. I am a grown adult, I should be able to sit through a pause in a meeting. But it does not feel like nothing when it happens, it feels like the floor is tilting.",
    ),
    (
        "therapist",
        "It doesn't sound stupid to me. Part of you knows it is probably nothing, and another part feels the floor tilting. Both are real. Can we stay for a moment with the part that feels the floor tilting?",
    ),
    (
        "client",
        "Okay. It feels young, I guess. Like ten years old, waiting in the hallway to find out if I am in trouble. I am smiling right now but I actually feel like crying, which is ridiculous.",
    ),
    (
        "therapist",
        "You are smiling and at the same time something in you wants to cry. That ten-year-old in the hallway has been waiting a long time. What does he need to hear?",
    ),
    (
        "client",
        "That he is not in trouble. That he does not have to fix everything to be allowed to stay. I have never really said that to myself. I think I am scared that if I stop trying so hard, people will see I am not enough.",
    ),
    (
        "therapist",
        "Being allowed to stay without having to fix everything. That sounds like something you have been working for your whole life. What would it be like to offer him that, even just a little, this week?",
    ),
    (
        "client",
        "Maybe I could try not answering straight away next time my manager asks for something. Just say I will check my schedule and come back to him. Even thinking about it makes my heart race, though. What if he thinks I am lazy?",
    ),
    (
        "therapist",
        "Saying you will check and come back is a small, concrete step, and your heart racing tells us how much it matters. Let's look at the fear that he will think you are lazy.",
    ),
    (
        "client",
        "He has never called me lazy. He actually said in my review that I am reliable. So the evidence is against it. But the fear does not care about evidence. It just shows up, and then I am saying yes again before I notice.",
    ),
    (
        "therapist",
        "The fear arrives faster than the evidence can. Noticing that gap is already something. How would you like to practise catching it before the yes comes out?",
    ),
]


def scripted_utterances(session_id: str = "bench") -> list[dict]:
    rows, t = [], 0.0
    probs = [
        [0.62, 0.05, 0.21, 0.02, 0.05, 0.02, 0.02, 0.01],
        [0.2, 0.45, 0.1, 0.0, 0.15, 0.0, 0.1, 0.0],
    ]
    for i, (role, text) in enumerate(_DIALOGUE):
        dur = 0.4 * len(text.split())
        p = probs[i % 2]
        rows.append(
            {
                "session_id": session_id,
                "utt_id": f"{session_id}-u{i:05d}",
                "start_s": t,
                "end_s": t + dur,
                "speaker": "A" if role == "therapist" else "B",
                "role": role,
                "text": text,
                "face_probs": p,
                "face_valence": 0.3 if i % 2 else -0.2,
                "face_arousal": -0.3,
                "voice_probs": probs[(i + 1) % 2],
                "voice_valence": -0.4,
                "voice_arousal": 0.4,
                "dissonance": bool(i % 2),
                "dissonance_score": 0.7 if i % 2 else 0.2,
                "dissonance_label": "smiling face, distressed voice" if i % 2 else None,
            }
        )
        t += dur + 0.5
    return rows


def bench_prompts(tokenizer, n: int) -> tuple[list[list[dict]], list[int]]:
    from emoguide.prompts.build import build_prompts, prompt_messages

    rows = build_prompts(scripted_utterances(), context_turns=6)
    chats, lengths = [], []
    for r in rows:
        chat = prompt_messages(r)
        text = tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
        n_tok = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if 300 <= n_tok <= 600:
            chats.append(chat)
            lengths.append(n_tok)
    if not chats:
        raise RuntimeError("no prompt of 300-600 tokens")
    while (
        len(chats) < n
    ):  # reuse prompts when more are needed than the scripted session gives
        chats, lengths = chats + chats, lengths + lengths
    return chats[:n], lengths[:n]


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(
            l
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("flags")
        )
        isa = [
            f
            for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")
            if f" {f}" in flags
        ]
    except (OSError, StopIteration):
        isa = []
    import torch
    import transformers

    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "isa": isa,
        "memory_gib": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:4],
    }


def load_times(cache: Path, name: str) -> dict:
    """Load time in fresh processes: from the GGUF (dequantise) and then from the derived cache."""
    code = (
        "import os,sys,time,json; sys.path.insert(0, %r); t=time.perf_counter();"
        "from models.registry import resolve; from models.llm import TransformersGenerator;"
        "g=TransformersGenerator(resolve('llm', %r), cache_derived=%s);"
        "print(json.dumps({'load_s': g.load_seconds, 'with_imports_s': time.perf_counter()-t, 'from': g.loaded_from}))"
    )
    env = {
        **os.environ,
        "EMOGUIDE_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
    }
    out = {}
    for key, cached in (
        ("gguf_no_cache", False),
        ("gguf_first_load_and_save", True),
        ("derived_cache", True),
    ):
        res = subprocess.run(
            [sys.executable, "-c", code % (str(REPO), name, cached)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            out[key] = {"error": res.stderr[-2000:]}
            continue
        out[key] = json.loads(res.stdout.strip().splitlines()[-1])
        print(key, out[key], flush=True)
    return out


def run_config(
    name: str, cfg: dict, batches: list[int], max_new_tokens: int, model
) -> dict:
    from models.llm import TransformersGenerator

    gen = TransformersGenerator(
        model, max_new_tokens=max_new_tokens, batch_size=max(batches), **cfg
    )
    warm, _ = bench_prompts(gen.tokenizer, 1)
    gen.generate(warm)  # warm-up (first call allocates / picks kernels)
    result = {"config": cfg, "load_s": round(gen.load_seconds, 2), "runs": []}
    for bs in batches:
        gen.batch_size = bs
        chats, lengths = bench_prompts(gen.tokenizer, bs)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        out = gen.generate(chats)
        wall = time.perf_counter() - t0
        n_gen = sum(r.n_generated_tokens for r in out)
        run = {
            "batch": bs,
            "n_prompts": len(chats),
            "prompt_tokens_mean": round(sum(lengths) / len(lengths)),
            "generated_tokens": n_gen,
            "wall_s": round(wall, 2),
            "tokens_per_s": round(n_gen / wall, 1),
            "finish_length": sum(r.finish_reason == "length" for r in out),
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        }
        print(name, run, flush=True)
        result["runs"].append(run)
    result["sample_text"] = out[0].text
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["fp32-t2", "fp32-t1", "bf16-t2", "bf16-t1"],
        choices=sorted(CONFIGS),
    )
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name of the llm to measure")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--skip-load", action="store_true", help="skip the load-time measurements"
    )
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "generation.json"
    )
    args = ap.parse_args(argv)

    cache = Path(
        tempfile.mkdtemp(prefix="egbench-")
    )  # fresh: the first load really dequantises
    os.environ["EMOGUIDE_CACHE"] = str(cache)
    report: dict = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "max_new_tokens": args.max_new_tokens,
    }
    if not args.skip_load:
        report["load"] = load_times(cache, args.model)
    from models.registry import resolve

    model = resolve("llm", args.model)
    report["model"] = model.record()
    report["results"] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # keep earlier configurations that this run does not repeat
        try:
            old = json.loads(args.out.read_text())
            report["results"] = dict(old.get("results", {}))
            if "load" not in report and old.get("load"):
                report["load"] = old["load"]
        except (ValueError, OSError):
            pass
    for name in (
        args.configs
    ):  # written after each configuration, so an interrupted run keeps its results
        result = run_config(
            name, CONFIGS[name], args.batches, args.max_new_tokens, model
        )
        result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        report["results"][name] = result
        args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
