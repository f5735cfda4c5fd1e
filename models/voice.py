"""Vocal emotion and prosody adapters: eGeMAPS features, prosody values, and two emotion models.

* :class:`EgemapsExtractor` turns utterance audio into openSMILE eGeMAPSv02 functionals (88 per
  utterance). The same numbers feed both the prosody values a clinician reads (:func:`prosody`) and the
  offline emotion model, so openSMILE runs once per utterance.
* :class:`VoiceEmotion` is the offline default: a logistic regression on eGeMAPS trained here on RAVDESS
  by ``scripts/train_voice.py`` and shipped as plain numbers in an ``.npz`` (inference is numpy only).
* :class:`TransformersVoiceEmotion` is the production path: a wav2vec2/WavLM/HuBERT checkpoint, either
  categorical (``AutoModelForAudioClassification``) or dimensional (audEERING's arousal/dominance/valence
  regression head).

Their evaluation on RAVDESS is :mod:`emoguide.evaluation.ravdess`.

openSMILE's licence forbids commercial use, and the offline model inherits RAVDESS's CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from models.audio import SAMPLE_RATE
from models.emotion import LABELS, to_canonical, valence_arousal
from models.registry import ResolvedModel

# Below ~0.25 s there are too few 10 ms frames for stable functionals (openSMILE itself gives up below
# ~0.1 s); such a segment carries no readable prosody or emotion, so it gets NaN rather than a guess.
MIN_DURATION_S = 0.25
# RMS of float audio in [-1, 1] below which a segment is treated as silence (-80 dBFS).
SILENCE_RMS = 1e-4
# A speaker needs this many usable utterances before their own mean/scale replace the population's.
# Measured on RAVDESS actors 13-18: speaker statistics from 8 random clips (with the scale shrinkage below)
# beat the population model (0.53 vs 0.50 accuracy); from 4 clips they only tie it.
MIN_SPEAKER_UTTERANCES = 8
# Weight, in pseudo-utterances, of the training population's within-speaker standard deviation when a
# speaker's own scale is estimated: stabilises the scale of speakers with few utterances.
SCALE_PRIOR_UTTERANCES = 8.0
# Out of domain: speech unlike the training recordings (other microphones, rooms, languages). The
# population model extrapolates there with full confidence (every GRID clip read as "anger 100%"). A
# clip whose standardised features lie on average further than this from the training mean is out of
# domain: RAVDESS clips have a median of 1.09 (95% under 1.8); the 8 GRID clips 1.89-2.61. Only the
# population path is checked; per-speaker normalisation takes each speaker to the training scale.
OUT_OF_DOMAIN_MEAN_ABS_Z = 1.8

_F0_MEAN = "F0semitoneFrom27.5Hz_sma3nz_amean"


@dataclass(frozen=True)
class VoiceResult:
    """Per-utterance vocal emotion; rows with no usable speech are NaN (they become nulls, never guesses)."""

    probs: np.ndarray  # N × 8 in models.emotion.LABELS order; NaN rows for a dimensional model
    valence: np.ndarray  # N, in [-1, 1]
    arousal: np.ndarray  # N, in [-1, 1]
    speaker_normalised: np.ndarray  # N bool: features were z-normalised with the speaker's own statistics
    dominance: np.ndarray | None = None  # N, in [-1, 1]; only dimensional models report it
    out_of_domain: np.ndarray | None = None  # N bool: unlike the training speech (OUT_OF_DOMAIN_MEAN_ABS_Z)


# --------------------------------------------------------------------------------------------------
# Features and prosody
# --------------------------------------------------------------------------------------------------


def usable_audio(segment: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bool:
    """Whether a segment is long and loud enough to describe; shared by every voice model."""
    x = np.asarray(segment)
    if x.ndim != 1 or x.size < MIN_DURATION_S * sample_rate or not np.all(np.isfinite(x)):
        return False
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) >= SILENCE_RMS


class EgemapsExtractor:
    """openSMILE eGeMAPSv02 functionals for a batch of utterances (16 kHz mono float32 audio)."""

    def __init__(self) -> None:
        import opensmile  # imported here: only the processes that extract features need the native library

        self._smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.Functionals,
        )
        self.feature_names: tuple[str, ...] = tuple(self._smile.feature_names)

    def features(self, segments: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """N × 88 float32 functionals in ``feature_names`` order; a NaN row for a short, silent or bad segment."""
        out = np.full((len(segments), len(self.feature_names)), np.nan, dtype=np.float32)
        for i, segment in enumerate(segments):
            x = np.asarray(segment, dtype=np.float32)
            if usable_audio(x, sample_rate):
                out[i] = self._smile.process_signal(x, sample_rate).to_numpy(dtype=np.float32)[0]
        return out


@lru_cache(maxsize=1)
def egemaps_feature_names() -> tuple[str, ...]:
    """The 88 eGeMAPSv02 functional names, in the order :class:`EgemapsExtractor` returns them."""
    return EgemapsExtractor().feature_names


# Prosody keys (the ``prosody`` Parquet struct; the first eight are the names emoguide/dataio/tables.py declares)
# → the eGeMAPS functional each one reads. ``f0_mean_hz`` is derived from ``f0_mean_semitones``.
# ``speaking_rate`` is loudnessPeaksPerSec, eGeMAPS's pseudo-syllable rate (Eyben et al. 2016);
# VoicedSegmentsPerSec counts voiced stretches, which merge syllables in fluent speech, so it is
# reported separately as ``voiced_segments_per_s``.
PROSODY_SOURCES: dict[str, str] = {
    "f0_mean_semitones": _F0_MEAN,  # semitones above 27.5 Hz, voiced frames only
    "f0_range_semitones": "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2",  # 20th-80th percentile range
    "loudness_mean": "loudness_sma3_amean",  # auditory-model loudness (sone-like units)
    "jitter_local": "jitterLocal_sma3nz_amean",  # period-to-period F0 perturbation, fraction
    "shimmer_local_db": "shimmerLocaldB_sma3nz_amean",  # cycle-to-cycle amplitude perturbation, dB
    "hnr_db": "HNRdBACF_sma3nz_amean",  # harmonics-to-noise ratio, dB
    "speaking_rate": "loudnessPeaksPerSec",  # pseudo-syllables per second
    "f0_variability": "F0semitoneFrom27.5Hz_sma3nz_stddevNorm",  # coefficient of variation
    "loudness_range": "loudness_sma3_pctlrange0-2",
    "voiced_segments_per_s": "VoicedSegmentsPerSec",
    "sound_level_db": "equivalentSoundLevel_dBp",  # relative to full scale, not calibrated SPL
}
PROSODY_KEYS: tuple[str, ...] = ("f0_mean_hz", *PROSODY_SOURCES)
# Values computed on voiced frames only: meaningless (openSMILE reports 0) when nothing was voiced.
_VOICED_ONLY = {
    "f0_mean_semitones",
    "f0_mean_hz",
    "f0_range_semitones",
    "f0_variability",
    "jitter_local",
    "shimmer_local_db",
    "hnr_db",
}


def prosody(features: np.ndarray, feature_names: Sequence[str] | None = None) -> list[dict[str, float | None]]:
    """The prosody values a clinician reads, one dict per row of eGeMAPS ``features`` (N × 88).

    Every dict has exactly ``PROSODY_KEYS``; a value is None where the row is NaN (no usable audio) or
    where it needs voiced frames and there were none. ``f0_mean_hz`` is 27.5 Hz raised by the mean
    semitone value, i.e. the geometric-mean F0 of the voiced frames.
    """
    names = list(feature_names or egemaps_feature_names())
    index = {key: names.index(source) for key, source in PROSODY_SOURCES.items()}
    rows: list[dict[str, float | None]] = []
    for row in np.asarray(features, dtype=np.float64).reshape(-1, len(names)):
        voiced = bool(row[index["f0_mean_semitones"]] > 0)
        values: dict[str, float | None] = {}
        for key in PROSODY_KEYS:
            if key == "f0_mean_hz":
                semitone = row[index["f0_mean_semitones"]]
                value = 27.5 * 2.0 ** (semitone / 12.0)
            else:
                value = row[index[key]]
            usable = math.isfinite(value) and (voiced or key not in _VOICED_ONLY)
            values[key] = float(value) if usable else None
        rows.append(values)
    return rows


# --------------------------------------------------------------------------------------------------
# Offline default: eGeMAPS + logistic regression
# --------------------------------------------------------------------------------------------------


def speaker_zscore(
    features: np.ndarray, within_sd: np.ndarray, prior_utterances: float = SCALE_PRIOR_UTTERANCES
) -> np.ndarray:
    """Z-normalise one speaker's utterances (n × features) with their own mean and a shrunk scale.

    The scale blends the speaker's variance with the training population's within-speaker variance
    (``prior_utterances`` pseudo-utterances), so a speaker with few utterances still gets a sane
    scale. Training and inference both use this function, so they normalise identically.
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    var = (n * x.var(axis=0) + prior_utterances * np.square(within_sd)) / (n + prior_utterances)
    sd = np.sqrt(var)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class _LinearModel:
    """Standardiser + multinomial logistic regression, as plain arrays."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # classes × features
    intercept: np.ndarray

    def probs(self, x: np.ndarray) -> np.ndarray:
        return _softmax(self.standardise(x) @ self.coef.T + self.intercept)

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


class SpeakerAwareClassifier:
    """The two weight sets of a voice ``.npz`` and the rule that picks between them, for any feature set.

    ``population`` standardises with training statistics (works on a single clip); ``speaker`` first
    z-normalises each speaker with their own statistics (:func:`speaker_zscore`), which removes voice
    identity such as a high or low pitch. A speaker with at least ``min_speaker_utterances`` usable
    utterances in the batch takes the speaker path. Shared by the eGeMAPS model and the Whisper-encoder
    model (:mod:`models.whisper_voice`), so both normalise speakers the same way.
    """

    def __init__(
        self,
        npz: Any,
        source: str | Path,
        min_speaker_utterances: int = MIN_SPEAKER_UTTERANCES,
        out_of_domain_z: float = np.inf,
    ) -> None:
        required = ["class_names", "speaker_within_sd"] + [
            f"{mode}_{part}" for mode in ("population", "speaker") for part in ("mean", "scale", "coef", "intercept")
        ]
        missing = [key for key in required if key not in npz.files]
        if missing:
            raise ValueError(f"{source}: not a voice classifier .npz (missing {', '.join(missing)})")
        self.class_names: tuple[str, ...] = tuple(str(n) for n in npz["class_names"])
        self._models = {
            mode: _LinearModel(*(npz[f"{mode}_{part}"] for part in ("mean", "scale", "coef", "intercept")))
            for mode in ("population", "speaker")
        }
        self._within_sd = npz["speaker_within_sd"]
        self.metadata: dict[str, Any] = {
            k[len("meta_") :]: npz[k].item() if npz[k].ndim == 0 else npz[k].tolist()
            for k in npz.files
            if k.startswith("meta_")
        }
        self.n_features = int(self._within_sd.shape[0])
        self.prior_utterances = float(self.metadata.get("scale_prior_utterances", SCALE_PRIOR_UTTERANCES))
        self.min_speaker_utterances = min_speaker_utterances
        self.out_of_domain_z = out_of_domain_z

    def predict(self, x: np.ndarray, usable: np.ndarray, speakers: Sequence[str | None] | None) -> VoiceResult:
        """Canonical probabilities and valence/arousal of the ``usable`` rows of ``x``; NaN for the rest."""
        n = x.shape[0]
        if speakers is not None and len(speakers) != n:
            raise ValueError(f"{len(speakers)} speakers for {n} feature rows")
        class_probs = np.full((n, len(self.class_names)), np.nan)
        by_speaker = np.zeros(n, dtype=bool)
        if speakers is not None:
            ids = np.array([s if s is not None else "" for s in speakers], dtype=object)
            for speaker in set(ids[usable]) - {""}:
                rows = np.flatnonzero(usable & (ids == speaker))
                if rows.size >= self.min_speaker_utterances:
                    z = speaker_zscore(x[rows], self._within_sd, self.prior_utterances)
                    class_probs[rows] = self._models["speaker"].probs(z)
                    by_speaker[rows] = True
        rest = usable & ~by_speaker
        out_of_domain = np.zeros(n, dtype=bool)
        if rest.any():
            population = self._models["population"]
            class_probs[rest] = population.probs(x[rest])
            out_of_domain[rest] = np.abs(population.standardise(x[rest])).mean(axis=1) > self.out_of_domain_z
        probs = np.full((n, len(LABELS)), np.nan, dtype=np.float32)
        probs[usable] = to_canonical(class_probs[usable], self.class_names)
        va = np.full((n, 2), np.nan, dtype=np.float32)
        va[usable] = valence_arousal(probs[usable])
        return VoiceResult(
            probs=probs, valence=va[:, 0], arousal=va[:, 1], speaker_normalised=by_speaker, out_of_domain=out_of_domain
        )


class VoiceEmotion:
    """Offline vocal emotion from eGeMAPS functionals (weights made by ``scripts/train_voice.py``).

    Two weight sets share one ``.npz`` (see :class:`SpeakerAwareClassifier`): per-speaker normalisation
    scores better on held-out RAVDESS actors (0.57 vs 0.50 accuracy). Caveat: the speaker path assumes a
    speaker's utterances span several emotions, as in RAVDESS; for a speaker who is neutral throughout,
    normalisation inflates small deviations.
    """

    def __init__(self, model: ResolvedModel, min_speaker_utterances: int = MIN_SPEAKER_UTTERANCES) -> None:
        with np.load(model.path, allow_pickle=False) as npz:
            if "feature_names" not in npz.files:
                raise ValueError(f"{model.path}: no eGeMAPS feature_names; not an eGeMAPS voice model")
            self.feature_names: tuple[str, ...] = tuple(str(n) for n in npz["feature_names"])
            self._classifier = SpeakerAwareClassifier(npz, model.path, min_speaker_utterances, OUT_OF_DOMAIN_MEAN_ABS_Z)
        self.class_names = self._classifier.class_names
        self.metadata = self._classifier.metadata
        self.min_speaker_utterances = min_speaker_utterances
        self._f0 = self.feature_names.index(_F0_MEAN)

    def predict(self, features: np.ndarray, speakers: Sequence[str | None] | None = None) -> VoiceResult:
        """Emotion of each utterance (rows of N × 88 eGeMAPS ``features``, any mix of speakers).

        ``speakers`` (one id per row, None for unknown) enables per-speaker normalisation for speakers
        with enough usable utterances in this batch; pass a whole session at once to benefit. Rows that
        are NaN or contain no voiced speech get NaN outputs.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"features must be N × {len(self.feature_names)} eGeMAPSv02 functionals, got {x.shape}")
        usable = np.all(np.isfinite(x), axis=1) & (x[:, self._f0] > 0)
        return self._classifier.predict(x, usable, speakers)


