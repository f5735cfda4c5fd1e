"""Per-session reduction: the chunk rows of one session become its output rows (no Ray here).

The pipeline's stages work on chunks; once every chunk of a session has come back, this module
assembles the session's utterances (ASR segments, in time order), attaches each channel's
per-utterance values, and decides the session's status. A stage error on any chunk fails the session
when nothing usable came before it, and makes it ``partial`` otherwise: work is never silently lost.
"""

from __future__ import annotations

from typing import Any


def session_status(chunks: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """(status, error, failed_stage) from a session's chunk rows, in chunk order."""
    failed = [c for c in chunks if c.get("error")]
    if not failed:
        return "ok", None, None
    first = failed[0]
    usable_before = any(not c.get("error") for c in chunks[: chunks.index(first)])
    return ("partial" if usable_before else "failed"), first["error"], first.get("failed_stage")


def build_utterances(session_id: str, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ASR segment of the usable chunks, ids in time order."""
    rows: list[dict[str, Any]] = []
    for chunk in chunks:
        if chunk.get("error"):
            continue
        for seg in chunk.get("segments") or []:
            rows.append(
                {
                    "session_id": session_id,
                    "start_s": float(seg["start"]),
                    "end_s": float(seg["end"]),
                    "speaker": None,
                    "role": "unknown",
                    "text": seg["text"],
                    "words": list(seg["words"]),
                    "asr_logprob": float(seg["avg_logprob"]),
                }
            )
    rows.sort(key=lambda r: (r["start_s"], r["end_s"]))
    for i, row in enumerate(rows):
        row["utt_id"] = f"{session_id}-u{i:05d}"
    return rows


def reduce_session(
    session: dict[str, Any], chunks: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``sessions`` row and ``utterances`` rows of one session.

    ``session`` carries the run-level fields (session_id, source_path, config_hash, models, ...);
    ``chunks`` are the stage outputs of this session in any order.
    """
    chunks = sorted(chunks, key=lambda c: c["chunk_index"])
    status, error, stage = session_status(chunks)
    utterances = build_utterances(session["session_id"], chunks)
    usable = [c for c in chunks if not c.get("error")]
    duration = max((float(c["end_s"]) for c in usable), default=None)
    note = None
    if status == "ok" and not utterances:
        note = "no speech found"
    row = {
        **session,
        "status": status,
        "error": error,
        "failed_stage": stage,
        "note": note,
        "duration_s": duration,
        "n_utterances": len(utterances),
        "dissonance_rate": None,
    }
    return row, utterances
