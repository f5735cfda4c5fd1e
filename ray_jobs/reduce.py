"""Per-session reduction: the chunk rows of one session become its output rows (no Ray here).

The pipeline's stages work on chunks; once every chunk of a session has come back, this module
assembles the session's utterances (ASR segments, in time order), attaches each channel's
per-utterance values, and decides the session's status. A stage error on any chunk fails the session
when nothing usable came before it, and makes it ``partial`` otherwise: work is never silently lost.
Session-wide context is why this happens here and not in a stage: the offline voice model normalises
each speaker with statistics over the whole session.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.emotion import LABELS
from models.face import FaceFrames, aggregate
from models.voice import VoiceEmotion, prosody
from ray_jobs import dissonance
from ray_jobs.redact import redact, redact_words


def session_status(chunks: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """(status, error, failed_stage) from a session's chunk rows, in chunk order."""
    failed = [c for c in chunks if c.get("error")]
    if not failed:
        return "ok", None, None
    first = failed[0]
    usable_before = any(not c.get("error") for c in chunks[: chunks.index(first)])
    return ("partial" if usable_before else "failed"), first["error"], first.get("failed_stage")


def build_utterances(
    session_id: str, chunks: list[dict[str, Any]], redact_text: bool = False
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """One row per ASR segment of the usable chunks, ids in time order, and their eGeMAPS features (N × 88).

    With ``redact_text`` the text and word tokens are redacted here, before anything downstream
    (tables, prompts, logs) can see them.
    """
    rows: list[dict[str, Any]] = []
    features: list[np.ndarray] = []
    for chunk in chunks:
        if chunk.get("error"):
            continue
        chunk_features = np.asarray(chunk.get("voice_features"), dtype=np.float32)
        ser = chunk.get("voice_probs") is not None  # a transformers speech-emotion model ran in the stage
        for i, seg in enumerate(chunk.get("segments") or []):
            row = {
                "session_id": session_id,
                "start_s": float(seg["start"]),
                "end_s": float(seg["end"]),
                "speaker": None,
                "role": "unknown",
                "text": redact(seg["text"]) if redact_text else seg["text"],
                "words": redact_words(list(seg["words"])) if redact_text else list(seg["words"]),
                "asr_logprob": float(seg["avg_logprob"]),
            }
            if ser:
                row.update(_voice_columns(chunk["voice_probs"][i], chunk["voice_valence"][i], chunk["voice_arousal"][i]))
            rows.append(row)
            features.append(chunk_features[i])
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["start_s"], rows[i]["end_s"]))
    rows = [rows[i] for i in order]
    for i, row in enumerate(rows):
        row["utt_id"] = f"{session_id}-u{i:05d}"
    matrix = np.stack([features[i] for i in order]) if rows else np.zeros((0, 88), np.float32)
    return rows, matrix


def _voice_columns(probs: np.ndarray, valence: float, arousal: float) -> dict[str, Any]:
    """Voice columns of one utterance; NaN (no usable speech) becomes null, never a guess."""
    probs = np.asarray(probs, dtype=np.float32)
    return {
        "voice_probs": [float(p) for p in probs] if np.all(np.isfinite(probs)) else None,
        "voice_valence": float(valence) if np.isfinite(valence) else None,
        "voice_arousal": float(arousal) if np.isfinite(arousal) else None,
    }


def session_faces(chunks: list[dict[str, Any]]) -> tuple[np.ndarray, FaceFrames]:
    """Per-frame face results of the whole session (frame times, FaceFrames), from its usable chunks."""
    usable = [c for c in chunks if not c.get("error") and c.get("face_found") is not None]

    def cat(key: str, width: int | None = None, dtype: type = np.float32) -> np.ndarray:
        tail = (width,) if width else ()
        parts = [np.asarray(c[key], dtype=dtype).reshape(-1, *tail) for c in usable]
        return np.concatenate(parts) if parts else np.zeros((0, *tail), dtype)

    faces = FaceFrames(
        cat("face_found", dtype=bool), cat("face_boxes", 4), cat("face_scores"),
        cat("face_probs", len(LABELS)), cat("face_valence"), cat("face_arousal"),
    )
    return cat("frame_times", dtype=np.float64), faces


def reduce_session(
    session: dict[str, Any],
    chunks: list[dict[str, Any]],
    voice: VoiceEmotion | None = None,
    threshold: float = dissonance.DEFAULT_THRESHOLD,
    redact_text: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``sessions`` row and ``utterances`` rows of one session.

    ``session`` carries the run-level fields (session_id, source_path, config_hash, models, ...);
    ``chunks`` are the stage outputs of this session in any order; ``voice`` is the offline eGeMAPS
    emotion model (None when a transformers model already scored the utterances in the stage);
    ``threshold`` is the dissonance rule's valence/arousal gap; ``redact_text`` applies ``--redact``.
    """
    chunks = sorted(chunks, key=lambda c: c["chunk_index"])
    status, error, stage = session_status(chunks)
    utterances, features = build_utterances(session["session_id"], chunks, redact_text)

    frame_times, faces = session_faces(chunks)
    for utt, pros in zip(utterances, prosody(features), strict=True):
        utt.update(aggregate(frame_times, faces, utt["start_s"], utt["end_s"]))
        utt["prosody"] = pros
    if voice is not None and utterances:
        result = voice.predict(features, [u["speaker"] for u in utterances])
        for i, utt in enumerate(utterances):
            utt.update(_voice_columns(result.probs[i], result.valence[i], result.arousal[i]))
    dissonance.annotate(utterances, threshold)

    usable = [c for c in chunks if not c.get("error")]
    note = "no speech found" if status == "ok" and not utterances else None
    row = {
        **session,
        "status": status,
        "error": error,
        "failed_stage": stage,
        "note": note,
        "duration_s": max((float(c["end_s"]) for c in usable), default=None),
        "n_utterances": len(utterances),
        **dissonance.session_summary(utterances),
    }
    return row, utterances
