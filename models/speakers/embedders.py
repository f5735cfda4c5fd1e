"""Speaker embedders: 16 kHz mono windows in, one L2-normalised embedding row per window out.

Three encoder families sit behind one protocol, :class:`SpeakerEncoder`: each turns a window into
feature tensors, groups them into batches and runs its network. :class:`SpeakerEmbedder` (what the
speaker stage holds) picks the encoder from the checkpoint's contents, so a user-given path works
too, and owns what they share: skipping short or silent windows, averaging a window's partial
embeddings and normalising.

* CAM++ (``campplus-zh-en``, 192-d, the default): Kaldi 80-bin log fbank (25 ms povey window,
  10 ms hop, pre-emphasis 0.97, DC removal, snip edges) with per-window mean normalisation, as
  3D-Speaker's inference code; windows of equal length share one forward pass.
* GE2E (``resemblyzer-ge2e``, 256-d): Resemblyzer's power mel frontend and volume normalisation;
  a window longer than 1.6 s is cut into 1.6 s partials (1.3 per second) whose embeddings are
  averaged, like ``VoiceEncoder.embed_utterance``; variable lengths are packed.
* WeSpeaker ONNX exports (a ``.onnx`` file, e.g. ``wespeaker-resnet34-lm``, 256-d): the same Kaldi
  fbank with a Hamming window and mean normalisation, as ``wespeakerruntime``; input ``feats``
  (batch x frames x 80), output the embedding. Run with onnxruntime.

A new family is a class with the three methods of :class:`SpeakerEncoder` and a branch in
:func:`load_encoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.audio import SAMPLE_RATE, to_samples
from models.nets.campp import CAMPPlus, kaldi_mel_banks
from models.nets.ge2e import GE2E, mel_filterbank
from models.registry import ResolvedModel

Item = tuple[int, torch.Tensor]  # (window index, features frames x bins)


class SpeakerEncoder(Protocol):
    """One encoder family: its features, its batching and its network."""

    kind: str
    dim: int

    def features(self, wav: np.ndarray) -> list[torch.Tensor]:
        """The feature tensors (frames x bins) of one window; several are averaged into its row."""
        ...

    def batches(self, items: list[Item], batch_size: int) -> list[list[Item]]:
        """Groups of items that can share one forward pass."""
        ...

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Embeddings (batch x dim, not yet normalised) of padded features."""
        ...


def _fixed_batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    return [items[k : k + batch_size] for k in range(0, len(items), batch_size)]


