"""Object-store inputs and outputs (s3://, gs://, anything ``pyarrow.fs.FileSystem.from_uri`` accepts).

A cluster run reads sessions from a bucket and writes its results back to one. The rest of the
pipeline keeps working on local files, because PyAV needs a seekable local file and the output code
relies on atomic renames, which object stores do not have:

- an input object is streamed to a local temp file for the duration of its decoding (``localize``);
- an output URI is worked on in a local staging folder, filled first with the run's earlier part
  files so that resume works across runs, and synced back on exit (``staged_output``). Each object
  is written with one ``open_output_stream``, which S3 and GCS publish atomically on close: readers
  never see half an object.

Credentials, region and endpoint come from the URI's query (``?endpoint_override=HOST:PORT&scheme=http``)
or the usual environment (``AWS_*``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``). Listed
objects keep the query of the URI they were found under, so a worker on another node opens them the
same way.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pyarrow.fs as pafs

BLOCK = 8 << 20  # copy granularity: memory stays bounded however large the video
_UPLOAD_THREADS = 8  # part files are small: latency, not bandwidth, bounds a sync
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # two letters at least: "C://x" is a Windows path


class StorageError(OSError):
    """An object that cannot be read or written; the message names the URI, never the bucket path alone."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.path = uri


def is_uri(s: str | os.PathLike[str]) -> bool:
    """True for an object-store URI; local paths and ``file://`` URIs are local files."""
    s = os.fspath(s)
    return bool(_SCHEME.match(s)) and not s.lower().startswith("file://")


def local_path(s: str | os.PathLike[str]) -> str:
    """A local path for ``s``: ``file:///a%20b`` becomes ``/a b``; anything else is returned as is."""
    s = os.fspath(s)
    return unquote(urlsplit(s).path) if s.lower().startswith("file://") else s


def object_name(uri: str) -> str:
    """The last component of the URI's path (``s3://b/in/x.mp4?region=r`` → ``x.mp4``), for session ids."""
    return PurePosixPath(unquote(urlsplit(uri).path)).name


