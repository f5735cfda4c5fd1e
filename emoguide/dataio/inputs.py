"""Turn the command line's INPUTs (files, folders, manifests) into a list of sessions.

A manifest is a CSV or Parquet file with a ``path`` column and an optional ``session_id`` column;
relative paths in it are relative to the manifest's folder. Session ids must be unique: ids derived
from file names get a short path hash when two files share a name. The same file given twice is
one session.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from emoguide.dataio.storage import (
    StorageError,
    fingerprint_uri,
    is_uri,
    join_uri,
    list_media,
    local_path,
    object_name,
    open_input,
)

MEDIA_SUFFIXES = frozenset(
    ".mp4 .mov .mkv .avi .webm .mpg .mpeg .m4v .wmv .flv .ts .wav .flac .mp3 .m4a .ogg .opus .aac .wma".split()
)
MANIFEST_SUFFIXES = frozenset({".csv", ".parquet"})
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class InputError(ValueError):
    """An input that cannot be turned into sessions (bad manifest, nothing found)."""


@dataclass(frozen=True)
class SessionInput:
    session_id: str
    path: str


def safe_id(text: str) -> str:
    """``text`` as a session id that is also a safe file name (part files, report pages)."""
    cleaned = _ID_UNSAFE.sub("_", str(text)).strip("._")
    return cleaned or "session"


def _name(path: Path | str) -> str:
    """File or object name of a local path or URI."""
    return object_name(str(path)) if is_uri(path) else Path(path).name


def read_manifest(path: Path | str) -> list[tuple[str | None, Path | str]]:
    """(session_id or None, media path or object URI) per row of a manifest, itself local or a URI."""
    try:
        source = open_input(str(path)) if is_uri(path) else path
        table = pq.read_table(source) if _name(path).lower().endswith(".parquet") else pacsv.read_csv(source)
    except Exception as exc:  # pyarrow raises several types for malformed files
        raise InputError(f"{path}: cannot read manifest ({exc})") from exc
    if "path" not in table.column_names:
        raise InputError(f"{path}: manifest needs a 'path' column (found: {', '.join(table.column_names)})")
    paths = table.column("path").to_pylist()
    ids = table.column("session_id").to_pylist() if "session_id" in table.column_names else [None] * len(paths)
    out: list[tuple[str | None, Path | str]] = []
    for i, (sid, p) in enumerate(zip(ids, paths, strict=True)):
        if p is None or not str(p).strip():
            raise InputError(f"{path}: row {i + 1} has an empty path")
        sid = None if sid is None or str(sid).strip() == "" else str(sid)
        entry = local_path(str(p))
        if is_uri(entry):
            out.append((sid, entry))
            continue
        media = Path(entry).expanduser()
        if media.is_absolute():
            out.append((sid, media))
        else:  # relative to the manifest's folder, or to its prefix for a manifest in a bucket
            out.append((sid, join_uri(str(path), entry) if is_uri(path) else Path(path).parent / media))
    return out


def collect_sessions(inputs: list[str]) -> list[SessionInput]:
    """Expand inputs into unique sessions, in the order given.

    A command-line path that does not exist is an ``InputError`` (a usage error, raised before Ray
    starts: a typo must not cost a cluster start-up). A file listed in a manifest that is missing is
    kept and becomes a failed session with its reason, so one bad row never stops a batch; so does
    an existing file that cannot be decoded.
    """
    found: list[tuple[str | None, Path | str]] = []
    missing: list[str] = []
    for raw in inputs:
        if is_uri(raw):  # object-store URIs stay URIs: workers read them from the store
            if PurePosixPath(object_name(raw)).suffix.lower() in MANIFEST_SUFFIXES:
                found.extend(read_manifest(raw))
                continue
            try:
                found.extend((None, uri) for uri in list_media(raw, MEDIA_SUFFIXES))
            except StorageError as exc:  # no such bucket, no credentials: nothing in it can run
                raise InputError(str(exc)) from exc
            continue
        p = Path(local_path(raw)).expanduser()
        if p.is_dir():
            found.extend((None, f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES)
        elif p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file():
            found.extend(read_manifest(p))
        elif os.path.lexists(p):
            found.append((None, p))
        else:
            missing.append(raw)
    if missing:
        raise InputError(f"no such file or folder: {', '.join(missing)}")
    if not found:
        raise InputError(f"no media files found in: {', '.join(inputs)}")

    unique: dict[str, str | None] = {}  # absolute path or URI -> session id given for it (first wins)
    for given, src in found:
        unique.setdefault(str(src) if is_uri(src) else os.path.abspath(src), given)
    stems: dict[str, int] = {}
    for resolved, sid in unique.items():
        if sid is None:
            stem = safe_id(PurePosixPath(_name(resolved)).stem)
            stems[stem] = stems.get(stem, 0) + 1

    sessions: list[SessionInput] = []
    used: set[str] = set()
    for resolved, sid in unique.items():
        if sid is None:
            sid = safe_id(PurePosixPath(_name(resolved)).stem)
            if stems[sid] > 1:
                sid = f"{sid}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
        else:
            sid = safe_id(sid)
        if sid in used:
            raise InputError(f"session id {sid!r} is used by two different inputs; give unique session_id values")
        used.add(sid)
        sessions.append(SessionInput(sid, resolved))
    return sessions


def fingerprint(path: str | os.PathLike[str], block: int = 4 << 20) -> str:
    """Content fingerprint of an input for resume: size plus hashes of its first, middle and last 4 MiB.

    Hashing whole multi-GB videos would cost minutes per batch; the sampled hash still changes when
    a file is replaced or re-encoded. Objects in a store are fingerprinted from their metadata instead.
    """
    if is_uri(path):
        return fingerprint_uri(os.fspath(path))
    p = Path(path)
    try:
        size = p.stat().st_size
        h = hashlib.sha256(str(size).encode())
        with open(p, "rb") as fh:
            for offset in sorted({0, max(0, size // 2 - block // 2), max(0, size - block)}):
                fh.seek(offset)
                h.update(fh.read(block))
    except OSError:
        return "unreadable"
    return h.hexdigest()[:16]
