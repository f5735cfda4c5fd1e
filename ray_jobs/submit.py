"""``emoguide submit``: run the pipeline as a Ray job on a cluster through the Ray Jobs API.

The job's code travels as its working directory: a staging folder holding this checkout's
``ray_jobs/`` and ``models/`` packages and the run config, so the cluster runs exactly the code and
settings of the machine that submitted it (its image only needs the dependencies). Inputs are paths
that every node can read (a shared volume) or object-store URIs; the entrypoint is the same
``emoguide run`` a local user types, joined to the cluster with ``--address auto``.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_CODE = ("ray_jobs", "models")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def stage_working_dir(config: Path | None) -> Path:
    """A temporary folder with the code packages and, when given, the run config as ``job_config.yaml``."""
    stage = Path(tempfile.mkdtemp(prefix="emoguide-job-"))
    for name in _CODE:
        shutil.copytree(PACKAGE_ROOT / name, stage / name, ignore=_IGNORE)
    if config is not None:
        shutil.copy(config, stage / "job_config.yaml")
    return stage


def entrypoint(inputs: Sequence[str], out: str, preset: str, has_config: bool, extra: Sequence[str] = ()) -> str:
    """The shell command the job runs on the cluster's head node."""
    args = ["python", "-m", "ray_jobs.cli", "run", *inputs, "--out", out, "--address", "auto", "--preset", preset, "-q"]
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
) -> tuple[str, str | None]:
    """Submit the job; return (job id, final status when ``wait`` else None). Logs stream to stdout."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    stage = stage_working_dir(config)
    request = {
        "entrypoint": entrypoint(inputs, out, preset, config is not None, extra),
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
        return job_id, None

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can close a moment before the status settles
        status = client.get_job_status(job_id)
    return job_id, str(status.value if isinstance(status, JobStatus) else status)