# --------------------------------------------------------------------------------------------------
# Production: transformers speech-emotion checkpoints
# --------------------------------------------------------------------------------------------------

# Class names used by public speech-emotion checkpoints (IEMOCAP/SUPERB abbreviations, RAVDESS, CREMA-D,
# MSP-Podcast, emotion2vec's "中文/english" pairs) → canonical labels. Classes with no canonical
# counterpart ("other", "unknown") are dropped and the rest renormalised.
_LABEL_SYNONYMS: dict[str, str] = {
    "neu": "neutral",
    "neutral": "neutral",
    "calm": "neutral",
    "hap": "happiness",
    "happy": "happiness",
    "happiness": "happiness",
    "joy": "happiness",
    "exc": "happiness",
    "excited": "happiness",
    "sad": "sadness",
    "sadness": "sadness",
    "ang": "anger",
    "angry": "anger",
    "anger": "anger",
    "fea": "fear",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "dis": "disgust",
    "disgust": "disgust",
    "disgusted": "disgust",
    "sur": "surprise",
    "surprise": "surprise",
    "surprised": "surprise",
    "con": "contempt",
    "contempt": "contempt",
}
_DIMENSIONS = ("arousal", "dominance", "valence")
# Checkpoints saved from audEERING's model card class (wav2vec2 + mean pooling + dense/tanh/out_proj
# head). transformers has no such class: loaded with AutoModelForAudioClassification their head weights
# would be silently replaced by random ones, so they get the matching module below.
_POOLED_REGRESSION_ARCHITECTURES = {"Wav2Vec2ForSpeechClassification", "EmotionModel"}


