"""One ``emoguide run`` per output folder: a lock file that also works on shared volumes (NFS).

Two runs on the same ``--out`` would both compute every session (the tables stay consistent, the
work is wasted), so the second one refuses at once, or waits with ``--wait-lock``. The lock is the
file ``DIR/.emoguide.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local disks and on NFSv3+),
holding the holder's host, pid, start time and a random nonce. Where ``fcntl`` exists the holder also
keeps an ``flock`` on it (Linux NFS clients map it onto NFS byte-range locks): on the same host that
tells a live holder from a dead one whose pid was reused. A lock whose holder is gone is taken over
only when that is certain: same host and the pid is dead (or alive but without the holder's flock).
A lock from another host is never taken over automatically, since a pid cannot be checked across
machines; the message says which file to delete.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL file alone
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".emoguide.lock"
POLL_S = 2.0  # how often --wait-lock looks again
_WRITE_GRACE_S = 2.0  # a lock file this young may still be empty: its holder is writing it


class RunLockError(Exception):
    """The output folder is in use by another run; the message names the holder and the lock file."""


def _holder_line(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('started', '?')}"


def _read(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when it is gone, {} while being written or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _younger_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _flock_free(path: Path) -> bool:
    """True when nobody holds an flock on ``path`` (False when unknown: no fcntl)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def _is_stale(path: Path, holder: dict[str, Any]) -> bool:
    """A holder on this host whose process is gone (dead pid, or a reused pid without its flock)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    return not _pid_alive(holder["pid"]) or (holder.get("flock") is True and _flock_free(path))


def _take_over(path: Path, stale: dict[str, Any]) -> None:
    """Remove a stale lock without ever removing a live one a competing run just created.

    The file is first renamed to a private name and checked: if it is not the stale one (another
    run took over in between), it is linked back (``link`` refuses to replace an existing name).
    """
    grave = path.with_name(f"{path.name}.stale-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    if _read(grave) != stale:
        with suppress(FileExistsError):
            os.link(grave, path)
    grave.unlink(missing_ok=True)


def _create(path: Path) -> tuple[int, dict[str, Any]] | None:
    """Create the lock file exclusively and record this run in it; None when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        return None
    flocked = False
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except OSError:  # a file system without locks: the file alone counts
            pass
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "flock": flocked,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "nonce": secrets.token_hex(8),
    }
    os.write(fd, json.dumps(holder).encode())
    os.fsync(fd)
    return fd, holder


@contextmanager
def run_lock(out_dir: Path, wait: bool = False) -> Iterator[Path]:
    """Hold ``out_dir``'s run lock for the duration; raise ``RunLockError`` if another run holds it.

    With ``wait`` it polls until the holder is done instead. Released (the file removed, if it is
    still this run's) on exit, also on an exception; a killed run leaves a stale lock that the next
    run on the same host takes over.
    """
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = out_dir / LOCK_NAME
    announced = False
    while (created := _create(path)) is None:
        holder = _read(path)
        if holder is None:
            continue  # released between our attempt and the read
        if not holder and _younger_than(path, _WRITE_GRACE_S):
            time.sleep(0.1)  # created a moment ago, its holder not written yet
            continue
        if holder and _is_stale(path, holder):
            _take_over(path, holder)
            continue
        busy = (
            f"{out_dir} is in use by another emoguide run ({_holder_line(holder)}); if that run is gone, delete {path}"
        )
        if not wait:
            raise RunLockError(busy + ", or wait for it with --wait-lock")
        if not announced:
            print(f"waiting: {busy}", file=sys.stderr, flush=True)
            announced = True
        time.sleep(POLL_S)
    fd, mine = created
    try:
        yield path
    finally:
        if _read(path) == mine:
            path.unlink(missing_ok=True)
        os.close(fd)
