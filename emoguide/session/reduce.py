"""Per-session reduction: the chunk rows of one session become its output rows (no Ray here).

The pipeline's stages work on chunks; once every chunk of a session has come back, this module

1. clusters the session's speaker embeddings, gives every word a speaker (S0, S1, ...) and lays out
   the session's speaker turns;
2. splits ASR segments where the speaker changes, so one utterance has one speaker;
3. assigns therapist / client roles from the whole session;
4. attaches each channel's per-utterance values (face over the utterance's frames, voice from its
   eGeMAPS features with per-speaker normalisation) and the dissonance;
5. decides the session's status: a stage error on a chunk fails the session when nothing usable came
   before it, and makes it ``partial`` otherwise: work is never silently lost.

All of this needs the whole session (clustering, per-speaker statistics, roles), which is why it
happens here and not in a stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from emoguide.session import dissonance
from emoguide.session.face_tracks import FaceAttribution, attribute
from emoguide.session.redact import redact, redact_words
from emoguide.session.roles import assign_roles
from models.emotion import confidence
from models.face import AllFaces, FaceFrames, aggregate
from models.speakers.clustering import (
    CAMPP_DISTANCE_THRESHOLD,
    assign_words,
    cluster_speakers,
    speaker_turns,
    split_by_speaker,
)
from models.voice import VoiceEmotion, prosody
from models.whisper_voice import WhisperVoiceEmotion, pool_moments

if TYPE_CHECKING:  # the settings are built by ray_jobs.config; the reducer only reads them
    from ray_jobs.config import RunConfig

N_EGEMAPS = 88
# Features for utterance spans (start, end) in session seconds: used for utterances made by splitting
# an ASR segment, whose own audio the voice stage never saw.
SpanFeatures = Callable[[Sequence[tuple[float, float]]], np.ndarray]


def session_status(chunks: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """(status, error, failed_stage) from a session's chunk rows, in chunk order."""
    failed = [c for c in chunks if c.get("error")]
    if not failed:
        return "ok", None, None
    first = failed[0]
    usable_before = any(not c.get("error") for c in chunks[: chunks.index(first)])
    return ("partial" if usable_before else "failed"), first["error"], first.get("failed_stage")


