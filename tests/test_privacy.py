"""Privacy: no network beyond loopback during a run, transcripts only in logs on request, redaction."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from conftest import REPO, emoguide
from emoguide.session.redact import redact, redact_words

_HOOK = '''
import os, socket, sys
def _hook(event, args):
    if event == "socket.connect" and args[0].family in (socket.AF_INET, socket.AF_INET6):
        with open(os.environ["EG_NETLOG"], "a") as fh:
            fh.write(f"{os.getpid()} {args[1][0]} {args[1][1]}\\n")
sys.addaudithook(_hook)
'''


@pytest.mark.slow
def test_run_opens_no_socket_beyond_loopback(tmp_path):
    """Every Python process of the run (driver, Ray's own processes, stage workers) logs its connects."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(_HOOK)
    log = tmp_path / "connects.log"
    log.write_text("")
    env = {**os.environ, "EG_NETLOG": str(log), "PYTHONPATH": str(hook_dir)}
    env.pop("HF_HUB_OFFLINE", None)  # the run must go offline by itself
    clip = REPO / "examples" / "grid" / "bbaf2n.mpg"
    proc = emoguide("run", str(clip), "--out", str(tmp_path / "out"), "-q", "--log-content", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    connects = [line.split() for line in log.read_text().splitlines()]
    assert connects, "the hook saw no connection at all: it is not active, so the test proves nothing"
    outside = [c for c in connects if not (c[1].startswith("127.") or c[1] in ("::1", "localhost"))]
    assert outside == []
    # --log-content prints the transcript; the default run (other tests) never does
    text = pq.read_table(tmp_path / "out" / "utterances.parquet").column("text").to_pylist()[0]
    assert text in proc.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("My email is jane.doe@example.org, call me.", "My email is [EMAIL], call me."),
        ("Call 555-123-4567 tonight.", "Call [PHONE] tonight."),
        ("I moved to Leeds with Sarah in 2019.", "I moved to [NAME] with [NAME] in [NUMBER]."),
        ("We had twenty sessions. Maria said no.", "We had [NUMBER] sessions. Maria said no."),
        ("On Monday I felt fine.", "On Monday I felt fine."),
        ("See www.clinic.example/page for details.", "See [URL] for details."),
    ],
)
def test_redaction_rules(text, expected):
    assert redact(text) == expected


def test_redact_words_keeps_timings():
    words = [{"start": 0.0, "end": 0.2, "word": " Tell", "probability": 0.9},
             {"start": 0.2, "end": 0.5, "word": " Sarah", "probability": 0.9},
             {"start": 0.5, "end": 0.7, "word": " 42", "probability": 0.9}]
    out = redact_words(words)
    assert [w["word"] for w in out] == [" Tell", " [NAME]", " [NUMBER]"]
    assert [w["start"] for w in out] == [0.0, 0.2, 0.5]
