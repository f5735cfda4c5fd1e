"""Benchmark runner: per-stage and whole-pipeline speed, generation tokens/s and peak memory.

    python benchmarks/run.py [--input FILE] [--minutes 10] [--out benchmarks/results] [--skip-scaling]

Without ``--input`` it builds a two-speaker session of ``--minutes`` from real GRID clips
(../shared/data/grid). It then measures, on this machine:

* each stage alone on that session, in one process, with the adapters the pipeline uses (decode,
  face, ASR, speaker embeddings, voice features): real-time factor = processing seconds per media second;
* the whole perception pipeline through ``emoguide run --no-generate`` (Ray start included), with the
  peak resident memory of the driver and every Ray process it started;
* generation tokens/s of the CPU twin on the run's real prompts (single prompt and batched);
* a scaling run with 1 and 2 actors per stage.

Results go to ``OUT/latest.json`` and ``OUT/latest.md`` (a table). Nothing here asserts a speed:
targets live in the README and are compared by reading the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from synth import build_session  # noqa: E402

from emoguide.dataio.media import iter_chunks, probe  # noqa: E402
from models.asr import Transcriber  # noqa: E402
from models.audio import SAMPLE_RATE  # noqa: E402
from models.face import FaceAnalyzer  # noqa: E402
from models.registry import resolve  # noqa: E402
from models.segmentation import SpeechSegmenter  # noqa: E402
from models.speakers.embedders import SpeakerEmbedder  # noqa: E402
from models.speakers.windows import cut_windows, region_windows  # noqa: E402
from models.voice import EgemapsExtractor  # noqa: E402
from ray_jobs.config import load_config  # noqa: E402


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(), "gpu": None,
            "load_average_at_start": os.getloadavg()}


def default_session(minutes: float, folder: Path) -> Path:
    """A two-speaker session of about ``minutes`` from two GRID speakers taking turns."""
    grid = ROOT.parent / "shared" / "data" / "grid"
    if not grid.exists():
        raise SystemExit(f"no --input given and {grid} is missing")
    pair = [("A", grid / "bbaf2n.mpg"), ("B", grid / "id2_vcd_swwp2s.mpg")]
    turns = max(1, int(minutes * 60 / 3.4 / 2))
    path = folder / f"session_{minutes:g}min.mp4"
    build_session(pair * turns, path, gap_s=0.4)
    return path


def time_stages(path: Path, threads: int) -> dict:
    """Each stage alone on the whole session, with the pipeline's default models and settings."""
    cfg = load_config()
    t: dict[str, float] = {}
    started = time.perf_counter()
    chunks = list(iter_chunks(path, fps=cfg.decode.fps, chunk_s=cfg.decode.chunk_s, max_side=cfg.decode.max_side))
    t["decode"] = time.perf_counter() - started

    face = FaceAnalyzer(resolve("face_detector"), resolve("face_emotion"), resolve("face_landmarks"))
    started = time.perf_counter()
    for c in chunks:
        face.analyze(c.frames)
    t["face"] = time.perf_counter() - started
    face.close()

    segmenter = SpeechSegmenter(resolve("speech_segmentation"))
    embedder = SpeakerEmbedder(resolve("speaker_embedding"))
    started = time.perf_counter()
    speech = []
    for c in chunks:
        speech.append(segmenter.speech_regions(c.audio, offset_s=c.start_s))
        embedder.embed(cut_windows(c.audio, region_windows(speech[-1]), offset_s=c.start_s))
    t["speakers"] = time.perf_counter() - started

    asr = Transcriber(resolve("asr"), compute_type=cfg.asr.compute_type, cpu_threads=threads)
    started = time.perf_counter()
    segments = [asr.transcribe(c.audio, offset_s=c.start_s, speech=regions, max_pause_s=cfg.utterances.max_pause_s)
                for c, regions in zip(chunks, speech)]
    t["asr"] = time.perf_counter() - started

    extractor = EgemapsExtractor()
    started = time.perf_counter()
    for c, segs in zip(chunks, segments):
        extractor.features([c.audio[int((s.start - c.start_s) * SAMPLE_RATE):int((s.end - c.start_s) * SAMPLE_RATE)]
                            for s in segs])
    t["voice"] = time.perf_counter() - started
    return t