def _equal_length_batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Statistics pooling over time: batch only equal lengths, so no padding enters the pool."""
    by_len: dict[int, list[Item]] = {}
    for it in items:
        by_len.setdefault(it[1].shape[0], []).append(it)
    return [g[k : k + batch_size] for g in by_len.values() for k in range(0, len(g), batch_size)]


class KaldiFbank:
    """Kaldi log mel fbank (frames x 80), mean-normalised over the window: CAM++ and WeSpeaker.
    (WeSpeaker scales samples to 16-bit range first; after the log and the mean removal that scale
    cancels out.)"""

    def __init__(self, window: torch.Tensor, device: torch.device) -> None:
        self._fb = torch.from_numpy(kaldi_mel_banks()).to(device)
        self.window = window.to(device)
        self.device = device

    def __call__(self, wav: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(self.device)
        frames = x.unfold(0, 400, 160)  # snip_edges
        frames = frames - frames.mean(dim=1, keepdim=True)
        prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = (frames - 0.97 * prev) * self.window
        power = torch.fft.rfft(frames, n=512).abs().square()
        feats = torch.log(torch.clamp(power @ self._fb.T, min=torch.finfo(torch.float32).eps))
        return feats - feats.mean(dim=0, keepdim=True)


class CamppEncoder:
    """CAM++ on Kaldi fbank with the povey window."""

    kind = "campplus"

    def __init__(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        self.dim = int(state["xvector.dense.linear.weight"].shape[0])
        self._net = CAMPPlus(emb=self.dim)
        self._net.load_state_dict(state, strict=True)
        self._net.eval().to(device)
        self.fbank = KaldiFbank(torch.hann_window(400, periodic=False).pow(0.85), device)

    def features(self, wav: np.ndarray) -> list[torch.Tensor]:
        return [self.fbank(wav)]

    def batches(self, items: list[Item], batch_size: int) -> list[list[Item]]:
        return _equal_length_batches(items, batch_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._net(feats)


class Ge2eEncoder:
    """Resemblyzer's GE2E on its power mel spectrogram, in 1.6 s partials."""

    kind = "ge2e"
    dim = 256

    def __init__(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        self._net = GE2E()
        self._net.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}, strict=True)
        self._net.eval().to(device)
        self._fb = torch.from_numpy(mel_filterbank(SAMPLE_RATE, 400, 40)).to(device)
        self._window = torch.hann_window(400, periodic=True).to(device)
        self.device = device

    def mel(self, wav: np.ndarray) -> torch.Tensor:
        """Power mel spectrogram (frames x 40) like ``resemblyzer.audio.wav_to_mel_spectrogram``."""
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(self.device)
        spec = torch.stft(
            x, n_fft=400, hop_length=160, window=self._window, center=True, pad_mode="constant", return_complex=True
        )
        return (self._fb @ (spec.real.square() + spec.imag.square())).T

    @staticmethod
    def normalise_volume(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
        """Resemblyzer's volume normalisation (increase only)."""
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
        change_db = target_dbfs - 20 * np.log10(max(rms, 1e-10))
        return (wav * (10 ** (change_db / 20))).astype(np.float32) if change_db > 0 else wav

    def features(self, wav: np.ndarray) -> list[torch.Tensor]:
        mel = self.mel(self.normalise_volume(wav))
        n, size = mel.shape[0], 160  # 1.6 s partials
        if n <= size:
            return [mel]
        step = round(SAMPLE_RATE / 1.3 / 160)
        starts = list(range(0, n - size + 1, step))
        if n - (starts[-1] + size) > size // 4:
            starts.append(n - size)
        return [mel[a : a + size] for a in starts]

    def batches(self, items: list[Item], batch_size: int) -> list[list[Item]]:
        return _fixed_batches(items, batch_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._net(feats, lengths)


class WespeakerEncoder:
    """A WeSpeaker ONNX export on Kaldi fbank with a Hamming window, run with onnxruntime."""

    kind = "wespeaker"

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort

        providers = (["CUDAExecutionProvider"] if device.type == "cuda" else []) + ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:
            raise ValueError(f"{path}: not an ONNX speaker encoder: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] not in (80, "80"):
            raise ValueError(
                f"{path}: expected one input of 80-bin fbank frames (WeSpeaker export), got "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        self._input = inputs[0].name
        self.fbank = KaldiFbank(torch.hamming_window(400, periodic=False), device)
        probe = self._session.run(None, {self._input: np.zeros((1, 100, 80), np.float32)})[0]
        self.dim = int(probe.shape[-1])

    def features(self, wav: np.ndarray) -> list[torch.Tensor]:
        return [self.fbank(wav)]

    def batches(self, items: list[Item], batch_size: int) -> list[list[Item]]:
        return _equal_length_batches(items, batch_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._session.run(None, {self._input: feats.cpu().numpy()})[0])


def load_encoder(path: Path, device: torch.device) -> SpeakerEncoder:
    """The encoder family of a checkpoint, told by its contents (an ONNX file, or the parameter names)."""
    if path.suffix == ".onnx":
        return WespeakerEncoder(path, device)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("model_state", ckpt) if isinstance(ckpt, dict) else ckpt
    if "lstm.weight_ih_l0" in state:
        return Ge2eEncoder(state, device)
    if "head.conv1.weight" in state:
        return CamppEncoder(state, device)
    raise ValueError(f"{path}: not a GE2E (resemblyzer) or CAM++ (3D-Speaker) checkpoint")


class SpeakerEmbedder:
    """:meth:`embed` maps 16 kHz mono windows to L2-normalised rows of width ``dim``; a window shorter
    than ``min_window_s`` (or silent, or not finite) gives a NaN row."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: ResolvedModel,
        min_window_s: float = 0.4,
        batch_size: int = 8,
        device: str = "cpu",
    ) -> None:
        # Small batches: on 40 CPU windows (one 30 s chunk) batch 8 peaks 41 MiB over the loaded model
        # against 200 MiB at 64, and runs faster (10 against 14 ms per window); the results are the same.
        self.model_info = model
        self.min_window_s = min_window_s
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.encoder = load_encoder(Path(model.path), self.device)
        self.kind, self.dim = self.encoder.kind, self.encoder.dim

    def _items(self, windows: Sequence[np.ndarray]) -> list[Item]:
        """Every usable window's feature tensors, tagged with the window's index."""
        min_len = max(to_samples(self.min_window_s), 400)
        items: list[Item] = []
        for i, w in enumerate(windows):
            w = np.asarray(w, dtype=np.float32).reshape(-1)
            if w.size >= min_len and np.isfinite(w).all() and np.any(w):
                items += [(i, f) for f in self.encoder.features(w)]
        return items

    @torch.no_grad()
    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """N x dim float32, L2-normalised rows; NaN rows for windows shorter than ``min_window_s``."""
        out = np.full((len(windows), self.dim), np.nan, dtype=np.float32)
        items = self._items(windows)
        if not items:
            return out
        sums = np.zeros((len(windows), self.dim), dtype=np.float64)
        for batch in self.encoder.batches(items, self.batch_size):
            feats = nn.utils.rnn.pad_sequence([m for _, m in batch], batch_first=True)
            emb = self.encoder.forward(feats, torch.tensor([m.shape[0] for _, m in batch]))
            vecs = F.normalize(emb.reshape(len(batch), -1), dim=1).cpu().numpy()
            for (i, _), e in zip(batch, vecs, strict=True):
                sums[i] += e
        done = np.array(sorted({i for i, _ in items}))
        out[done] = sums[done] / np.maximum(np.linalg.norm(sums[done], axis=1, keepdims=True), 1e-12)
        return out
