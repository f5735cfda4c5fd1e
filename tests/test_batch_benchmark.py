"""The batch benchmark's pieces: the sessions-in-flight knob (scheduling only, never results) and the
sessions it builds from real GRID clips (the batch and a reference session of the same media)."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO, data_path
from ray_jobs.config import ConfigError, load_config

sys.path.insert(0, str(REPO / "benchmarks"))


def test_sessions_in_flight_changes_scheduling_not_results():
    base = load_config()
    two = load_config(None, {"decode": {"sessions_in_flight": 2}})
    assert base.decode.sessions_in_flight is None and two.decode.sessions_in_flight == 2
    assert two.config_hash() == base.config_hash()  # resume stays valid across levels
    with pytest.raises(ConfigError, match="sessions_in_flight"):
        load_config(None, {"decode": {"sessions_in_flight": 0}})


def test_batch_and_reference_hold_the_same_media(tmp_path):
    data_path("grid")
    from batch import build_batch

    from emoguide.dataio.media import probe

    sessions, reference = build_batch(3, 10.0, tmp_path)
    lengths = [probe(p).duration_s for p in sessions]
    assert len(sessions) == 3 and all(9.0 <= s <= 12.0 for s in lengths), lengths
    assert probe(reference).duration_s == pytest.approx(sum(lengths), abs=0.5)
    assert build_batch(3, 10.0, tmp_path) == (sessions, reference)  # reused, not rebuilt
