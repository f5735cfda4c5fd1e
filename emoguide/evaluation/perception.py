"""Measured accuracy of the perception models on data given on the command line (no Ray here).

``emoguide eval perception`` reports the voice model's speaker-independent accuracy on RAVDESS-format
files and the face pipeline's detection rate and emotion distribution on videos (GRID speakers are
neutral, so neutral should dominate). The numbers in the README come from this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emoguide.dataio.media import iter_chunks
from emoguide.evaluation.ravdess import evaluate_ravdess, ravdess_label
from models.emotion import LABELS
from models.face import FaceAnalyzer
from models.registry import resolve
from models.voice import VoiceEmotion


def parse_actors(spec: str) -> set[int]:
    """'13-18' or '1,3,5-7' → {13, ..., 18}."""
    actors: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        actors.update(range(int(lo), int(hi or lo) + 1))
    return actors


EGEMAPS_VOICE_MODEL = "egemaps-ravdess-logreg"


def ravdess_files(folder: Path, actors: set[int] | None = None) -> list[Path]:
    """RAVDESS audio files under ``folder`` (any depth), optionally only the given actors."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".wav", ".flac"})
    return [p for p in files if actors is None or ravdess_label(p)[1] in actors]


def evaluate_voice(files: Sequence[Path], model: str = EGEMAPS_VOICE_MODEL) -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion matrix of an eGeMAPS voice model on whole clips, with and without
    per-speaker normalisation. (The Whisper-encoder model's clip figures come from
    ``scripts/train_voice.py --features whisper``; both run end to end in ``eval pipeline``.)"""
    voice = VoiceEmotion(resolve("voice_emotion", model))
    return {
        "model": voice.metadata | {"name": model},
        "per_clip": evaluate_ravdess(voice, files, per_speaker=False),
        "per_speaker": evaluate_ravdess(voice, files, per_speaker=True),
    }


def evaluate_face(videos: Sequence[Path], fps: float = 2.0) -> dict[str, Any]:
    """Detection rate, mean probabilities and top-class shares over frames sampled as the pipeline does."""
    analyzer = FaceAnalyzer(resolve("face_detector"), resolve("face_emotion"))
    try:
        results = [
            analyzer.analyze(c.frames).largest() for v in videos for c in iter_chunks(v, fps=fps) if len(c.frames)
        ]
    finally:
        analyzer.close()
    found = np.concatenate([r.found for r in results])
    probs = np.concatenate([r.probs for r in results])[found]
    top = np.bincount(probs.argmax(axis=1), minlength=len(LABELS)) / max(len(probs), 1)
    return {
        "videos": len(videos),
        "frames": int(found.size),
        "detection_rate": float(found.mean()) if found.size else 0.0,
        "mean_probs": dict(zip(LABELS, (float(p) for p in probs.mean(axis=0)), strict=True)),
        "top_class_share": dict(zip(LABELS, (float(t) for t in top), strict=True)),
        "mean_valence": float(np.nanmean(np.concatenate([r.valence for r in results]))),
        "mean_arousal": float(np.nanmean(np.concatenate([r.arousal for r in results]))),
    }


def format_perception(report: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`evaluate_voice` / :func:`evaluate_face` results."""
    lines = []
    if "voice" in report:
        v = report["voice"]
        for mode in ("per_clip", "per_speaker"):
            r = v[mode]
            lines.append(
                f"voice {mode:<11}: accuracy {r['accuracy']:.3f}  macro-F1 {r['macro_f1']:.3f}  "
                f"(n={r['n_scored']}/{r['n']})"
            )
        lines.append("confusion (rows true, columns predicted; " + " ".join(name[:4] for name in LABELS) + "):")
        lines += [
            "  " + f"{label:<10}" + " ".join(f"{n:4d}" for n in row)
            for label, row in zip(LABELS, v["per_speaker"]["confusion"], strict=True)
        ]
    if "face" in report:
        f = report["face"]
        lines.append(f"face: detected in {f['detection_rate']:.4f} of {f['frames']} frames from {f['videos']} videos")
        lines.append("face mean probs: " + ", ".join(f"{k} {p:.3f}" for k, p in f["mean_probs"].items()))
        lines.append("face top class : " + ", ".join(f"{k} {p:.3f}" for k, p in f["top_class_share"].items()))
    return "\n".join(lines)
