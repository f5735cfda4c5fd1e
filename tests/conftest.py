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
# Joined split weights are verified by sha256, so every test run shares the user's copy (joining 1.6 GB of parts
# per run would dominate the suite); the rest of the cache is private to this run.
os.environ.setdefault("EMOGUIDE_JOINED", str(Path(os.environ.get("EMOGUIDE_CACHE", Path.home() / ".cache" / "emoguide")) / "joined"))
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


DIALOGUE = REPO / "examples" / "dialogue.mp4"


@pytest.fixture(scope="session")
def dialogue_run(tmp_path_factory) -> tuple[Path, Path, object]:
    """(run folder, config, finished process): the bundled two-speaker dialogue through the whole job once
    per test session (real models, real Ray, SmolLM2 interventions), shared by every test that needs a run
    folder with interventions. A test that changes a run folder must work on a copy."""
    from test_run_e2e import _emoguide

    out = tmp_path_factory.mktemp("gen") / "out"
    cfg = tmp_path_factory.mktemp("cfg") / "run.yaml"
    # SmolLM2 through transformers keeps this shared run short; test_generation.py runs the default LLM once.
    cfg.write_text("speakers: {therapist_speaker: S1}\n"
                   "generation: {engine: transformers, model: smollm2-135m-instruct, max_new_tokens: 24}\n")
    proc = _emoguide("run", str(DIALOGUE), "--out", str(out), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, cfg, proc


@pytest.fixture(scope="session")
def dubbed_run(tmp_path_factory) -> tuple[Path, dict]:
    """(run folder, session manifest): a neutral GRID face lip-synced to seven RAVDESS clips of actor 14
    (neutral and calm, then strong happy, sad, angry and fearful: ``benchmarks/pipeline_material.py``),
    through the pipeline without generation: real dissonance between a calm face and an emotional voice.
    The bundled example has none: its GRID voices are neutral, and read as neutral."""
    from pipeline_material import build_material
    from test_run_e2e import _emoguide

    data_path("ravdess", "Actor_14")
    manifest = build_material(DATA, [14], tmp_path_factory.mktemp("material"), max_clips=7)
    session = next(s for s in manifest["sessions"] if s["kind"] == "dubbed")
    out = tmp_path_factory.mktemp("dubbed") / "out"
    # one voice throughout: said, as a user would, so that the clustering does not take the strong
    # emotions for a second voice (whose speech the one face's mouth would then move with too)
    proc = _emoguide("run", session["path"], "--out", str(out), "--no-generate", "--num-speakers", "1", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, session


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


# ----------------------------------------------------------------------------------------------------
# headless Chromium (Debian's chromium package, driven by Playwright)

CHROMIUM = Path(os.environ.get("EMOGUIDE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (the report's and the studio's browser tests), or skip."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium`"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "Playwright for Python is not installed: `pip install playwright==1.65.2` "
            "(never `playwright install`: the test uses Debian's chromium)"
        )
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001 -- a broken browser install is an environment problem, not a report bug
            pytest.skip(
                f"Chromium at {CHROMIUM} does not start headless ({exc}); reinstall `chromium`"
            )
        yield b
        b.close()
