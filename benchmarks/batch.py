"""Batch throughput: many sessions through one ``emoguide run``, with 1, 2 and 4 sessions in flight.

    python benchmarks/batch.py [--sessions 40] [--session-s 90] [--in-flight 1,2,4] [--work DIR]
                               [--out benchmarks/results/batch.json] [--label TEXT]

Builds ``--sessions`` two-speaker sessions of about ``--session-s`` seconds from the shared GRID clips
(``benchmarks/synth.py``; each session a different pair of speakers taking turns), plus one reference
session as long as all of them together. Then, on this machine, through ``emoguide run --no-generate``
exactly as a user runs it (Ray start included):

* the batch once per "sessions in flight" level: ``decode.sessions_in_flight`` (how many sessions are
  decoded, and so have chunks in the pipeline, at once; the stage actor pools stay at their config);
* the reference session once: the same media in one session.

Reported per level: ``aggregate_x_real_time`` = media seconds of the batch / wall seconds of the run,
and ``per_session_overhead_s`` = (wall of the batch − wall of the reference) / (sessions − 1): the cost
of each session beyond the first that is not explained by its media (per-session set-up, reducer,
part writes, tails where the pipeline drains), since both runs process the same media seconds, start
Ray once and resolve the models once. The top-level keys are those of the level with the highest
aggregate. Generation is left out (``--no-generate``): its cost is per client turn, measured by
``benchmarks/bench_generation.py``. Timing on a machine shared with other work is not trustworthy:
``--label`` says under what conditions the numbers were taken, and the report records the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import machine  # noqa: E402
from synth import build_session  # noqa: E402

from emoguide.dataio.media import probe  # noqa: E402

GRID = ROOT.parent / "shared" / "data" / "grid"
CLIP_S = 3.4  # a GRID clip (3 s) and the gap after it


def _clips() -> list[Path]:
    clips = sorted(GRID.glob("*.mpg"))
    if len(clips) < 2:
        raise SystemExit(f"need the GRID clips in {GRID} (see ../shared/data/README.md)")
    return clips


def _turns(pair: tuple[Path, Path], seconds: float) -> list[tuple[str, Path]]:
    """The two speakers taking turns, clip by clip, for about ``seconds``."""
    return [("AB"[i % 2], pair[i % 2]) for i in range(max(2, round(seconds / CLIP_S)))]


def build_batch(n: int, session_s: float, folder: Path) -> tuple[list[Path], Path]:
    """``n`` sessions in ``folder/sessions`` and the reference session of all their turns in a row.

    Reused when already built (building 40 sessions takes minutes)."""
    clips = _clips()
    pairs = [(clips[i % len(clips)], clips[(i + 1 + i // len(clips)) % len(clips)]) for i in range(n)]
    sessions_dir = folder / "sessions"
    sessions_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pair in enumerate(pairs):
        path = sessions_dir / f"s{i:03d}.mp4"
        if not path.exists():
            build_session(_turns(pair, session_s), path)
        paths.append(path)
    reference = folder / f"reference_{n}x{session_s:g}s.mp4"
    if not reference.exists():
        build_session([t for pair in pairs for t in _turns(pair, session_s)], reference)
    return paths, reference


def emoguide_run(inputs: Path, out: Path, config: Path) -> dict:
    """One ``emoguide run`` in its own process and Ray temp folder; its wall time and summary lines."""
    exe = Path(sys.executable).parent / "emoguide"
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="egbb-", dir="/tmp"), "HF_HUB_OFFLINE": "1"}
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run([str(exe), "run", str(inputs), "--out", str(out), "--config", str(config), "--no-generate",
                           "-q"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"emoguide run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("sessions:", "utterances:"))]
    return {"wall_s": round(wall, 2), "summary": summary, "load_average_before": load_before,
            "load_average_after": os.getloadavg()}


def _config(folder: Path, in_flight: int | None) -> Path:
    path = folder / f"in_flight_{in_flight or 'default'}.yaml"
    path.write_text(json.dumps({"decode": {"sessions_in_flight": in_flight}}))
    return path


def measure(n: int, session_s: float, levels: list[int], work: Path) -> dict:
    """The report: per in-flight level, aggregate real-time factor and per-session overhead."""
    paths, reference = build_batch(n, session_s, work)
    media_s = sum(probe(p).duration_s or 0.0 for p in paths)
    runs = work / f"runs-{time.strftime('%H%M%S')}"
    host = machine()
    ref = emoguide_run(reference, runs / "reference", _config(work, None))
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": host, "sessions": n,
        "session_media_s": round(media_s / n, 2), "batch_media_s": round(media_s, 2),
        "reference": {**ref, "media_s": round(probe(reference).duration_s or 0.0, 2),
                      "x_real_time": round((probe(reference).duration_s or 0.0) / ref["wall_s"], 2)},
        "levels": {},
    }
    for k in levels:
        r = emoguide_run(paths[0].parent, runs / f"in_flight_{k}", _config(work, k))
        report["levels"][str(k)] = {
            **r, "aggregate_x_real_time": round(media_s / r["wall_s"], 2),
            "per_session_overhead_s": round((r["wall_s"] - ref["wall_s"]) / max(1, n - 1), 2),
        }
    best = max(report["levels"], key=lambda k: report["levels"][k]["aggregate_x_real_time"])
    report["best_in_flight"] = int(best)
    report["aggregate_x_real_time"] = report["levels"][best]["aggregate_x_real_time"]
    report["per_session_overhead_s"] = report["levels"][best]["per_session_overhead_s"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--session-s", type=float, default=90.0)
    parser.add_argument("--in-flight", default="1,2,4", help="comma-separated sessions-in-flight levels")
    parser.add_argument("--work", type=Path, help="folder for the built sessions (reused) and the runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch.json")
    parser.add_argument("--label", default="", help="conditions of the measurement, e.g. 'quiet machine'")
    args = parser.parse_args()
    if args.sessions < 2:
        raise SystemExit("--sessions must be at least 2 (the overhead is per session after the first)")
    work = args.work or Path(tempfile.mkdtemp(prefix="emoguide-batch-"))
    report = {"label": args.label, **measure(args.sessions, args.session_s,
                                             [int(k) for k in args.in_flight.split(",")], work)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("label", "sessions", "aggregate_x_real_time", "per_session_overhead_s",
                                             "best_in_flight")}, indent=2))
    for k, level in report["levels"].items():
        print(f"in flight {k}: {level['wall_s']} s, {level['aggregate_x_real_time']}x real time, "
              f"{level['per_session_overhead_s']} s overhead per session")
    print(f"reference (one session, same media): {report['reference']['wall_s']} s")


if __name__ == "__main__":
    main()
