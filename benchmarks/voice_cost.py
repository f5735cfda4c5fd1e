"""What the Whisper-encoder voice feature adds to the ASR stage's time.

    python benchmarks/voice_cost.py [--out benchmarks/results/voice_cost.json] [--repeats 3]

On a one-minute session of 15 RAVDESS clips (actor 13, 1.5 s apart: ``benchmarks/pipeline_material.py``)
the ASR stage's work is timed as the stage does it (transcribe each speech group, cut utterances), once
without and once with the encoder output kept and pooled per utterance (span and per-word moments).
Runs alternate; the medians are reported, with the added time as a share of the ASR time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from pipeline_material import build_material  # noqa: E402

from emoguide.dataio.media import load_audio  # noqa: E402
from emoguide.session.utterances import split_segment  # noqa: E402
from models.asr import Transcriber  # noqa: E402
from models.registry import resolve  # noqa: E402
from models.segmentation import SpeechSegmenter  # noqa: E402
from models.whisper_voice import pool_encoder_frames, word_moments  # noqa: E402
from ray_jobs.config import RunConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def asr_stage_work(transcriber: Transcriber, audio, regions, config: RunConfig, pool: bool) -> float:
    """Seconds for one pass of the ASR stage's work on ``audio``."""
    cut = config.utterances
    started = time.perf_counter()
    groups = transcriber.transcribe(audio, speech=regions, max_pause_s=cut.max_pause_s)
    for utterance in (u for g in groups for u in split_segment(g, cut.max_pause_s, cut.max_duration_s)):
        if pool and utterance.encoder is not None:
            offset = utterance.encoder_start
            span = (utterance.start - offset, utterance.end - offset)
            pool_encoder_frames(utterance.encoder, [span])
            word_moments(utterance.encoder, [w.start - offset for w in utterance.words], span[1])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "voice_cost.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = RunConfig()
    with tempfile.TemporaryDirectory() as work:
        session = next(s for s in build_material(DATA, [13], Path(work))["sessions"] if s["kind"] == "audio")
        audio = load_audio(session["path"])
    regions = SpeechSegmenter(resolve("speech_segmentation")).speech_regions(audio)
    c = config.asr
    plain = Transcriber(resolve("asr"), compute_type=c.compute_type, cpu_threads=c.cpu_threads)
    keeping = Transcriber(resolve("asr"), compute_type=c.compute_type, cpu_threads=c.cpu_threads, keep_encoder=True)
    times: dict[str, list[float]] = {"asr": [], "asr_with_voice_feature": []}
    asr_stage_work(plain, audio, regions, config, pool=False)  # warm-up
    for _ in range(args.repeats):
        times["asr"].append(asr_stage_work(plain, audio, regions, config, pool=False))
        times["asr_with_voice_feature"].append(asr_stage_work(keeping, audio, regions, config, pool=True))
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "measured": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "media_s": len(audio) / 16_000,
        "runs_s": times,
        "median_s": medians,
        "added_share_of_asr": (medians["asr_with_voice_feature"] - medians["asr"]) / medians["asr"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
