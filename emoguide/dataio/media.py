"""Decode a session's media with PyAV into bounded chunks of 16 kHz mono audio and sampled frames.

Pure Python (no Ray): the pipeline's decode stage calls :func:`iter_chunks`. Memory stays bounded
by the chunk length, not the video length: the container is demuxed once, audio and video are
decoded as their packets arrive, and a chunk is handed on as soon as enough audio is buffered.
Chunks are cut at the quietest moment near the target length so that ASR rarely splits a word.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from models.audio import SAMPLE_RATE

_QUIET_WINDOW = 480  # 30 ms at 16 kHz: the resolution at which a quiet cut point is searched


class MediaError(ValueError):
    """A file that cannot be used as a session; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class MediaInfo:
    """What a container holds, read from its headers without decoding."""

    duration_s: float | None
    has_audio: bool
    has_video: bool
    width: int | None
    height: int | None
    fps: float | None


@dataclass
class MediaChunk:
    """A contiguous piece of a session: audio samples and the frames sampled inside it.

    Times are seconds from the start of the session. ``frame_times[i]`` is the presentation
    time of ``frames[i]``.
    """

    index: int
    start_s: float
    end_s: float
    audio: np.ndarray  # float32, mono, SAMPLE_RATE
    frames: np.ndarray  # uint8, N × H × W × 3 (RGB); N may be 0
    frame_times: np.ndarray  # float64, N
    is_last: bool = False
    info: MediaInfo | None = field(default=None, repr=False)


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Read stream headers; raise :class:`MediaError` with a clear reason for unusable files."""
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "file does not exist")
    if p.is_dir():
        raise MediaError(p, "is a folder, not a media file")
    if p.stat().st_size == 0:
        raise MediaError(p, "file is empty (0 bytes)")
    try:
        with av.open(str(p)) as container:
            return _info(container)
    except av.FFmpegError as exc:
        raise MediaError(p, f"not a readable media container ({exc.__class__.__name__}: {exc})") from exc


def _info(container: av.container.InputContainer) -> MediaInfo:
    video = container.streams.video[0] if container.streams.video else None
    duration = container.duration / av.time_base if container.duration else None
    fps = float(video.average_rate) if video is not None and video.average_rate else None
    return MediaInfo(
        duration_s=duration,
        has_audio=bool(container.streams.audio),
        has_video=video is not None,
        width=video.codec_context.width if video is not None else None,
        height=video.codec_context.height if video is not None else None,
        fps=fps,
    )


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    # even sizes keep swscale happy for every pixel format
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _quiet_cut(audio: np.ndarray, target: int, search: int) -> int:
    """Index near ``target`` (within ``search`` samples before it) where the audio is quietest."""
    lo = max(_QUIET_WINDOW, target - search)
    if target - lo < _QUIET_WINDOW:
        return target
    region = audio[lo:target]
    n = len(region) // _QUIET_WINDOW
    energy = (region[: n * _QUIET_WINDOW].reshape(n, _QUIET_WINDOW) ** 2).mean(axis=1)
    return lo + int(np.argmin(energy)) * _QUIET_WINDOW + _QUIET_WINDOW // 2


def iter_chunks(
    path: str | os.PathLike[str],
    fps: float = 2.0,
    chunk_s: float = 30.0,
    max_side: int = 640,
    quiet_search_s: float = 3.0,
) -> Iterator[MediaChunk]:
    """Yield the session as consecutive chunks of about ``chunk_s`` seconds.

    Raises :class:`MediaError` (before the first chunk, or mid-stream for a truncated file) with the
    file and the reason. A file without an audio stream is refused: there is nothing to transcribe.
    Audio-only files are valid and give chunks without frames.
    """
    if fps <= 0 or chunk_s <= 0:
        raise ValueError("fps and chunk_s must be positive")
    info = probe(path)
    if not info.has_audio:
        raise MediaError(path, "no audio stream (a session needs speech)")
    chunk_len = int(chunk_s * SAMPLE_RATE)
    search = int(quiet_search_s * SAMPLE_RATE)

    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise MediaError(path, f"not a readable media container ({exc})") from exc
    with container:
        origin = container.start_time / av.time_base if container.start_time is not None else 0.0
        audio_stream = container.streams.audio[0]
        video_stream = container.streams.video[0] if info.has_video else None
        streams = [s for s in (audio_stream, video_stream) if s is not None]
        for s in streams:
            s.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        size = _target_size(info.width, info.height, max_side) if video_stream is not None else None

        pieces: list[np.ndarray] = []  # audio not yet handed on
        buffered = 0
        chunk_start = 0  # sample index of the first buffered sample
        frames: list[np.ndarray] = []
        times: list[float] = []
        next_frame_t = 0.0
        index = 0
        pending: MediaChunk | None = None  # held back one step so the last chunk can be flagged

        def take(n: int) -> MediaChunk:
            nonlocal pieces, buffered, chunk_start, frames, times, index
            audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
            head, rest = audio[:n], audio[n:]
            pieces, buffered = [rest], len(rest)
            end_s = (chunk_start + n) / SAMPLE_RATE
            keep = [i for i, t in enumerate(times) if t >= end_s]
            take_idx = [i for i, t in enumerate(times) if t < end_s]
            chunk = MediaChunk(
                index=index,
                start_s=chunk_start / SAMPLE_RATE,
                end_s=end_s,
                audio=np.ascontiguousarray(head, dtype=np.float32),
                frames=_stack([frames[i] for i in take_idx], size),
                frame_times=np.array([times[i] for i in take_idx], dtype=np.float64),
                info=info,
            )
            frames, times = [frames[i] for i in keep], [times[i] for i in keep]
            chunk_start += n
            index += 1
            return chunk

        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if packet.stream.type == "audio":
                        for out in resampler.resample(frame):
                            pieces.append(out.to_ndarray().reshape(-1))
                            buffered += out.samples
                    elif frame.time is not None:
                        t = frame.time - origin
                        if t + 1e-6 >= next_frame_t:
                            next_frame_t = max(next_frame_t + 1.0 / fps, t)
                            img = frame.to_ndarray(width=size[0], height=size[1], format="rgb24")
                            # phones record sideways and store a display rotation: show it upright, as
                            # players do, so the face detector sees upright faces
                            quarter_turns = round((frame.rotation or 0) / 90) % 4
                            if quarter_turns:
                                img = np.ascontiguousarray(np.rot90(img, quarter_turns))
                            frames.append(img)
                            times.append(max(t, 0.0))
                while buffered >= chunk_len + search:
                    audio = np.concatenate(pieces)
                    pieces = [audio]
                    cut = _quiet_cut(audio, chunk_len, search)
                    if pending is not None:
                        yield pending
                    pending = take(cut)
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
                buffered += out.samples
        except av.FFmpegError as exc:
            at = chunk_start / SAMPLE_RATE + buffered / SAMPLE_RATE
            raise MediaError(path, f"decoding failed at {at:.1f} s ({exc})") from exc

        if buffered == 0 and pending is None:
            raise MediaError(path, "audio stream holds no decodable samples")
        if buffered == 0:
            last = pending
        else:
            if pending is not None:
                yield pending
            last = take(buffered)
        last.is_last = True
        yield last


def _stack(frames: list[np.ndarray], size: tuple[int, int] | None) -> np.ndarray:
    if frames:
        return np.stack(frames)
    h, w = (size[1], size[0]) if size else (0, 0)
    return np.zeros((0, h, w, 3), dtype=np.uint8)


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Whole-file 16 kHz mono audio: for short clips in evaluation and tests, not for sessions."""
    return np.concatenate([c.audio for c in iter_chunks(path, chunk_s=3600.0)])
