"""What ``emoguide run`` shows while it works: one progress line, and a line for each failed session.

A run's console is one progress line (sessions done/total, hours of media, real-time factor, ETA; then
the interventions being generated), redrawn in place on a terminal and printed as a plain line every
so often when the output is a file or a pipe. A session that fails gets a line of its own above it.
Ray's logs, Ray Data's progress bars and the workers' model-loading bars appear only with ``-v``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ray_jobs.pipeline import RunEvents

# Seconds between redraws of the progress line: on a terminal it ticks (elapsed time, ETA); in a
# log file a line every half minute says the run is alive without flooding it.
TTY_INTERVAL_S = 1.0
PLAIN_INTERVAL_S = 30.0

# What keeps the workers (and the driver) from drawing their own progress bars and chatter: read by
# tqdm, huggingface_hub and transformers at import. Local Ray workers inherit the driver's environment.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
_RAY_LOGGERS = ("ray", "ray.data")  # the others propagate to "ray"


def quiet_environment() -> None:
    """Turn the libraries' progress bars, info logs and warnings (deprecations, mostly) off, before Ray
    or any model loads."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.simplefilter("ignore")


def quiet_ray_loggers() -> None:
    """Ray's console handlers (Ray Data's execution plan, progress dumps and warnings among them) print
    errors only; Ray's log files keep everything. Called after ``ray.init``, which sets them up."""
    for name in _RAY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def failure_line(row: dict[str, Any]) -> str | None:
    """A finished session worth a line of its own (failed or partial), or None for an ok one."""
    if row["status"] == "ok":
        return None
    reason = f"{row['failed_stage']}: {row['error']}" if row.get("error") else (row.get("note") or "")
    return f"{row['session_id']}: {row['status']} ({reason})"


class Progress(RunEvents):
    """The run's progress line on ``stream``; a context manager (its ticker thread runs inside).

    ``describe(row)`` gives the lines to print above the progress line when a session finishes
    (default: one line for a failed or partial session). ``show_line=False`` keeps those lines only.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        show_line: bool = True,
        interactive: bool | None = None,
        describe: Callable[[dict[str, Any]], list[str]] | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.show_line = show_line
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.describe = describe or (lambda row: [line] if (line := failure_line(row)) else [])
        self.total = self.done = self.processed = 0
        self.media_s = 0.0
        self.generation_total = self.generated = 0
        self.started = self.generation_started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="emoguide-progress", daemon=True)
        self._drawn = False

    # -- RunEvents

    def sessions_planned(self, total: int, skipped: list[dict[str, Any]]) -> None:
        with self._lock:
            self.total, self.done = total, len(skipped)
            self.started = time.monotonic()
        self._draw()

    def session_finished(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.done += 1
            self.processed += 1
            self.media_s += row.get("duration_s") or 0.0
        for line in self.describe(row):
            self.note(line)
        self._draw()

    def generation_planned(self, total: int) -> None:
        with self._lock:
            self.generation_total, self.generated = total, 0
            self.generation_started = time.monotonic()
        self._draw()

    def intervention_finished(self) -> None:
        with self._lock:
            self.generated += 1
        if self.interactive:
            self._draw()

    # -- the line

    def line(self) -> str:
        """The progress line as it reads now."""
        elapsed = time.monotonic() - self.started
        parts = [f"sessions {self.done}/{self.total}", f"media {self.media_s / 3600:.3f} h"]
        if self.media_s > 0 and elapsed > 0:
            parts.append(f"{self.media_s / elapsed:.1f}x real time")
        if self.generation_total:
            parts.append(f"interventions {self.generated}/{self.generation_total}")
        return " | ".join([*parts, self._eta()]) + f"  [{_clock(elapsed)}]"

    def _eta(self) -> str:
        """Time left at the pace so far: of the sessions processed in this run, then of the interventions."""
        if self.generation_total:
            left, done = self.generation_total - self.generated, self.generated
            spent = time.monotonic() - self.generation_started
        else:
            left, done, spent = self.total - self.done, self.processed, time.monotonic() - self.started
        if not left:
            return "done"
        return f"ETA {_clock(spent / done * left)}" if done else "ETA --"

    def note(self, text: str) -> None:
        """A line of its own, above the progress line."""
        with self._lock:
            if self.interactive and self._drawn:
                self.stream.write("\r\x1b[K")
                self._drawn = False
            self.stream.write(text + "\n")
            self.stream.flush()
        if self.interactive:
            self._draw()

    def _draw(self, final: bool = False, tick: bool = False) -> None:
        """Redraw the line in place on a terminal; elsewhere print it first, on each tick and last."""
        if not self.show_line or not self.total:
            return
        with self._lock:
            if self.interactive:  # cut to the terminal's width: a wrapped line cannot be redrawn in place
                width = shutil.get_terminal_size().columns - 1
                self.stream.write("\r" + self.line()[:width] + "\x1b[K" + ("\n" if final else ""))
                self._drawn = not final
            elif final or tick or not self._drawn:
                self.stream.write(self.line() + "\n")
                self._drawn = True
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(TTY_INTERVAL_S if self.interactive else PLAIN_INTERVAL_S):
            self._draw(tick=True)

    def __enter__(self) -> Progress:
        self._ticker.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._ticker.join()
        self._draw(final=True)


class NoteHandler(logging.Handler):
    """Log records as lines above the progress line, so a warning never lands in the middle of it."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.note(self.format(record))


@contextmanager
def logging_to(progress: Progress) -> Iterator[None]:
    """While a run goes on, records of every logger that reaches the root (emoguide's warnings among
    them) are printed above the progress line instead of through it."""
    root = logging.getLogger()
    handler = NoteHandler(progress)
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        yield
    finally:
        root.handlers[:] = saved


@contextmanager
def native_stderr_to(path: Path | None) -> Iterator[IO[str]]:
    """Send file descriptor 2 to ``path`` while inside, and yield a stream on the console's stderr.

    Ray's C++ core logs errors straight to the process's stderr as well as to its log files, and so
    do native model runtimes (TFLite, ONNX Runtime): only the descriptor itself keeps them off the
    console. What the run shows goes to the yielded stream. ``path`` None: nothing is redirected.
    """
    if path is None:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as sink:
            os.dup2(sink.fileno(), 2)
        with os.fdopen(os.dup(saved), "w", buffering=1) as console:
            yield console
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
