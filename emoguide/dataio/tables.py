"""The output contract (column names and types) and atomic, owner-only Parquet writing.

Every session is first written as its own part files under ``DIR/parts/`` the moment it finishes,
so a crash loses at most the sessions in flight and a re-run can skip finished ones; the run's
tables are then merged from the parts. Every file appears under its final name only when complete
(temp file in the same folder, fsync, rename), and is readable by its owner alone: sessions are
health data.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from models.emotion import LABELS
from models.voice import PROSODY_KEYS

WORD = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("word", pa.string()), ("probability", pa.float64())])
PROSODY = pa.struct([(k, pa.float64()) for k in PROSODY_KEYS])

MOMENT = pa.struct(
    [
        ("utt_id", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("score", pa.float64()),
        ("label", pa.string()),
    ]
)

TURN = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("speaker", pa.string())])

SESSIONS = pa.schema(
    [
        ("session_id", pa.string()),
        ("source_path", pa.string()),
        ("status", pa.string()),  # ok | failed | partial
        ("error", pa.string()),  # null when ok
        ("failed_stage", pa.string()),
        ("note", pa.string()),  # e.g. "no speech found"; not an error
        ("duration_s", pa.float64()),
        ("n_utterances", pa.int32()),
        ("n_speakers", pa.int32()),
        ("role_confidence", pa.float64()),  # 0..1; below speakers.min_role_confidence roles are "unknown"
        ("speaker_turns", pa.list_(TURN)),  # who speaks when (diarization, like an RTTM file)
        ("face_attribution", pa.string()),  # JSON: people seen, speaker -> person, method, synchrony
        ("dissonance_rate", pa.float64()),
        ("dissonance_longest_run", pa.int32()),  # consecutive dissonant client utterances
        ("dissonance_longest_run_s", pa.float64()),
        ("dissonance_top", pa.list_(MOMENT)),  # the most dissonant moments, by score
        ("config_hash", pa.string()),
        ("input_fingerprint", pa.string()),
        ("models", pa.string()),  # JSON: slot -> {name, source, version}
        ("wall_s", pa.float64()),
    ]
)

UTTERANCES = pa.schema(
    [
        ("session_id", pa.string()),
        ("utt_id", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("speaker", pa.string()),
        ("role", pa.string()),  # therapist | client | unknown
        ("text", pa.string()),
        ("words", pa.list_(WORD)),
        ("asr_logprob", pa.float64()),
        # what the decoder needed: redecoded (a loop or too many words, decoded again with seeded
        # temperature fallback), implausible_text (still so after it), words_outside_speech_dropped
        ("asr_flags", pa.list_(pa.string())),
        ("face_person", pa.int32()),  # whose face the face columns show (face_attribution); null: nobody's
        ("face_coverage", pa.float64()),
        ("face_probs", pa.list_(pa.float32(), len(LABELS))),
        ("face_valence", pa.float64()),
        ("face_arousal", pa.float64()),
        ("face_confidence", pa.float64()),  # top probability of face_probs
        ("voice_probs", pa.list_(pa.float32(), len(LABELS))),
        ("voice_valence", pa.float64()),
        ("voice_arousal", pa.float64()),
        ("voice_confidence", pa.float64()),  # top probability of voice_probs; 0: speech out of the model's domain
        ("prosody", PROSODY),
        ("dissonance", pa.bool_()),
        ("dissonance_score", pa.float64()),
        ("dissonance_label", pa.string()),  # direction, e.g. "happy face, distressed voice"
        ("dissonance_reason", pa.string()),  # why dissonance is null: therapist, no face, face unsure, ...
    ]
)

INTERVENTIONS = pa.schema(
    [
        ("session_id", pa.string()),
        ("utt_id", pa.string()),  # the client turn's last utterance
        ("condition", pa.string()),  # text | face | voice | multimodal | dissonance
        ("prompt", pa.string()),  # JSON chat messages
        ("generation", pa.string()),  # null when generation failed (see error)
        ("reference", pa.string()),  # the therapist's actual next turn
        ("model", pa.string()),
        ("params", pa.string()),  # JSON sampling parameters
        ("template", pa.string()),
        ("n_generated_tokens", pa.int32()),
        ("error", pa.string()),
        ("generation_hash", pa.string()),
        ("cue", pa.string()),  # the emotion cue lines the prompt carried ('' in the text condition)
        ("turn_utt_ids", pa.list_(pa.string())),  # every utterance of the client turn, in order
    ]
)

TABLES = {"sessions": SESSIONS, "utterances": UTTERANCES, "interventions": INTERVENTIONS}


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (missing keys become null) as a table that matches ``schema`` exactly."""
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


@contextmanager
def open_atomic(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """A file that appears under ``path`` only when complete (temp file in the same folder, fsync,
    rename) and is readable by its owner alone; on an error nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write a Parquet file so that readers see either nothing or the complete file."""
    with open_atomic(path) as fh:
        pq.write_table(table, fh)
    return Path(path)


def part_paths(out_dir: Path, session_id: str) -> dict[str, Path]:
    """Where one session's part files live (one per table)."""
    return {name: out_dir / "parts" / f"{session_id}.{name}.parquet" for name in TABLES}


def write_session_parts(out_dir: Path, session_id: str, tables: dict[str, pa.Table]) -> None:
    """Write a finished session's parts; the sessions part goes last so it marks completion."""
    paths = part_paths(out_dir, session_id)
    paths["interventions"].unlink(missing_ok=True)  # made from the old utterances: stale now
    for name in sorted(tables, key=lambda n: n == "sessions"):
        write_atomic(tables[name], paths[name])


def read_session_part(out_dir: Path, session_id: str) -> dict | None:
    """The finished session's row from an earlier run, or None when there is none."""
    path = part_paths(out_dir, session_id)["sessions"]
    if not path.exists():
        return None
    rows = pq.read_table(path).to_pylist()
    return rows[0] if rows else None


def read_generation_hash(out_dir: Path, session_id: str) -> str | None:
    """The generation settings an existing interventions part was made with (None: no part)."""
    path = part_paths(out_dir, session_id)["interventions"]
    if not path.exists():
        return None
    metadata = pq.read_schema(path).metadata or {}
    return metadata.get(b"generation_hash", b"").decode() or None


def write_interventions_part(out_dir: Path, session_id: str, rows: list[dict], generation_hash: str) -> None:
    """One session's interventions, stamped with the settings that made them (for resume)."""
    table = to_table(rows, INTERVENTIONS)
    table = table.replace_schema_metadata({"generation_hash": generation_hash})
    write_atomic(table, part_paths(out_dir, session_id)["interventions"])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part as ``schema``: a part written before a column was added (columns are only ever added)
    gets it as nulls, so an earlier run folder still resumes."""
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def merge_parts(out_dir: Path, session_ids: list[str], tables: tuple[str, ...] = tuple(TABLES)) -> dict[str, Path]:
    """Build the run's tables from the given sessions' parts, in input order."""
    written = {}
    for name in tables:
        schema = TABLES[name]
        pieces = []
        for sid in session_ids:
            path = part_paths(out_dir, sid)[name]
            if path.exists():
                pieces.append(_conform(pq.read_table(path).replace_schema_metadata(None), schema))
        table = pa.concat_tables(pieces) if pieces else schema.empty_table()
        written[name] = write_atomic(table, out_dir / f"{name}.parquet")
    return written
