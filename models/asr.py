"""Speech recognition with faster-whisper: audio in, segments with word timings out.

Settings follow the paper's needs: only speech is transcribed (sessions have long silences), word
timestamps (later stages split utterances at speaker changes and align frames to words), temperature 0
(runs are repeatable).

Where the speech is comes from the caller: the pipeline passes the regions the speaker stage's
segmentation model found (:mod:`models.segmentation`). Whisper's own filter, Silero VAD, is used only
when no regions are given; it misses shouted and fearful speech (a whole angry RAVDESS sentence
scores under 0.2 and vanished from the transcript), exactly the client's most emotional moments.

Whisper's word timings stretch over pauses: the last word before a silence often ends, and the first
word after it often starts, in the middle of the silence. Everything downstream reads these times
(speaker windows, utterance spans, face frames, voice features), so each word is trimmed to the
voiced audio inside it (:func:`trim_to_voice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.transcribe import restore_speech_timestamps

from models.registry import ResolvedModel

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """One ASR segment; times are seconds from the start of the audio plus ``offset_s``."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...]

    def as_record(self) -> dict:
        """Plain dict (words as a list of dicts) for Arrow tables."""
        record = asdict(self)
        record["words"] = [asdict(w) for w in self.words]
        return record


class Transcriber:
    """A faster-whisper model loaded once; :meth:`transcribe` takes 16 kHz mono float32 audio."""

    def __init__(
        self,
        model: ResolvedModel,
        device: str = "auto",
        compute_type: str = "default",
        cpu_threads: int = 0,
        language: str | None = None,
        beam_size: int = 5,
    ) -> None:
        self.model_info = model
        self._model = WhisperModel(
            str(model.path), device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )
        # English-only checkpoints (".en") reject a language argument other than English.
        self.language = "en" if not self._model.model.is_multilingual else language
        self.beam_size = beam_size

    def transcribe(
        self, audio: np.ndarray, offset_s: float = 0.0, speech: Sequence[tuple[float, float]] | None = None
    ) -> list[Segment]:
        """Transcribe one piece of audio; segment and word times are shifted by ``offset_s``.

        ``speech``: where people speak, (start, end) in the same shifted seconds; only that audio is
        transcribed. None: Whisper's own voice-activity filter decides.
        """
        if audio.size < 1600:  # under 0.1 s: nothing a model can transcribe
            return []
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        options = dict(language=self.language, beam_size=self.beam_size, temperature=0.0, word_timestamps=True,
                       condition_on_previous_text=False)
        if speech is None:
            segments, _ = self._model.transcribe(audio, vad_filter=True, **options)
        else:
            clips = whisper_clips(speech, offset_s, len(audio))
            if not clips:
                return []
            joined = np.concatenate([audio[c["start"]: c["end"]] for c in clips])
            segments, _ = self._model.transcribe(joined, vad_filter=False, **options)
            segments = restore_speech_timestamps(segments, clips, SAMPLE_RATE)
        voiced = voiced_frames(audio)
        out: list[Segment] = []
        for s in segments:
            words = tuple(
                Word(*(t + offset_s for t in trim_to_voice(w.start, w.end, voiced, first_in_segment=i == 0)),
                     w.word, w.probability)
                for i, w in enumerate(s.words or [])
            )
            start, end = (min(w.start for w in words), max(w.end for w in words)) if words else (
                s.start + offset_s, s.end + offset_s)
            out.append(
                Segment(
                    start=start,
                    end=end,
                    text=s.text.strip(),
                    avg_logprob=s.avg_logprob,
                    no_speech_prob=s.no_speech_prob,
                    words=words,
                )
            )
        return out


def whisper_clips(
    speech: Sequence[tuple[float, float]], offset_s: float, n_samples: int, pad_s: float = 0.4, join_s: float = 2.0
) -> list[dict[str, int]]:
    """Speech regions as the sample ranges Whisper hears, the way its own VAD filter prepares them:
    each region padded by ``pad_s`` and regions closer than ``join_s`` joined, so a word's edges and the
    short pauses of a sentence stay in its context."""
    clips: list[list[int]] = []
    for s, e in sorted(speech):
        a = max(0, round((s - offset_s - pad_s) * SAMPLE_RATE))
        b = min(n_samples, round((e - offset_s + pad_s) * SAMPLE_RATE))
        if b <= a:
            continue
        if clips and a - clips[-1][1] < join_s * SAMPLE_RATE:
            clips[-1][1] = max(clips[-1][1], b)
        else:
            clips.append([a, b])
    return [{"start": a, "end": b} for a, b in clips]


HOP_S = 0.01  # voicing is decided per 10 ms (25 ms windows)
_WIN = 400


def voiced_frames(audio: np.ndarray, sr: int = SAMPLE_RATE, below_peak_db: float = 35.0, above_noise_db: float = 10.0
                  ) -> np.ndarray:
    """Per 10 ms hop: is there speech energy? Louder than both ``below_peak_db`` under the loud end of
    the audio (its 99th percentile, so one click does not set it) and ``above_noise_db`` over its
    noise floor (10th percentile): digital silence and room noise are both left out."""
    hop = round(HOP_S * sr)
    if len(audio) < _WIN:
        return np.zeros(0, dtype=bool)
    power = np.concatenate([[0.0], np.cumsum(np.asarray(audio, np.float64) ** 2)])
    starts = np.arange(0, len(audio) - _WIN + 1, hop)
    db = 10 * np.log10((power[starts + _WIN] - power[starts]) / _WIN + 1e-12)
    threshold = max(np.percentile(db, 99) - below_peak_db, np.percentile(db, 10) + above_noise_db)
    return db > threshold


def trim_to_voice(start: float, end: float, voiced: np.ndarray, first_in_segment: bool = False,
                  pause_s: float = 0.3, pad_s: float = 0.03) -> tuple[float, float]:
    """``(start, end)`` (seconds into the audio) shrunk to the voiced audio inside it, with ``pad_s`` of
    margin for soft onsets; unchanged when nothing inside is voiced (a quiet word is still a word).

    A word that spans a pause of ``pause_s`` or more is in one of the voiced stretches around it, and
    Whisper's habit says which: a word stretched over a pause is almost always the last one before it,
    so the first stretch is kept, except for a segment's first word, whose start is the one pulled
    early into the preceding silence.
    """
    first, last = max(int(np.floor(start / HOP_S)), 0), max(int(np.ceil(end / HOP_S)), 0)
    inside = np.flatnonzero(voiced[first:last])
    if not len(inside):
        return start, end
    breaks = np.flatnonzero(np.diff(inside) * HOP_S >= pause_s)
    islands = np.split(inside, breaks + 1)
    keep = islands[-1] if first_in_segment else islands[0]
    a = (first + keep[0]) * HOP_S - pad_s
    b = (first + keep[-1]) * HOP_S + _WIN / SAMPLE_RATE + pad_s
    return max(start, a), min(end, b)
