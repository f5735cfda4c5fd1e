"""Build longer, multi-speaker sessions from real short clips (GRID videos, RAVDESS audio).

The shared data has 3-second clips; benchmarks need minutes of media and the speaker tests need
conversations with known turns. A session is the clips played one after another with short gaps
(silence and the last frame held), written as MPEG-4 video with AAC audio, or as FLAC for audio only.
``build_dubbed_session`` lip-syncs one GRID face to other voices (a face and a voice that disagree).
The returned turns are the ground truth for diarization error rate. Encoding is streamed clip by clip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from emoguide.dataio.media import iter_chunks
from models.audio import SAMPLE_RATE

FPS = 25


@dataclass(frozen=True)
class Turn:
    """One clip of the session: its span, and the span of actual speech inside it (the clip's silent
    lead-in and ending trimmed off), which is the reference for diarization error rate."""

    speaker: str
    start_s: float
    end_s: float
    source: str
    speech_start_s: float = 0.0
    speech_end_s: float = 0.0


def speech_span(audio: np.ndarray, floor_db: float = 35.0) -> tuple[float, float]:
    """Seconds from the first to the last 25 ms frame within ``floor_db`` of the clip's loudest frame."""
    hop, win = 160, 400
    n = max(1, (len(audio) - win) // hop + 1)
    rms = np.array([np.sqrt(np.mean(audio[i * hop: i * hop + win] ** 2) + 1e-12) for i in range(n)])
    db = 20 * np.log10(rms)
    active = np.flatnonzero(db > max(db.max() - floor_db, -60.0))
    if not active.size:
        return 0.0, len(audio) / SAMPLE_RATE
    return active[0] * hop / SAMPLE_RATE, min(len(audio), active[-1] * hop + win) / SAMPLE_RATE


def _turn(speaker: str, start: float, audio: np.ndarray, source: str) -> Turn:
    """A clip's turn; its speech span is the hand-read one for a bundled GRID clip, else from energy."""
    a, b = GRID_SPEECH_S.get(source) or speech_span(audio)
    return Turn(speaker, start, start + len(audio) / SAMPLE_RATE, source, start + a, start + b)


# Where speech starts and ends in each bundled GRID clip (seconds), read by hand from its spectrogram and
# waveform: the first burst, frication or voicing of the first word to the last voicing of the last word,
# to about 20 ms. id2_vcd_swwp2s is the corpus's own word alignment (swwp2s.align). An energy threshold
# cannot stand in for this: GRID's hum, breath and lip noise sit 20-30 dB under the speech peak, so a
# 25 dB floor marked up to a second of noise as speech in five of the eight clips (2.9 s of "speech" in
# a sentence of 1.6 s).
GRID_SPEECH_S = {
    "bbaf2n.mpg": (0.99, 2.12),
    "lrwp9a.mpg": (0.61, 2.31),
    "id2_vcd_swwp2s.mpg": (0.49, 2.21),
    "brbk7n.mpg": (0.53, 2.08),
    "sbia1a.mpg": (0.49, 2.33),
    "lbax4n.mpg": (0.47, 2.01),
    "lbbc2a.mpg": (0.51, 1.97),
    "sbwe5n.mpg": (0.45, 1.96),
}


def _clip(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All frames (at the clip's own rate, resampled to FPS) and the 16 kHz audio of a short clip."""
    chunks = list(iter_chunks(path, fps=FPS, chunk_s=3600.0))
    audio = np.concatenate([c.audio for c in chunks])
    frames = np.concatenate([c.frames for c in chunks]) if chunks[0].frames.size else np.zeros((0, 0, 0, 3), np.uint8)
    return frames, audio


def _encode_audio(container: av.container.OutputContainer, stream: av.stream.Stream, samples: np.ndarray,
                  pts: int) -> int:
    """Encode and mux 16 kHz mono samples starting at sample ``pts``; return the next pts."""
    for i in range(0, len(samples), 4096):
        frame = av.AudioFrame.from_ndarray(samples[None, i: i + 4096].astype(np.float32), format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, Fraction(1, SAMPLE_RATE)
        pts += frame.samples
        for packet in stream.encode(frame):
            container.mux(packet)
    return pts


def _encode_frame(container: av.container.OutputContainer, stream: av.stream.Stream, image: np.ndarray,
                  pts: int) -> None:
    """Encode and mux one RGB frame as frame number ``pts``."""
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = pts
    for packet in stream.encode(frame):
        container.mux(packet)


def _flush(container: av.container.OutputContainer, *streams: av.stream.Stream | None) -> None:
    """Drain the encoders of ``streams`` (None: a stream never added) into the container."""
    for stream in streams:
        if stream is not None:
            for packet in stream.encode(None):
                container.mux(packet)


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
        n_samples = _encode_audio(container, a_stream, samples, n_samples)

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
            turns.append(_turn(speaker, t, audio, Path(path).name))
            write_audio(audio)
            write_audio(gap)
            if v_stream is not None:
                target = round((n_samples / SAMPLE_RATE) * FPS)
                write_frames(frames[: max(0, target - n_frames)])
                if target > n_frames and last_frame is not None:
                    write_frames(frames, count=target - n_frames)
            t = n_samples / SAMPLE_RATE
        _flush(container, a_stream, v_stream)
    finally:
        container.close()
    return turns


def _idle(frames: np.ndarray, tail_s: float = 0.4) -> np.ndarray:
    """A listener's loop: the clip's silent ending (mouth at rest) played forwards then backwards, which
    keeps the small natural motion of a listening face."""
    tail = frames[-max(2, int(tail_s * FPS)):]
    return np.concatenate([tail, tail[::-1]])


def build_two_person_session(
    people: dict[str, str | os.PathLike[str]],
    order: Sequence[str],
    out: str | os.PathLike[str],
    visible: Sequence[str] | None = None,
    gap_s: float = 0.4,
    bit_rate: int = 1_200_000,
) -> list[Turn]:
    """A conversation filmed as two side-by-side panels (a video call, a split-screen recording).

    ``people`` maps two speaker names to their GRID clips, left panel first; ``order`` is the sequence of
    turns. The speaker of a turn plays their clip (audio and video) in their panel while the other panel
    shows that person listening (their clip's silent ending looped). A person left out of ``visible`` is off
    screen: their panel is grey, so only their voice is in the session. Returns the speaker turns.
    """
    names = list(people)
    clips = {name: _clip(Path(path)) for name, path in people.items()}
    shown = set(names if visible is None else visible)
    height, width = clips[names[0]][0].shape[1:3]
    grey = np.full((height, width, 3), 128, np.uint8)
    idle = {name: _idle(frames) for name, (frames, _) in clips.items()}
    container = av.open(str(out), mode="w")
    a_stream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
    v_stream = container.add_stream("mpeg4", rate=FPS)
    v_stream.width, v_stream.height, v_stream.pix_fmt = 2 * width, height, "yuv420p"
    v_stream.bit_rate = bit_rate
    turns: list[Turn] = []
    n_samples = n_frames = 0

    def panel(name: str, speaking: str | None, i: int) -> np.ndarray:
        if name not in shown:
            return grey
        frames = clips[name][0] if name == speaking else idle[name]
        return cv2.resize(frames[min(i, len(frames) - 1)] if name == speaking else frames[i % len(frames)],
                          (width, height))

    def write(audio: np.ndarray, speaking: str | None) -> None:
        nonlocal n_samples, n_frames
        n_samples = _encode_audio(container, a_stream, audio, n_samples)
        first = n_frames
        while n_frames < round(n_samples / SAMPLE_RATE * FPS):
            image = np.concatenate([panel(name, speaking, n_frames - first) for name in names], axis=1)
            _encode_frame(container, v_stream, image, n_frames)
            n_frames += 1

    try:
        for speaker in order:
            start = n_samples / SAMPLE_RATE
            audio = clips[speaker][1]
            turns.append(_turn(speaker, start, audio, Path(people[speaker]).name))
            write(audio, speaker)
            write(np.zeros(int(gap_s * SAMPLE_RATE), np.float32), None)
        _flush(container, a_stream, v_stream)
    finally:
        container.close()
    return turns


def _lip_sync_index(t: float, turns: Sequence[Turn], face_speech: tuple[float, float]) -> int | None:
    """The face clip's frame to show at session time ``t``: inside a voice clip's speech span, the face
    clip's own speech stretched onto that span (mouth moves with the voice); elsewhere None (rest)."""
    for turn in turns:
        if turn.speech_start_s <= t < turn.speech_end_s:
            share = (t - turn.speech_start_s) / (turn.speech_end_s - turn.speech_start_s)
            return round((face_speech[0] + share * (face_speech[1] - face_speech[0])) * FPS)
    return None


def build_dubbed_session(
    voices: Sequence[str | os.PathLike[str]],
    face: str | os.PathLike[str],
    out: str | os.PathLike[str],
    gap_s: float = 1.5,
    bit_rate: int = 800_000,
) -> list[Turn]:
    """A face clip dubbed with other voices, lip-synced: one person's face, another's speech.

    The voice clips (audio) play one after another, each followed by ``gap_s`` of silence. While a voice
    clip's speech (``speech_span``) plays, the face clip (a GRID video) replays its own spoken part
    stretched to the same duration, so the lips move exactly while the voice speaks; before, between and
    after, the face holds the clip's last frame (mouth at rest after the sentence; several GRID speakers
    part their lips before they start, so the first frame would show an open mouth in silence). This puts
    a face with one emotion and a voice with another in one video with the timing of real speech.
    Returns the voice clips' turns (speaker "voice"), the ground truth of where speech is.
    """
    frames, _ = _clip(Path(face))
    face_speech = GRID_SPEECH_S[Path(face).name]
    container = av.open(str(out), mode="w")
    a_stream = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
    v_stream = container.add_stream("mpeg4", rate=FPS)
    v_stream.height, v_stream.width = frames.shape[1:3]
    v_stream.pix_fmt, v_stream.bit_rate = "yuv420p", bit_rate
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    turns: list[Turn] = []
    n_samples = 0
    try:
        for path in voices:
            audio = _clip(Path(path))[1]
            turns.append(_turn("voice", n_samples / SAMPLE_RATE, audio, Path(path).name))
            n_samples = _encode_audio(container, a_stream, np.concatenate([audio, gap]), n_samples)
        for n in range(round(n_samples / SAMPLE_RATE * FPS)):
            index = _lip_sync_index(n / FPS, turns, face_speech)
            _encode_frame(container, v_stream, frames[-1 if index is None else min(index, len(frames) - 1)], n)
        _flush(container, a_stream, v_stream)
    finally:
        container.close()
    return turns
