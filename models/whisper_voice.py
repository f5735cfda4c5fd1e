"""Vocal emotion from the Whisper encoder output the ASR stage already computes.

Whisper's encoder hears tone of voice as well as words: a standardised logistic regression on the mean
and standard deviation of its frames over an utterance beats the eGeMAPS model on held-out RAVDESS
actors (``scripts/train_voice.py --features whisper``; figures in the README). The encoder pass is
already paid for by transcription, so the feature costs only the pooling below.

The runtime contract, which training follows exactly:

* each speech group (voice-activity regions joined over short pauses) is one Whisper input, from
  ``INPUT_PAD_S`` before its first region to ``INPUT_PAD_S`` after its last, clipped to the audio
  (:func:`padded_input`);
* faster-whisper's log-mel of that input, cut to its first 30 s window (3000 mel frames), goes through
  the encoder: ``[1500, d]`` frames, one per ``FRAME_S`` of the input (:func:`encoder_frames` does the
  same outside the ASR pass, for training and evaluation; inside it, the first ``WhisperModel.encode``
  call of a ``transcribe`` with the language given returns exactly these frames, as a test checks);
* an utterance's feature is the mean and standard deviation of the frames its span covers, seconds
  from the input's start (:func:`pool_encoder_frames`): ``2 d`` numbers.

A classifier only fits the encoder it was trained on (tiny.en features mean nothing to a classifier of
large-v3's), so the weights record the ASR model's content fingerprint and :meth:`WhisperVoiceEmotion.
check_encoder` refuses any other. Trained on RAVDESS: CC BY-NC-SA 4.0 (non-commercial).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from models.audio import to_samples
from models.registry import ResolvedModel
from models.voice import MIN_SPEAKER_UTTERANCES, SpeakerAwareClassifier, VoiceResult

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

FRAME_S = 0.02  # one encoder frame per 20 ms of input (two 10 ms mel frames, stride-2 convolution)
WINDOW_MEL_FRAMES = 3000  # faster-whisper's pad_or_trim length: one 30 s window
INPUT_PAD_S = 0.4  # audio kept before a group's first and after its last speech region
# Speech further than this from the training mean (mean |z| of the standardised pooled frames) is out of
# the model's domain. RAVDESS clips: median 0.73, 99% under 1.14, the farthest 1.39; the 8 GRID clips,
# another corpus and microphone, lie at 1.15-1.34 and are still read sensibly (top class neutral in 8 of
# 8), so the line is drawn beyond every training clip rather than at a percentile.
OUT_OF_DOMAIN_MEAN_ABS_Z = 1.4
# Frame edges are multiples of 20 ms; without this tolerance 0.06 / 0.02 = 2.9999... would put a span
# that starts exactly on frame 3 into frame 2.
_EDGE_TOLERANCE = 1e-6


class EncoderMismatchError(ValueError):
    """The features come from another ASR encoder than the one the classifier was trained on."""


def padded_input(start_s: float, end_s: float, duration_s: float, pad_s: float = INPUT_PAD_S) -> tuple[int, int]:
    """Sample range ``[a, b)`` of the Whisper input for speech from ``start_s`` to ``end_s`` (seconds into
    audio of ``duration_s``): ``pad_s`` either side, clipped to the audio."""
    n = to_samples(duration_s)
    return to_samples(start_s - pad_s, n), to_samples(end_s + pad_s, n)


def pool_encoder_frames(frames: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """Mean and standard deviation (population, ddof 0) of the encoder frames under each span: N × 2d.

    ``frames`` is one window's encoder output ``[n_frames, d]``; each span is (start, end) in seconds
    from the window's start. Frame k covers ``[k, k + 1) · FRAME_S``; a span takes every frame it
    overlaps, ``floor(start / FRAME_S)`` up to but excluding ``ceil(end / FRAME_S)``, cut to the window.
    A span that is empty, reversed, not finite or outside the window gets a NaN row (no guess).
    """
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"encoder frames must be [n_frames, d], got shape {x.shape}")
    out = np.full((len(spans), 2 * x.shape[1]), np.nan, dtype=np.float32)
    for i, (start, end) in enumerate(spans):
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            continue
        first = max(0, math.floor(start / FRAME_S + _EDGE_TOLERANCE))
        last = min(x.shape[0], math.ceil(end / FRAME_S - _EDGE_TOLERANCE))
        if last <= first:
            continue
        window = x[first:last]
        out[i, : x.shape[1]] = window.mean(axis=0)
        out[i, x.shape[1] :] = window.std(axis=0)
    return out


def word_moments(frames: np.ndarray, word_starts: Sequence[float], end: float) -> np.ndarray:
    """Per word, the sum, sum of squares and count of the encoder frames from its start to the next
    word's start (the last word's to ``end``; seconds from the window's start): ``[n_words, 2d + 1]``.

    The words partition the utterance's frames, so :func:`pool_moments` of all of them is
    :func:`pool_encoder_frames` of the utterance's span, and of a run of them, the pooled features of
    that part of it (a part split off at a speaker change), with no encoder output kept.
    """
    x = np.asarray(frames, dtype=np.float64)
    edges = [max(0, math.floor(t / FRAME_S + _EDGE_TOLERANCE)) for t in word_starts]
    edges.append(math.ceil(end / FRAME_S - _EDGE_TOLERANCE))
    edges = [min(x.shape[0], e) for e in edges]
    out = np.zeros((len(word_starts), 2 * x.shape[1] + 1))
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        if b > a:
            out[i, : x.shape[1]] = x[a:b].sum(axis=0)
            out[i, x.shape[1] : -1] = np.square(x[a:b]).sum(axis=0)
            out[i, -1] = b - a
    return out


def pool_moments(moments: np.ndarray) -> np.ndarray:
    """Mean and standard deviation (as :func:`pool_encoder_frames`) of the frames behind rows of
    :func:`word_moments`; NaN when they hold no frame."""
    total = np.asarray(moments, dtype=np.float64).sum(axis=0)
    d = (total.shape[0] - 1) // 2
    if total[-1] <= 0:
        return np.full(2 * d, np.nan, np.float32)
    mean = total[:d] / total[-1]
    return np.concatenate([mean, np.sqrt(np.maximum(total[d:-1] / total[-1] - mean**2, 0.0))]).astype(np.float32)


def encoder_frames(model: WhisperModel, audio: np.ndarray) -> np.ndarray:
    """Encoder output ``[1500, d]`` of the first 30 s window of ``audio`` (16 kHz mono), computed as
    faster-whisper's transcription computes it: log-mel of the whole input, its last frame dropped
    (``content_frames``), padded or trimmed to 3000 frames, encoded."""
    from faster_whisper.audio import pad_or_trim

    mel = model.feature_extractor(np.asarray(audio, dtype=np.float32))
    content = mel[:, : min(WINDOW_MEL_FRAMES, mel.shape[-1] - 1)]
    output = model.encode(pad_or_trim(content, WINDOW_MEL_FRAMES))
    if output.device != "cpu":
        import ctranslate2

        output = output.to_device(ctranslate2.Device.cpu)
    return np.asarray(output, dtype=np.float32)[0]


class WhisperVoiceEmotion:
    """Vocal emotion from pooled Whisper encoder frames (weights made by ``scripts/train_voice.py``).

    Load once, then :meth:`predict` a whole session's utterances so per-speaker normalisation (the
    session's own statistics, shrunk toward the training population's; :class:`SpeakerAwareClassifier`)
    applies to speakers with at least ``min_speaker_utterances`` utterances. Give the ASR model that
    produced the features (``asr``) to refuse another encoder's features at load time.
    """

    def __init__(
        self,
        model: ResolvedModel,
        asr: ResolvedModel | None = None,
        min_speaker_utterances: int = MIN_SPEAKER_UTTERANCES,
    ) -> None:
        self.model_info = model
        with np.load(model.path, allow_pickle=False) as npz:
            if "encoder_version" not in npz.files:
                raise ValueError(f"{model.path}: no encoder_version; not a Whisper-encoder voice model")
            self.encoder_name = str(npz["encoder_name"])
            self.encoder_version = str(npz["encoder_version"])
            self._classifier = SpeakerAwareClassifier(npz, model.path, min_speaker_utterances, OUT_OF_DOMAIN_MEAN_ABS_Z)
        self.class_names = self._classifier.class_names
        self.metadata: dict[str, Any] = self._classifier.metadata
        self.n_features = self._classifier.n_features
        if asr is not None:
            self.check_encoder(asr)

    def check_encoder(self, asr: ResolvedModel) -> None:
        """Raise :class:`EncoderMismatchError`, naming both encoders, unless ``asr`` holds the very weights
        this classifier was trained on (same content fingerprint; the name alone may differ)."""
        if asr.version != self.encoder_version:
            raise EncoderMismatchError(
                f"voice model {self.model_info.name!r} ({self.model_info.path}) was trained on the encoder of "
                f"ASR model {self.encoder_name!r} ({self.encoder_version}), but the ASR model is {asr.name!r} "
                f"({asr.version}, {asr.path}): its encoder features mean nothing to this classifier. Use the "
                f"ASR model it was trained on, a voice model trained for {asr.name!r}, or the eGeMAPS model."
            )

    def predict(self, features: np.ndarray, speakers: Sequence[str | None] | None = None) -> VoiceResult:
        """Emotion of each utterance from its pooled frames (N × 2d, :func:`pool_encoder_frames`).

        ``speakers``: one id per row (None: unknown), the whole session at once. NaN rows (no frames)
        get NaN outputs.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise EncoderMismatchError(
                f"features must be N × {self.n_features} (mean and std of {self.encoder_name!r} encoder "
                f"frames), got {x.shape}"
            )
        return self._classifier.predict(x, np.all(np.isfinite(x), axis=1), speakers)