def canonical_label(model_label: str) -> str | None:
    """Canonical name of a checkpoint's class label, or None when it has no counterpart."""
    key = model_label.strip().lower().split("/")[-1].strip()
    return _LABEL_SYNONYMS.get(key)


@lru_cache(maxsize=1)
def _pooled_regression_class() -> type:
    """audEERING's wav2vec2 regression model, built on first use so importing this module needs no torch."""
    import torch
    from torch import nn
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Model, Wav2Vec2PreTrainedModel

    class RegressionHead(nn.Module):
        def __init__(self, config: Any) -> None:
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.dropout = nn.Dropout(config.final_dropout)
            self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

        def forward(self, pooled: torch.Tensor) -> torch.Tensor:
            return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))

    class PooledRegressionModel(Wav2Vec2PreTrainedModel):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.wav2vec2 = Wav2Vec2Model(config)
            self.classifier = RegressionHead(config)
            self.post_init()

        def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            hidden = self.wav2vec2(input_values, attention_mask=attention_mask).last_hidden_state
            if attention_mask is None:
                pooled = hidden.mean(dim=1)
            else:  # mean over real frames only, so padding in a batch does not change a clip's output
                mask = self._get_feature_vector_attention_mask(hidden.shape[1], attention_mask).unsqueeze(-1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            return self.classifier(pooled)

    return PooledRegressionModel


class TransformersVoiceEmotion:
    """Production vocal emotion from a transformers speech-emotion checkpoint (a folder, e.g. from the hub).

    Categorical checkpoints report class probabilities mapped to canonical labels through the config's
    ``id2label`` (valence/arousal from the circumplex mapping). Dimensional checkpoints (labels arousal,
    dominance, valence; audEERING's MSP-Podcast model outputs each in ~[0, 1]) report valence/arousal/
    dominance mapped linearly to [-1, 1], and NaN probabilities (they have no categories).
    """

    def __init__(self, model: ResolvedModel, device: str = "cpu", batch_size: int = 8) -> None:
        import torch
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

        config = AutoConfig.from_pretrained(model.path)
        labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.dimensional = {label.lower() for label in labels} == set(_DIMENSIONS)
        if self.dimensional:
            self._dim_index = {label.lower(): i for i, label in enumerate(labels)}
        else:
            mapped = [(i, canonical_label(label)) for i, label in enumerate(labels)]
            self._columns = [i for i, name in mapped if name is not None]
            self._class_names = [name for _, name in mapped if name is not None]
            if not self._columns:
                raise ValueError(f"{model.name}: none of the labels {labels} maps to {LABELS}")
        if set(config.architectures or []) & _POOLED_REGRESSION_ARCHITECTURES:
            net_class: Any = _pooled_regression_class()
        else:
            net_class = AutoModelForAudioClassification
        net, info = net_class.from_pretrained(model.path, output_loading_info=True)
        # A head left at random initialisation would give confident nonsense: refuse it. (Backbone gaps,
        # such as the training-only masked_spec_embed, are harmless and only logged by transformers.)
        missing_head = sorted(k for k in info["missing_keys"] if not k.startswith(net.base_model_prefix + "."))
        if missing_head:
            raise ValueError(f"{model.name}: checkpoint lacks weights for its head: {missing_head[:5]}")
        self._net = net.to(device).eval()
        self._extractor = AutoFeatureExtractor.from_pretrained(model.path)
        self._torch = torch
        self._device = device
        # Without attention masks (group-norm wav2vec2 models) zero padding changes the output: one clip
        # per forward pass then.
        self._batch_size = batch_size if getattr(self._extractor, "return_attention_mask", False) else 1

    def predict(self, segments: Sequence[np.ndarray]) -> VoiceResult:
        """Emotion of each 16 kHz mono utterance; short or silent ones get NaN outputs."""
        n = len(segments)
        usable = np.array([usable_audio(s) for s in segments], dtype=bool)
        order = sorted(np.flatnonzero(usable).tolist(), key=lambda i: len(segments[i]))  # similar lengths pad less
        outputs = np.full((n, self._net.config.num_labels), np.nan, dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            outputs[rows] = self._forward([np.asarray(segments[i], dtype=np.float32) for i in rows])
        if self.dimensional:
            scaled = np.clip(2.0 * outputs - 1.0, -1.0, 1.0)
            d = self._dim_index
            return VoiceResult(
                probs=np.full((n, len(LABELS)), np.nan, dtype=np.float32),
                valence=scaled[:, d["valence"]],
                arousal=scaled[:, d["arousal"]],
                speaker_normalised=np.zeros(n, dtype=bool),
                dominance=scaled[:, d["dominance"]],
            )
        probs = np.full((n, len(LABELS)), np.nan, dtype=np.float32)
        va = np.full((n, 2), np.nan, dtype=np.float32)
        if usable.any():
            class_probs = _softmax(outputs[usable][:, self._columns].astype(np.float64))
            probs[usable] = to_canonical(class_probs, self._class_names)
            va[usable] = valence_arousal(probs[usable])
        return VoiceResult(probs=probs, valence=va[:, 0], arousal=va[:, 1], speaker_normalised=np.zeros(n, dtype=bool))

    def _forward(self, batch: list[np.ndarray]) -> np.ndarray:
        inputs = self._extractor(
            batch,
            sampling_rate=SAMPLE_RATE,
            padding=True,
            return_tensors="pt",
            return_attention_mask=self._batch_size > 1,
        ).to(self._device)
        with self._torch.inference_mode():
            out = self._net(**inputs)
        logits = out if isinstance(out, self._torch.Tensor) else out.logits
        return logits.float().cpu().numpy()