def _open(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:  # unknown scheme, malformed URI, unreachable bucket region
        raise StorageError(uri, f"cannot open ({exc})") from exc


def _with_path(uri: str, path: str) -> str:
    """``uri`` with its path replaced (``path`` unencoded), keeping scheme, host and query."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, quote(path), parts.query, ""))


def join_uri(uri: str, relative: str) -> str:
    """``relative`` resolved against the folder of the object ``uri`` (a manifest's relative entries)."""
    folder = posixpath.dirname(unquote(urlsplit(uri).path))
    return _with_path(uri, posixpath.normpath(posixpath.join(folder, relative)))


def list_media(uri: str, suffixes: Collection[str]) -> list[str]:
    """Object URIs under a prefix (recursive, sorted) whose suffix is in ``suffixes`` (lower case, with
    the dot); a URI that is not a prefix is returned as is, so a missing object becomes a failed session."""
    fs, root = _open(uri)
    try:
        info = fs.get_file_info(root)
        if info.type != pafs.FileType.Directory:
            return [uri]
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise StorageError(uri, f"cannot list ({exc})") from exc
    base = unquote(urlsplit(uri).path).rstrip("/")
    return sorted(
        _with_path(uri, base + f.path[len(root.rstrip("/")) :])
        for f in found
        if f.type == pafs.FileType.File and PurePosixPath(f.path).suffix.lower() in suffixes
    )


def fingerprint_uri(uri: str) -> str:
    """Resume fingerprint of an object: its size and modification time.

    Hashing sampled bytes, as for local files, would download parts of every input on every run; an
    object replaced or re-uploaded gets a new modification time. (pyarrow exposes no ETag.)
    """
    try:
        fs, path = _open(uri)
        info = fs.get_file_info(path)
    except OSError:
        return "unreadable"
    if info.type != pafs.FileType.File:
        return "unreadable"
    return hashlib.sha256(f"{info.size}:{info.mtime_ns}".encode()).hexdigest()[:16]


def open_input(uri: str) -> pafs.NativeFile:
    """A seekable reader for one object (for manifests: small files that pyarrow reads directly)."""
    fs, path = _open(uri)
    try:
        return fs.open_input_file(path)
    except OSError as exc:
        raise StorageError(uri, f"cannot read ({exc})") from exc


@contextmanager
def localize(uri: str, tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """The object copied to a private local temp file (kept only inside the ``with``).

    PyAV needs a local seekable file. The copy streams in ``BLOCK``-sized pieces, so memory stays
    bounded for multi-GB videos; the suffix is kept, as some demuxers use it as a hint.
    """
    fs, path = _open(uri)
    fd, tmp = tempfile.mkstemp(prefix="emoguide-", suffix=PurePosixPath(path).suffix, dir=tmp_dir)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with fs.open_input_stream(path) as src:
                    while block := src.read(BLOCK):
                        out.write(block)
            except FileNotFoundError as exc:
                raise StorageError(uri, "object does not exist") from exc
            except OSError as exc:
                raise StorageError(uri, f"cannot download ({exc})") from exc
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path → (size, mtime_ns) of finished files; dot files are ``open_atomic`` temp files."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def _upload(fs: pafs.FileSystem, local: Path, dest: str) -> None:
    with open(local, "rb") as src, fs.open_output_stream(dest) as out:
        shutil.copyfileobj(src, out, BLOCK)


def _sync(fs: pafs.FileSystem, root: str, stage: Path, before: dict[str, tuple[int, int]], out: str) -> None:
    """Mirror the stage's changes to the store, in the order local writes promise to readers.

    Deleted files first (a redone session's stale interventions part must not come back on the next
    download), then new or changed parts, then each session's ``sessions`` part (it marks the session
    complete), then the merged tables, built from those parts.
    """
    after = _state(stage)
    try:
        for rel in sorted(before.keys() - after.keys()):
            fs.delete_file(f"{root}/{rel}")
        changed = [rel for rel, state in after.items() if before.get(rel) != state]
        phases = (
            [r for r in changed if r.startswith("parts/") and not r.endswith(".sessions.parquet")],
            [r for r in changed if r.startswith("parts/") and r.endswith(".sessions.parquet")],
            [r for r in changed if not r.startswith("parts/")],
        )
        with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
            for phase in phases:
                list(pool.map(lambda rel: _upload(fs, stage / rel, f"{root}/{rel}"), sorted(phase)))
    except OSError as exc:
        raise StorageError(out, f"cannot upload results ({exc})") from exc


@contextmanager
def staged_output(out: str | os.PathLike[str]) -> Iterator[Path]:
    """The local folder to run into: ``out`` itself when local, else a staging folder synced to ``out``.

    For a URI, the folder starts with the run's existing ``parts/`` (resume reads them) and every
    file added, changed or removed in it is mirrored to the URI on exit, also when the run fails, so
    the sessions that finished are kept. A killed driver uploads nothing: that run's sessions are
    redone next time.
    """
    out = os.fspath(out)
    if not is_uri(out):
        yield Path(local_path(out))
        return
    fs, root = _open(out)
    root = root.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="emoguide-out-") as tmp:  # mode 0700: results are health data
        stage = Path(tmp)
        try:
            fs.create_dir(root)  # a missing bucket or a read-only one fails here, not after hours of work
            if fs.get_file_info(f"{root}/parts").type == pafs.FileType.Directory:
                (stage / "parts").mkdir()
                pafs.copy_files(
                    f"{root}/parts",
                    str(stage / "parts"),
                    source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                    chunk_size=BLOCK,
                    use_threads=True,
                )
        except OSError as exc:
            raise StorageError(out, f"cannot use as the output ({exc})") from exc
        before = _state(stage)
        try:
            yield stage
        finally:
            _sync(fs, root, stage, before, out)
