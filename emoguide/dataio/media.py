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

from models.audio import SAMPLE_RATE, to_samples

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


class _ChunkBuffer:
    """Decoded audio and sampled frames not yet handed on, cut into :class:`MediaChunk` s in order."""

    def __init__(self, info: MediaInfo, size: tuple[int, int] | None) -> None:
        self.info, self.size = info, size
        self.pieces: list[np.ndarray] = []
        self.buffered = 0  # samples in ``pieces``
        self.start = 0  # session sample index of the first buffered sample
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.index = 0

    @property
    def position_s(self) -> float:
        """Session time of the end of the buffered audio (how far decoding got)."""
        return (self.start + self.buffered) / SAMPLE_RATE

    def add_audio(self, samples: np.ndarray) -> None:
        self.pieces.append(samples)
        self.buffered += len(samples)

    def add_frame(self, image: np.ndarray, t: float) -> None:
        self.frames.append(image)
        self.times.append(t)

    def quiet_cut(self, target: int, search: int) -> int:
        """Where to end the next chunk: the quietest moment up to ``search`` samples before ``target``."""
        audio = np.concatenate(self.pieces)
        self.pieces = [audio]
        return _quiet_cut(audio, target, search)

    def take(self, n: int) -> MediaChunk:
        """The next chunk: the first ``n`` buffered samples and the frames shown before they end."""
        audio = np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)
        head, rest = audio[:n], audio[n:]
        self.pieces, self.buffered = [rest], len(rest)
        end_s = (self.start + n) / SAMPLE_RATE
        inside = [i for i, t in enumerate(self.times) if t < end_s]
        chunk = MediaChunk(
            index=self.index,
            start_s=self.start / SAMPLE_RATE,
            end_s=end_s,
            audio=np.ascontiguousarray(head, dtype=np.float32),
            frames=_stack([self.frames[i] for i in inside], self.size),
            frame_times=np.array([self.times[i] for i in inside], dtype=np.float64),
            info=self.info,
        )
        later = [i for i, t in enumerate(self.times) if t >= end_s]
        self.frames, self.times = [self.frames[i] for i in later], [self.times[i] for i in later]
        self.start += n
        self.index += 1
        return chunk


class _FrameSampler:
    """Keeps about ``fps`` video frames per second, scaled to ``size`` and turned upright."""

    def __init__(self, fps: float, size: tuple[int, int], origin: float) -> None:
        self.step, self.size, self.origin = 1.0 / fps, size, origin
        self.next_t = 0.0

    def sample(self, frame: av.VideoFrame) -> tuple[np.ndarray, float] | None:
        """(RGB image, session time) of a frame that is due, else None."""
        if frame.time is None:
            return None
        t = frame.time - self.origin
        if t + 1e-6 < self.next_t:
            return None
        self.next_t = max(self.next_t + self.step, t)
        img = frame.to_ndarray(width=self.size[0], height=self.size[1], format="rgb24")
        # phones record sideways and store a display rotation: show it upright, as players do, so the
        # face detector sees upright faces
        quarter_turns = round((frame.rotation or 0) / 90) % 4
        if quarter_turns:
            img = np.ascontiguousarray(np.rot90(img, quarter_turns))
        return img, max(t, 0.0)


def _decode(container: av.container.InputContainer, buf: _ChunkBuffer, fps: float) -> Iterator[None]:
    """Demux the container once, decoding audio and frames into ``buf`` as packets arrive; pauses after
    every packet so that the caller can cut chunks while the buffer is still small."""
    origin = container.start_time / av.time_base if container.start_time is not None else 0.0
    audio_stream = container.streams.audio[0]
    video_stream = container.streams.video[0] if buf.info.has_video else None
    streams = [s for s in (audio_stream, video_stream) if s is not None]
    for s in streams:
        s.thread_type = "AUTO"
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    sampler = _FrameSampler(fps, buf.size, origin) if buf.size is not None else None
    for packet in container.demux(*streams):
        for frame in packet.decode():
            if packet.stream.type == "audio":
                for out in resampler.resample(frame):
                    buf.add_audio(out.to_ndarray().reshape(-1))
            elif sampler is not None and (due := sampler.sample(frame)) is not None:
                buf.add_frame(*due)
        yield
    for out in resampler.resample(None):
        buf.add_audio(out.to_ndarray().reshape(-1))


def _cut(
    path: str | os.PathLike[str],
    container: av.container.InputContainer,
    buf: _ChunkBuffer,
    fps: float,
    chunk_len: int,
    search: int,
) -> Iterator[MediaChunk]:
    """Every chunk in order, each cut as soon as enough audio is buffered past it; then the remainder."""
    try:
        for _ in _decode(container, buf, fps):
            while buf.buffered >= chunk_len + search:
                yield buf.take(buf.quiet_cut(chunk_len, search))
    except av.FFmpegError as exc:
        raise MediaError(path, f"decoding failed at {buf.position_s:.1f} s ({exc})") from exc
    if buf.buffered:
        yield buf.take(buf.buffered)


def _flag_last(path: str | os.PathLike[str], chunks: Iterator[MediaChunk]) -> Iterator[MediaChunk]:
    """Hold each chunk back one step, so that the last one leaves with ``is_last`` set."""
    pending: MediaChunk | None = None
    for chunk in chunks:
        if pending is not None:
            yield pending
        pending = chunk
    if pending is None:
        raise MediaError(path, "audio stream holds no decodable samples")
    pending.is_last = True
    yield pending


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
    size = (
        _target_size(info.width, info.height, max_side)
        if info.has_video and info.width is not None and info.height is not None
        else None
    )
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise MediaError(path, f"not a readable media container ({exc})") from exc
    with container:
        buf = _ChunkBuffer(info, size)
        yield from _flag_last(path, _cut(path, container, buf, fps, to_samples(chunk_s), to_samples(quiet_search_s)))


def _stack(frames: list[np.ndarray], size: tuple[int, int] | None) -> np.ndarray:
    if frames:
        return np.stack(frames)
    h, w = (size[1], size[0]) if size else (0, 0)
    return np.zeros((0, h, w, 3), dtype=np.uint8)


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Whole-file 16 kHz mono audio: for short clips in evaluation and tests, not for sessions."""
    return np.concatenate([c.audio for c in iter_chunks(path, chunk_s=3600.0)])
