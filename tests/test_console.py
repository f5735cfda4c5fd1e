"""The console of `emoguide run`: one progress line, a line per failed session, and every error as one
line and a hint (the traceback only with -v). The real runs' consoles are checked in test_run_e2e.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from models.registry import ModelNotFoundError
from ray_jobs import cli, console
from ray_jobs.config import ConfigError
from ray_jobs.console import Progress

CLIP = Path(__file__).resolve().parents[1] / "examples" / "grid" / "bbaf2n.mpg"
FAILED = {"session_id": "broken", "status": "failed", "failed_stage": "decode", "duration_s": None,
          "error": "broken.mp4: not a readable media container"}


@pytest.fixture
def clock(monkeypatch):
    """The console's clock, set by hand (the ticker thread is never started here)."""
    now = [1000.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    return now


def test_progress_line_counts_sessions_media_pace_and_eta(clock):
    progress = Progress(io.StringIO(), interactive=False)
    progress.sessions_planned(4, skipped=[{"session_id": "old", "status": "ok"}])
    assert progress.line() == "sessions 1/4 | media 0.000 h | ETA --  [0:00]"
    clock[0] += 60
    progress.session_finished({"session_id": "a", "status": "ok", "duration_s": 1800.0})
    # half an hour of media in a minute: 30x; two sessions left at a minute each (the skipped one is no pace)
    assert progress.line() == "sessions 2/4 | media 0.500 h | 30.0x real time | ETA 2:00  [1:00]"
    clock[0] += 60
    progress.session_finished(FAILED)
    progress.session_finished({"session_id": "b", "status": "ok", "duration_s": 1800.0})
    progress.generation_planned(10)
    clock[0] += 30
    for _ in range(4):
        progress.intervention_finished()
    # an hour of media in the run's 150 s so far (as in the summary); six interventions left at 7.5 s each
    assert progress.line() == "sessions 4/4 | media 1.000 h | 24.0x real time | interventions 4/10 | ETA 0:45  [2:30]"
    for _ in range(6):
        progress.intervention_finished()
    assert progress.line().endswith("interventions 10/10 | done  [2:30]")


def _two_sessions(progress: Progress) -> None:
    """A run of two sessions, the first of which fails, through ``progress`` (ticker included)."""
    with progress:
        progress.sessions_planned(2, skipped=[])
        progress.session_finished(FAILED)
        progress.session_finished({"session_id": "a", "status": "ok", "duration_s": 3.0})


def test_in_a_pipe_the_line_is_printed_first_and_last_and_failures_get_their_own(clock):
    out = io.StringIO()
    _two_sessions(Progress(out, interactive=False))
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        "sessions 0/2 | media 0.000 h | ETA --  [0:00]",
        "broken: failed (decode: broken.mp4: not a readable media container)",
        "sessions 2/2 | media 0.001 h | done  [0:00]",
    ]


def test_on_a_terminal_the_line_is_redrawn_in_place(clock):
    out = io.StringIO()
    _two_sessions(Progress(out, interactive=True))
    text = out.getvalue()
    assert text.startswith("\rsessions 0/2 | media 0.000 h | ETA --  [0:00]\x1b[K")
    # the failure clears the line, stands on its own, and the line comes back under it
    assert "\r\x1b[Kbroken: failed (decode: broken.mp4: not a readable media container)\n\rsessions 1/2" in text
    assert text.endswith("\rsessions 2/2 | media 0.001 h | done  [0:00]\x1b[K\n")
    assert text.count("\n") == 2


def test_quiet_keeps_the_failures_and_drops_the_line(clock):
    out = io.StringIO()
    _two_sessions(Progress(out, show_line=False, interactive=False))
    assert out.getvalue() == "broken: failed (decode: broken.mp4: not a readable media container)\n"


class _RemoteError(Exception):
    """Like Ray's RayTaskError: the worker's exception rides in ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"ray::MapWorker() (pid=1)\n  File 'x.py', line 1\n{cause!r}")
        self.cause = cause


def test_error_lines_are_one_line_and_a_hint():
    lines, code = cli.error_lines(ConfigError("run.yaml: unknown key 'asrr'"), "run")
    assert code == 2 and lines[0] == "emoguide: error: run.yaml: unknown key 'asrr'"
    assert lines[1].startswith("hint: ") and "Configuration" in lines[1]
    # the command's own error raised in a Ray worker: the worker's message, not Ray's wrapper
    lines, code = cli.error_lines(_RemoteError(ModelNotFoundError("asr: model path '/x' does not exist")), "run")
    assert (code, lines[0]) == (2, "emoguide: error: asr: model path '/x' does not exist")
    assert "emoguide models list" in lines[1]
    # anything else: named by its type, its first line only, and how to see the rest
    lines, code = cli.error_lines(RuntimeError("the graph broke\n  at a line of Ray's internals"), "run")
    assert (code, lines) == (1, ["emoguide: error: RuntimeError: the graph broke",
                                 "hint: `emoguide -v run ...` shows the full traceback and Ray's logs"])
    lines, code = cli.error_lines(KeyboardInterrupt(), "run")
    assert code == 130 and "resumes" in lines[1]


@pytest.fixture
def crashing_run(monkeypatch):
    """`emoguide run` whose pipeline fails with an error the command does not know (Ray is not started)."""
    def crash(*args):
        raise RuntimeError("the graph broke\n  at a line of Ray's internals")

    monkeypatch.setattr(cli, "_process", crash)
    monkeypatch.setattr(cli, "guard_network", lambda: None)  # this process's environment stays as it is


def test_an_unexpected_error_is_one_line_and_a_hint_without_traceback(crashing_run, tmp_path, capsys):
    assert cli.main(["run", str(CLIP), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["emoguide: error: RuntimeError: the graph broke",
                                "hint: `emoguide -v run ...` shows the full traceback and Ray's logs"]


@pytest.mark.parametrize("argv", [["run", "-v"], ["-v", "run"]])
def test_verbose_shows_the_traceback_too(crashing_run, tmp_path, capsys, argv):
    assert cli.main([*argv, str(CLIP), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "at a line of Ray's internals" in err
    assert err.splitlines()[-2] == "emoguide: error: RuntimeError: the graph broke"


def test_a_chained_error_of_ours_keeps_its_own_message():
    try:
        try:
            raise OSError("[Errno 2] No such file or directory: 'run.yaml'")
        except OSError as exc:
            raise ConfigError("run.yaml: cannot be read") from exc
    except ConfigError as exc:
        lines, code = cli.error_lines(exc, "run")
    assert (code, lines[0]) == (2, "emoguide: error: run.yaml: cannot be read")