def _segments(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ASR segments of the usable chunks in time order, each with its voice stage outputs."""
    out = []
    for chunk in chunks:
        features = np.asarray(chunk.get("voice_features"), dtype=np.float32).reshape(-1, N_EGEMAPS)
        ser = chunk.get("voice_probs") is not None  # a transformers speech-emotion model ran in the stage
        for i, seg in enumerate(chunk.get("segments") or []):
            voice = (chunk["voice_probs"][i], chunk["voice_valence"][i], chunk["voice_arousal"][i]) if ser else None
            words = [{**w, "index": k} for k, w in enumerate(seg["words"])]  # index: for the word moments
            out.append({**seg, "words": words, "features": features[i], "ser": voice})
    return sorted(out, key=lambda s: (s["start"], s["end"]))


def _speaker_windows(chunks: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    windows = [np.asarray(c["speaker_windows"], np.float64).reshape(-1, 2) for c in chunks if "speaker_windows" in c]
    embeddings = [np.asarray(c["speaker_embeddings"], np.float32) for c in chunks if "speaker_embeddings" in c]
    if not windows or not sum(len(w) for w in windows):
        return np.zeros((0, 2)), np.zeros((0, 1), np.float32)
    return np.concatenate(windows), np.concatenate(
        [e.reshape(len(w), -1) for w, e in zip(windows, embeddings, strict=True)]
    )


def diarize(
    segments: list[dict[str, Any]], windows: np.ndarray, embeddings: np.ndarray, config: RunConfig
) -> list[tuple[float, float, str]]:
    """Set ``speaker`` on every word of ``segments``; return the session's speaker turns."""
    words = [w for seg in segments for w in seg["words"]]
    if not len(windows) or not np.isfinite(embeddings).all(axis=1).any():
        return []
    sp = config.speakers
    threshold = CAMPP_DISTANCE_THRESHOLD if sp.distance_threshold is None else sp.distance_threshold
    labels = cluster_speakers(embeddings, sp.num_speakers, sp.min_speakers, sp.max_speakers, threshold)
    window_times = [tuple(w) for w in windows]
    speakers = assign_words(words, window_times, labels)
    for word, speaker in zip(words, speakers, strict=True):
        word["speaker"] = speaker
    return speaker_turns(window_times, labels, words, speakers)


def build_utterances(
    session_id: str, segments: list[dict[str, Any]], redact_text: bool = False
) -> tuple[list[dict[str, Any]], np.ndarray, list[int], np.ndarray]:
    """Utterance rows (segments split at speaker changes), their eGeMAPS features, the indices of
    utterances that came from a split (their eGeMAPS features are NaN until re-extracted), and their
    pooled Whisper encoder frames (:func:`_stack`; no columns where the ASR stage kept none).

    With ``redact_text`` the text and word tokens are redacted here, before anything downstream
    (tables, prompts, logs) can see them.
    """
    rows: list[dict[str, Any]] = []
    features: list[np.ndarray] = []
    embeddings: list[np.ndarray | None] = []
    split: list[int] = []
    for seg in segments:
        parts = split_by_speaker(seg)
        for part in parts:
            if len(parts) > 1:
                split.append(len(rows))
            words = [{k: w[k] for k in ("start", "end", "word", "probability")} for w in part["words"]]
            row = {
                "session_id": session_id,
                "utt_id": f"{session_id}-u{len(rows):05d}",
                "start_s": float(part["start"]),
                "end_s": float(part["end"]),
                "speaker": part["speaker"],
                "text": redact(part["text"]) if redact_text else part["text"],
                "words": redact_words(words) if redact_text else words,
                "asr_logprob": float(seg["avg_logprob"]),
                "asr_flags": list(seg.get("flags") or []),
            }
            if seg["ser"] is not None and len(parts) == 1:
                row.update(_voice_columns(*seg["ser"]))
            rows.append(row)
            features.append(seg["features"] if len(parts) == 1 else np.full(N_EGEMAPS, np.nan, np.float32))
            embeddings.append(_part_embedding(seg, part, whole=len(parts) == 1))
    matrix = np.stack(features) if rows else np.zeros((0, N_EGEMAPS), np.float32)
    return rows, matrix, split, _stack(embeddings)


def _part_embedding(segment: dict[str, Any], part: dict[str, Any], whole: bool) -> np.ndarray | None:
    """Pooled encoder frames of an utterance: the ASR stage's own for a whole segment, or pooled from
    the word moments of the part's words for a part cut off at a speaker change."""
    if whole or segment.get("voice_word_moments") is None:
        return segment.get("voice_embedding") if whole else None
    moments = np.asarray(segment["voice_word_moments"], np.float64)
    return pool_moments(moments[[w["index"] for w in part["words"]]])


def _stack(pooled: list[np.ndarray | None]) -> np.ndarray:
    """Rows of pooled encoder frames as N × 2d, NaN where an utterance has none."""
    width = next((len(p) for p in pooled if p is not None), 0)
    out = np.full((len(pooled), width), np.nan, np.float32)
    for i, p in enumerate(pooled):
        if p is not None:
            out[i] = p
    return out


def _voice_columns(probs: np.ndarray, valence: float, arousal: float, out_of_domain: bool = False) -> dict[str, Any]:
    """Voice columns of one utterance; NaN (no usable speech) becomes null, never a guess. Speech out
    of the model's domain gets confidence 0: its probabilities are kept, but dissonance leaves it out."""
    probs = np.asarray(probs, dtype=np.float32)
    known = bool(np.all(np.isfinite(probs)))
    return {
        "voice_probs": [float(p) for p in probs] if known else None,
        "voice_valence": float(valence) if np.isfinite(valence) else None,
        "voice_arousal": float(arousal) if np.isfinite(arousal) else None,
        "voice_confidence": (dissonance.OUT_OF_DOMAIN_CONFIDENCE if out_of_domain else float(confidence(probs)))
        if known
        else None,
    }


def session_faces(chunks: list[dict[str, Any]], max_faces: int) -> tuple[np.ndarray, AllFaces]:
    """Every face of every sampled frame of the whole session (frame times, AllFaces), from its usable chunks."""
    usable = [c for c in chunks if c.get("face_count") is not None]
    if not usable:
        return np.zeros(0), AllFaces.empty(0, max_faces)
    parts = {
        name: np.concatenate([np.asarray(c[f"face_{name}"]) for c in usable]) for name in AllFaces.__dataclass_fields__
    }
    return np.concatenate([np.asarray(c["frame_times"], np.float64) for c in usable]), AllFaces(**parts)


def face_columns(
    utterances: list[dict[str, Any]],
    frame_times: np.ndarray,
    faces: AllFaces,
    who: FaceAttribution,
    client: str | None,
) -> None:
    """Set each utterance's face columns from the client's face, or from its own speaker's face where the
    session has no known client (a monologue, roles unknown); ``face_person`` says which person it was."""
    views: dict[int | None, FaceFrames] = {}
    for utt in utterances:
        person = who.speaker_person.get(client if client is not None else utt["speaker"])
        if person not in views:
            views[person] = faces.pick(who.slots(person))
        utt.update(aggregate(frame_times, views[person], utt["start_s"], utt["end_s"]))
        utt["face_person"] = person


def reduce_session(
    session: dict[str, Any],
    chunks: list[dict[str, Any]],
    config: RunConfig,
    voice: VoiceEmotion | WhisperVoiceEmotion | None = None,
    span_features: SpanFeatures | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``sessions`` row and ``utterances`` rows of one session.

    ``session`` carries the run-level fields (session_id, source_path, config_hash, models, ...);
    ``chunks`` are the stage outputs of this session in any order; ``voice`` is the offline emotion
    model, on eGeMAPS features or on the Whisper encoder frames the ASR stage pooled per utterance
    (None when a transformers model scored the utterances in the stage);
    ``span_features`` re-extracts eGeMAPS features for utterances made by splitting a segment (their
    voice columns stay null without it).
    """
    chunks = sorted(chunks, key=lambda c: c["chunk_index"])
    status, error, stage = session_status(chunks)
    usable = [c for c in chunks if not c.get("error")]

    segments = _segments(usable)
    turns = diarize(segments, *_speaker_windows(usable), config)
    utterances, features, split, embeddings = build_utterances(session["session_id"], segments, config.redact)
    if split and span_features is not None:
        features[split] = span_features([(utterances[i]["start_s"], utterances[i]["end_s"]) for i in split])

    # The override names a label from an earlier look at this session; where the label does not occur
    # (another session of the batch, a monologue) roles are inferred as usual.
    override = config.speakers.therapist_speaker
    if override not in {u["speaker"] for u in utterances}:
        override = None
    roles = assign_roles(utterances, override, config.speakers.min_role_confidence)
    for utt, pros in zip(utterances, prosody(features), strict=True):
        utt["role"] = roles.role_for(utt["speaker"])
        utt["prosody"] = pros
    frame_times, faces = session_faces(usable, config.face.max_faces)
    who = attribute(frame_times, faces, [w for seg in segments for w in seg["words"]])
    client = next((u["speaker"] for u in utterances if u["role"] == "client"), None)
    face_columns(utterances, frame_times, faces, who, client)
    if voice is not None and utterances:
        inputs = embeddings if isinstance(voice, WhisperVoiceEmotion) else features
        result = voice.predict(inputs, [u["speaker"] for u in utterances])
        for i, utt in enumerate(utterances):
            ood = bool(result.out_of_domain[i]) if result.out_of_domain is not None else False
            utt.update(_voice_columns(result.probs[i], result.valence[i], result.arousal[i], ood))
    d = config.dissonance
    dissonance.annotate(utterances, d.threshold, d.min_face_confidence, d.min_voice_confidence)

    note = "no speech found" if status == "ok" and not utterances else None
    row = {
        **session,
        "status": status,
        "error": error,
        "failed_stage": stage,
        "note": note,
        "duration_s": max((float(c["end_s"]) for c in usable), default=None),
        "n_utterances": len(utterances),
        "n_speakers": len({t[2] for t in turns} | {u["speaker"] for u in utterances if u["speaker"]}),
        "speaker_turns": [{"start_s": a, "end_s": b, "speaker": spk} for a, b, spk in turns],
        "role_confidence": roles.confidence if utterances else None,
        "face_attribution": who.record(),
        **dissonance.session_summary(utterances),
    }
    return row, utterances
