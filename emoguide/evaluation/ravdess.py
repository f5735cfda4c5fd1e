"""Voice emotion models on RAVDESS: labels from file names, scores, and a whole evaluation.

For ``emoguide eval perception``, ``scripts/train_voice.py`` and the voice tests; the adapters in
:mod:`models.voice` only predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.audio import SAMPLE_RATE
from models.emotion import LABELS
from models.voice import EgemapsExtractor, TransformersVoiceEmotion, VoiceEmotion

# RAVDESS emotion codes (third name field) → canonical labels; calm counts as neutral.
RAVDESS_EMOTIONS: dict[str, str] = {
    "01": "neutral",
    "02": "neutral",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}


def ravdess_label(path: str | Path) -> tuple[str, int]:
    """Canonical emotion and actor number of a RAVDESS file, parsed from its name."""
    fields = Path(path).stem.split("-")
    if len(fields) != 7 or fields[2] not in RAVDESS_EMOTIONS:
        raise ValueError(f"{path}: not a RAVDESS name (modality-channel-emotion-intensity-statement-repetition-actor)")
    return RAVDESS_EMOTIONS[fields[2]], int(fields[6])


def read_audio(path: str | Path) -> np.ndarray:
    """A 16 kHz audio file as mono float32 (channels averaged); other rates are refused, not resampled."""
    import soundfile

    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: {rate} Hz audio; convert to {SAMPLE_RATE} Hz mono first")
    return audio.mean(axis=1)


def classification_scores(true_labels: Sequence[str], probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the classes present in ``true_labels``) and the confusion matrix (rows
    true, columns predicted, in ``labels`` = canonical order) of canonical-order ``probs`` (N × 8)."""
    y_true = np.array([LABELS.index(label) for label in true_labels], dtype=np.int64)
    y_pred = np.argmax(np.asarray(probs), axis=1)
    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    f1s = []
    for k in np.unique(y_true):
        tp = confusion[k, k]
        precision = tp / max(confusion[:, k].sum(), 1)
        recall = tp / confusion[k].sum()
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if y_true.size else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "confusion": confusion.tolist(),
        "labels": list(LABELS),
    }


def evaluate_ravdess(
    model: VoiceEmotion | TransformersVoiceEmotion,
    files: Sequence[str | Path],
    per_speaker: bool = True,
    extractor: EgemapsExtractor | None = None,
) -> dict[str, Any]:
    """Score a categorical voice model on RAVDESS files (labels and actors parsed from the names).

    ``per_speaker`` passes the actor as speaker id so :class:`VoiceEmotion` may normalise per speaker
    (ignored by transformers models). Returns plain types for JSON: ``accuracy``, ``macro_f1`` (over the
    classes present in the files), ``confusion`` (rows true, columns predicted, in ``labels`` order =
    canonical order), ``labels``, ``n`` (files), ``n_scored`` (files with usable speech; the rest are left
    out of the scores) and ``speaker_normalised_share``.
    """
    paths = [Path(f) for f in files]
    truth = [ravdess_label(p) for p in paths]
    audio = [read_audio(p) for p in paths]
    if isinstance(model, VoiceEmotion):
        features = (extractor or EgemapsExtractor()).features(audio)
        speakers = [f"actor{actor:02d}" for _, actor in truth] if per_speaker else None
        result = model.predict(features, speakers)
    else:
        if model.dimensional:
            raise ValueError("evaluate_ravdess needs a categorical model; this checkpoint is dimensional")
        result = model.predict(audio)
    scored = np.all(np.isfinite(result.probs), axis=1)
    scores = classification_scores(
        [label for (label, _), ok in zip(truth, scored, strict=True) if ok], result.probs[scored]
    )
    return {
        **scores,
        "n": len(paths),
        "n_scored": int(scored.sum()),
        "speaker_normalised_share": float(np.mean(result.speaker_normalised[scored])) if scored.any() else 0.0,
    }
