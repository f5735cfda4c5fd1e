"""`emoguide eval perception` and `emoguide eval roles` on real data, through the CLI entry point."""

from __future__ import annotations

import json

import pytest

from conftest import data_path
from ray_jobs.cli import main


@pytest.mark.slow
def test_eval_perception_reports_voice_and_face(tmp_path, capsys):
    ravdess, grid = data_path("ravdess"), data_path("grid")
    out = tmp_path / "report.json"
    code = main(["eval", "perception", "--ravdess", str(ravdess), "--actors", "14",
                 "--videos", str(grid / "bbaf2n.mpg"), str(grid / "lbax4n.mpg"), "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    voice = report["voice"]["per_speaker"]
    assert voice["n"] >= 50 and voice["accuracy"] > 0.3  # one held-out actor, 7 classes (chance 0.14)
    assert sum(map(sum, voice["confusion"])) == voice["n_scored"]
    face = report["face"]
    assert face["frames"] == 12 and face["detection_rate"] == 1.0
    assert max(face["mean_probs"], key=face["mean_probs"].get) == "neutral"
    assert "voice per_speaker" in capsys.readouterr().out


def test_eval_roles_on_annomi(tmp_path):
    annomi = data_path("annomi", "AnnoMI-dev.csv")
    out = tmp_path / "roles.json"
    assert main(["eval", "roles", "--annomi", str(annomi), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["sessions"] == 109
    assert report["session_accuracy"] >= 0.95 and report["utterance_accuracy"] >= 0.95


def test_eval_perception_needs_data(capsys):
    assert main(["eval", "perception"]) == 2
    assert "give --ravdess" in capsys.readouterr().err
