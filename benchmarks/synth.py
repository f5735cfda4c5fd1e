"""Build longer, multi-speaker sessions from real short clips (GRID videos, RAVDESS audio).

The shared data has 3-second clips; benchmarks need minutes of media and the speaker tests need
conversations with known turns. A session is the clips played one after another with short gaps
(silence and the last frame held), written as MPEG-4 video with AAC audio, or as FLAC for audio only.
The returned turns are the ground truth for diarization error rate. Encoding is streamed clip by clip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ray_jobs.media import SAMPLE_RATE, iter_chunks

FPS = 25


@dataclass(frozen=True)
class Turn:
    speaker: str
    start_s: float
    end_s: float
    source: str


def _clip(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All frames (at the clip's own rate, resampled to FPS) and the 16 kHz audio of a short clip."""
    chunks = list(iter_chunks(path, fps=FPS, chunk_s=3600.0))
    audio = np.concatenate([c.audio for c in chunks])
    frames = np.concatenate([c.frames for c in chunks]) if chunks[0].frames.size else np.zeros((0, 0, 0, 3), np.uint8)
    return frames, audio


def build_session(
    clips: Sequence[tuple[str, str | os.PathLike[str]]],
    out: str | os.PathLike[str],
    gap_s: float = 0.4,
    size: tuple[int, int] | None = None,
) -> list[Turn]:
    """Write the (speaker, clip) sequence as one session; return the speaker turns.

    Video clips give an .mp4 session; with ``out`` ending in .flac/.wav only the audio is written.
    ``size`` (width, height) resizes frames, so clips of different sizes can be joined.
    """
    out = Path(out)
    audio_only = out.suffix.lower() in {".flac", ".wav"}
    container = av.open(str(out), mode="w")
    a_stream = container.add_stream("flac" if out.suffix.lower() == ".flac" else ("pcm_s16le" if audio_only else "aac"),
                                    rate=SAMPLE_RATE, layout="mono")
    v_stream = None
    turns: list[Turn] = []
    t = 0.0
    n_samples = 0
    n_frames = 0
    last_frame: np.ndarray | None = None
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)

    def write_audio(samples: np.ndarray) -> None:
        nonlocal n_samples
        for i in range(0, len(samples), 4096):
            piece = samples[i : i + 4096]
            frame = av.AudioFrame.from_ndarray(piece[None, :].astype(np.float32), format="flt", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = n_samples
            frame.time_base = Fraction(1, SAMPLE_RATE)
            n_samples += len(piece)
            for packet in a_stream.encode(frame):
                container.mux(packet)

    def write_frames(frames: np.ndarray, count: int | None = None) -> None:
        nonlocal n_frames, last_frame
        for img in frames if count is None else [last_frame] * count:
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            if size is not None:
                vf = vf.reformat(width=size[0], height=size[1])
            vf.pts = n_frames
            n_frames += 1
            for packet in v_stream.encode(vf):
                container.mux(packet)
            last_frame = img

    try:
        for speaker, path in clips:
            frames, audio = _clip(Path(path))
            if not audio_only and v_stream is None:
                h, w = frames.shape[1:3] if size is None else (size[1], size[0])
                v_stream = container.add_stream("mpeg4", rate=FPS)
                v_stream.width, v_stream.height, v_stream.pix_fmt = w, h, "yuv420p"
                v_stream.bit_rate = 800_000
            turns.append(Turn(speaker, t, t + len(audio) / SAMPLE_RATE, Path(path).name))
            write_audio(audio)
            write_audio(gap)
            if v_stream is not None:
                target = round((n_samples / SAMPLE_RATE) * FPS)
                write_frames(frames[: max(0, target - n_frames)])
                if target > n_frames and last_frame is not None:
                    write_frames(frames, count=target - n_frames)
            t = n_samples / SAMPLE_RATE
        for stream in (a_stream, v_stream):
            if stream is not None:
                for packet in stream.encode(None):
                    container.mux(packet)
    finally:
        container.close()
    return turns
