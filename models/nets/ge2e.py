"""Resemblyzer's GE2E speaker encoder, re-implemented in torch (parity: tests/test_nets.py).

The ``resemblyzer`` package needs librosa and webrtcvad, so it is not imported: its ``pretrained.pt``
(shipped in the PyPI ``resemblyzer`` 0.1.4 wheel, Apache-2.0) loads into :class:`GE2E` below, a
3-layer LSTM (40 mel -> 256), a linear layer 256 -> 256 and ReLU, and its frontend (librosa power mel
spectrogram: 25 ms Hann window, 10 ms hop, 40 Slaney mel bands, no log) is :func:`mel_filterbank`
(matches librosa 0.11 to float precision).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from models.audio import SAMPLE_RATE


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
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


class GE2E(nn.Module):
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
