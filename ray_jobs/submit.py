"""``emoguide submit``: run the pipeline as a Ray job on a cluster through the Ray Jobs API.

The job's code travels as its working directory: a staging folder holding this checkout's
``ray_jobs/``, ``emoguide/`` and ``models/`` packages and the run config, so the cluster runs exactly
the code and settings of the machine that submitted it (its image only needs the dependencies). Inputs are paths
that every node can read (a shared volume) or object-store URIs; the entrypoint is the same
``emoguide run`` a local user types, joined to the cluster with ``--address auto``; it runs the
cluster's own ``python`` (Ray's convention), so the head must have been started from an environment
with emoguide's dependencies.

Authentication: Ray 2.60 clusters use token authentication by default (``ray start --head`` turns it
on when a token exists, e.g. ``~/.ray/auth_token``), but Ray's job client sends a token only when
``RAY_AUTH_MODE=token`` is set in the submitting shell. ``submit`` finds the token where Ray's own
processes look for it and always sends it, through the client's public ``headers`` argument.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emoguide.dataio.storage import is_uri, local_path

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_CODE = ("ray_jobs", "emoguide", "models")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
LOG_TAIL_LINES = 20  # of a failed job's log, printed at the end
_SET_TOKEN = (
    f"set {TOKEN_ENV} to the cluster's token, or {TOKEN_PATH_ENV} / --token-file to a file holding it "
    "(`ray get-auth-token` on the head prints it)"
)
_ENV_HINT = (
    "the job runs the cluster's `python` (the one on PATH where `ray start` ran): start the head from "
    "an environment with emoguide's dependencies installed (activate its venv first), or use an "
    "image that has them"
)

_MISSING_ENV_MARKERS = ("No module named", "python: not found", "python: command not found")


class SubmitError(Exception):
    """A submission that cannot go ahead (no or wrong token, no dashboard at the address); one line."""


@dataclass(frozen=True)
class Token:
    """An auth token and where it was found (named in error messages; the value never is)."""

    value: str
    source: str


@dataclass(frozen=True)
class JobOutcome:
    """A submitted job: its id, and with ``--wait`` its final status, Ray's message and its last log lines."""

    job_id: str
    status: str | None = None
    message: str = ""
    log_tail: str = ""

    def hint(self) -> str:
        """What to do about a failed job, from what its log says ("" when its log is the only clue)."""
        return _ENV_HINT if any(m in self.log_tail for m in _MISSING_ENV_MARKERS) else ""


def default_token_path() -> Path:
    """Where ``ray get-auth-token --generate`` and a local ``ray.init()`` keep the token."""
    return Path.home() / ".ray" / "auth_token"


def _read_token(path: Path, what: str) -> Token:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SubmitError(f"{what} {path}: cannot read the token ({exc.strerror})") from exc
    if not value:
        raise SubmitError(f"{what} {path}: the token file is empty")
    return Token(value, f"{what} {path}")


def find_token(token_file: Path | None = None) -> Token | None:
    """The cluster token, looked up in the order Ray's own processes use, after ``--token-file``:
    ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``.

    Unlike Ray's job client, this does not depend on ``RAY_AUTH_MODE``: a cluster without
    authentication ignores the header, one with it needs it.
    """
    if token_file is not None:
        return _read_token(token_file.expanduser(), "--token-file")
    if os.environ.get(TOKEN_ENV, "").strip():
        return Token(os.environ[TOKEN_ENV].strip(), TOKEN_ENV)
    if os.environ.get(TOKEN_PATH_ENV):
        return _read_token(Path(os.environ[TOKEN_PATH_ENV]).expanduser(), TOKEN_PATH_ENV)
    default = default_token_path()
    return _read_token(default, "token file") if default.is_file() else None


@contextmanager
def _one_line_errors(address: str, token: Token | None) -> Iterator[None]:
    """Ray's authentication and connection failures as one ``SubmitError`` line instead of a traceback."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        if token is None:
            raise SubmitError(f"the cluster at {address} needs an auth token and none was found: {_SET_TOKEN}") from exc
        raise SubmitError(f"the cluster at {address} rejected the token from {token.source}: {_SET_TOKEN}") from exc
    except ConnectionError as exc:
        raise SubmitError(
            f"no Ray dashboard answers at {address}: is the head running, and is this its "
            "dashboard address (http://HEAD:8265)?"
        ) from exc


def stage_working_dir(config: Path | None) -> Path:
    """A temporary folder with the code packages and, when given, the run config as ``job_config.yaml``."""
    stage = Path(tempfile.mkdtemp(prefix="emoguide-job-"))
    for name in _CODE:
        shutil.copytree(PACKAGE_ROOT / name, stage / name, ignore=_IGNORE)
    if config is not None:
        shutil.copy(config, stage / "job_config.yaml")
    return stage


def _absolute(path: str) -> str:
    """A local path as an absolute one (the job runs in its own working directory); URIs as they are."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(local_path(path)))


def entrypoint(inputs: Sequence[str], out: str, preset: str, has_config: bool, extra: Sequence[str] = ()) -> str:
    """The shell command the job runs on the cluster's head node.

    Relative paths are made absolute here, as a user means them: relative to where they typed the
    command (the paths must be the same on the cluster: a shared volume).
    """
    args = [
        "python",
        "-m",
        "ray_jobs.cli",
        "run",
        *map(_absolute, inputs),
        "--out",
        _absolute(out),
        "--address",
        "auto",
        "--preset",
        preset,
        "-q",
    ]
    if has_config:
        args += ["--config", "job_config.yaml"]
    return shlex.join([*args, *extra])


def _submit_when_ready(client: JobSubmissionClient, request: dict, timeout_s: float = 120.0) -> str:
    """Submit, waiting for a freshly started head whose job agent is not up yet (a 500 from the API)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**request)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def submit(
    address: str,
    inputs: Sequence[str],
    out: str,
    preset: str = "auto",
    config: Path | None = None,
    extra: Sequence[str] = (),
    wait: bool = False,
    token_file: Path | None = None,
) -> JobOutcome:
    """Submit the job; with ``wait`` stream its logs to stdout and return how it ended.

    Raises ``SubmitError`` (one line) for a missing or rejected token or an unreachable dashboard.
    """
    token = find_token(token_file)
    with _one_line_errors(address, token):
        return _submit(address, token, entrypoint(inputs, out, preset, config is not None, extra), config, wait)


def _submit(address: str, token: Token | None, command: str, config: Path | None, wait: bool) -> JobOutcome:
    from ray.job_submission import JobStatus, JobSubmissionClient

    headers = {"Authorization": f"Bearer {token.value}"} if token else None
    client = JobSubmissionClient(address, headers=headers)
    stage = stage_working_dir(config)
    request = {
        "entrypoint": command,
        "runtime_env": {
            "working_dir": str(stage),
            # offline by default on the cluster too; a config with allow_network: true lifts it
            "env_vars": {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"},
        },
        "metadata": {"tool": "emoguide"},
    }
    try:
        job_id = _submit_when_ready(client, request)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if not wait:
        return JobOutcome(job_id)

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can close a moment before the status settles
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    if status == JobStatus.SUCCEEDED:
        return JobOutcome(job_id, status.value)
    tail = "\n".join(client.get_job_logs(job_id).splitlines()[-LOG_TAIL_LINES:])
    return JobOutcome(job_id, status.value, client.get_job_info(job_id).message or "", tail)
