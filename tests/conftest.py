"""Shared test set-up: offline, private temp folders for Ray and caches, real data from ../shared/data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Offline before anything imports huggingface_hub: a failed hub lookup would retry for ~46 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray's socket paths must stay short, so its temp folder lives directly under /tmp.
_RAY_TMP = tempfile.mkdtemp(prefix="egray-", dir="/tmp")
os.environ["RAY_TMPDIR"] = _RAY_TMP
os.environ["EMOGUIDE_CACHE"] = tempfile.mkdtemp(prefix="egcache-")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A file or folder under ../shared/data, or skip the test saying what is missing."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def grid_dir() -> Path:
    return data_path("grid")


def kill_ray_processes(ray_tmp: str) -> None:
    """Kill the Ray processes started with RAY_TMPDIR=ray_tmp (and only those: other tests keep theirs)."""
    import signal

    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
