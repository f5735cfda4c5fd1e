"""Speech recognition with faster-whisper: audio in, segments with word timings out.

Settings follow the paper's needs: VAD on (sessions have long silences), word timestamps (later
stages split utterances at speaker changes and align frames to words), temperature 0 (runs are
repeatable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from faster_whisper import WhisperModel

from models.registry import ResolvedModel


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

    def transcribe(self, audio: np.ndarray, offset_s: float = 0.0) -> list[Segment]:
        """Transcribe one piece of audio; segment and word times are shifted by ``offset_s``."""
        if audio.size < 1600:  # under 0.1 s: nothing a model can transcribe
            return []
        segments, _ = self._model.transcribe(
            np.ascontiguousarray(audio, dtype=np.float32),
            language=self.language,
            beam_size=self.beam_size,
            temperature=0.0,
            vad_filter=True,
            word_timestamps=True,
            condition_on_previous_text=False,
        )
        out: list[Segment] = []
        for s in segments:
            words = tuple(
                Word(w.start + offset_s, w.end + offset_s, w.word, w.probability) for w in (s.words or [])
            )
            out.append(
                Segment(
                    start=s.start + offset_s,
                    end=s.end + offset_s,
                    text=s.text.strip(),
                    avg_logprob=s.avg_logprob,
                    no_speech_prob=s.no_speech_prob,
                    words=words,
                )
            )
        return out