def _tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(RSS sum, PSS sum) over a process tree. RSS counts shared pages (torch's libraries, Ray's object
    store) once per process that maps them; PSS splits them between those processes, so its sum is the
    memory the tree really holds."""
    rss = pss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        except psutil.Error:
            continue
    return rss, pss


def run_pipeline(path: Path, out: Path, extra: list[str]) -> dict:
    """``emoguide run`` as a user runs it; wall time and the peak RSS of its whole process tree."""
    exe = Path(sys.executable).parent / "emoguide"
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="egb-", dir="/tmp")}
    started = time.perf_counter()
    proc = subprocess.Popen([str(exe), "run", str(path), "--out", str(out), "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak_rss = peak_pss = 0
    root = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_rss, peak_pss
        while not done.is_set():
            rss, pss = _tree_memory(root)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"emoguide run failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = {"wall_s": wall, "peak_rss_mib": peak_rss / 2**20, "peak_pss_mib": peak_pss / 2**20}
    for line in stdout.splitlines():
        if line.startswith("interventions:"):
            result["summary"] = line
            result["generation_tokens_per_s"] = float(line.rsplit("(", 1)[1].split()[0])
    return result


def scaling_config(workers: int, folder: Path) -> Path:
    """A config with ``workers`` actors per perception stage, sized to fit this machine's CPUs.

    Every actor pool starts at its minimum size, so the CPUs all stages ask for together (plus decode)
    must fit: otherwise Ray Data waits forever for an actor it cannot place.
    """
    cores = os.cpu_count() or 2
    budget = cores - 0.25  # decode tasks keep their share
    asr_share, other_share = 0.4 * budget / workers, 0.2 * budget / workers
    path = folder / f"workers{workers}.yaml"
    path.write_text(json.dumps({
        "asr": {"cpu_threads": max(1, cores // workers),
                "resources": {"num_cpus": round(asr_share, 3), "min_actors": workers, "max_actors": workers}},
        **{s: {"resources": {"num_cpus": round(other_share, 3), "min_actors": workers, "max_actors": workers}}
           for s in ("face", "speakers", "voice")},
    }))
    return path


def time_generation(run_dir: Path, n_prompts: int = 16) -> dict:
    """The default CPU engine's tokens/s on the run's real prompts: two prompts, then all of them in one call."""
    import pyarrow.parquet as pq

    from emoguide.prompts.build import build_prompts
    from ray_jobs.config import load_config
    from ray_jobs.generate import cpu_generator

    utts = pq.read_table(run_dir / "utterances.parquet").to_pylist()
    prompts = [json.loads(p["prompt"]) for p in build_prompts(utts)][:n_prompts]
    if not prompts:
        return {"note": "no client turn answered by a therapist: no prompts"}
    settings = load_config(None).generation
    settings.max_new_tokens = 64
    gen = cpu_generator(settings, resolve("llm", settings.model))
    gen.generate(prompts[:1])  # warm-up
    started = time.perf_counter()
    single = gen.generate(prompts[:2])
    single_s = time.perf_counter() - started
    started = time.perf_counter()
    batched = gen.generate(prompts)
    batched_s = time.perf_counter() - started
    return {
        "single_tokens_per_s": sum(r.n_generated_tokens for r in single) / single_s,
        "batched_tokens_per_s": sum(r.n_generated_tokens for r in batched) / batched_s,
        "engine": settings.engine, "model": settings.model, "batch_size": settings.batch_size,
        "prompts": len(prompts), "max_new_tokens": 64,
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    rows = [f"Measured {report['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, no GPU; "
            f"input {report['media_s']:.0f} s of media ({report['input']}).", "",
            "| measure | value |", "|---|---|"]
    for stage, rtf in report["stage_real_time_factor"].items():
        rows.append(f"| {stage} alone: real-time factor (s per media s) | {rtf:.4f} ({1 / rtf:.1f}x real time) |")
    rows.append(f"| perception pipeline, Ray start included: x real time | {report['perception_x_real_time']:.2f} |")
    rows.append(f"| peak RSS summed over the driver and all Ray processes | {report['peak_rss_mib']:.0f} MiB |")
    rows.append(f"| peak PSS summed (shared pages counted once) | {report['peak_pss_mib']:.0f} MiB |")
    g = report.get("generation", {})
    if "batched_tokens_per_s" in g:
        rows.append(f"| generation, CPU twin, batch {g['batch_size']}: tokens/s | {g['batched_tokens_per_s']:.1f} |")
        rows.append(f"| generation, CPU twin, one prompt: tokens/s | {g['single_tokens_per_s']:.1f} |")
    for workers, r in report.get("scaling", {}).items():
        rows.append(f"| scaling: {workers} actor(s) per stage, x real time | {r['x_real_time']:.2f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="emoguide-bench-"))
    path = args.input or default_session(args.minutes, work)
    media_s = probe(path).duration_s or 0.0
    # GRID sentences carry no therapist/client cues: name the built session's second voice the therapist,
    # so that generation is measured on the session's real prompts
    roles = [] if args.input else ["--therapist-speaker", "S1"]

    report: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "input": path.name, "media_s": media_s}
    stages = time_stages(path, threads=os.cpu_count() or 2)
    report["stage_seconds"] = stages
    report["stage_real_time_factor"] = {k: v / media_s for k, v in stages.items()}
    run = run_pipeline(path, work / "run", ["--no-generate", *roles])
    report["perception_wall_s"] = run["wall_s"]
    report["perception_x_real_time"] = media_s / run["wall_s"]
    report["peak_rss_mib"] = run["peak_rss_mib"]
    report["peak_pss_mib"] = run["peak_pss_mib"]
    report["generation"] = time_generation(work / "run")
    report["generation_tokens_per_s"] = report["generation"].get("batched_tokens_per_s")
    if not args.skip_scaling:
        report["scaling"] = {}
        for workers in (1, 2):
            r = run_pipeline(path, work / f"scale{workers}", ["--no-generate", "--config", str(scaling_config(workers, work))])
            report["scaling"][workers] = {"wall_s": r["wall_s"], "x_real_time": media_s / r["wall_s"],
                                          "peak_rss_mib": r["peak_rss_mib"], "peak_pss_mib": r["peak_pss_mib"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2))
    (args.out / "latest.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
