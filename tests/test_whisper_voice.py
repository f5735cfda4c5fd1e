"""Vocal emotion from pooled Whisper encoder frames: the pooling, the encoder pass, the shipped weights."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import data_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from faster_whisper import WhisperModel

from emoguide.evaluation.ravdess import classification_scores, ravdess_label, read_audio
from models.emotion import LABELS
from models.registry import resolve
from models.segmentation import SpeechSegmenter
from models.whisper_voice import (
    FRAME_S,
    EncoderMismatchError,
    WhisperVoiceEmotion,
    encoder_frames,
    padded_input,
    pool_encoder_frames,
    pool_moments,
    word_moments,
)

VOICE_MODEL = "whisper-tiny-en-ravdess-logreg"


@pytest.fixture(scope="module")
def asr_model() -> WhisperModel:
    return WhisperModel(str(resolve("asr").path), device="cpu", compute_type="int8", cpu_threads=2)


@pytest.fixture(scope="module")
def ravdess() -> Path:
    return data_path("ravdess")


@pytest.fixture(scope="module")
def voice() -> WhisperVoiceEmotion:
    return WhisperVoiceEmotion(resolve("voice_emotion", VOICE_MODEL), asr=resolve("asr"))


def test_pooling_takes_the_frames_each_span_overlaps() -> None:
    frames = np.arange(20, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], np.float32)  # frame k = (k, -2k)
    spans = [
        (0.06, 0.10),  # exactly frames 3 and 4 (edges on frame boundaries, despite 0.06 / 0.02 = 2.999...)
        (0.065, 0.101),  # partly into frames 3 and 5: frames 3, 4, 5
        (0.0, 0.02),  # frame 0 alone: std 0
        (0.35, 1.0),  # runs past the window: frames 17-19
    ]
    pooled = pool_encoder_frames(frames, spans)
    assert pooled.shape == (4, 4)
    np.testing.assert_allclose(pooled[0], [3.5, -7.0, 0.5, 1.0])
    np.testing.assert_allclose(pooled[1], [4.0, -8.0, np.std([3, 4, 5]), 2 * np.std([3, 4, 5])], rtol=1e-6)
    np.testing.assert_allclose(pooled[2], [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(pooled[3], [18.0, -36.0, np.std([17, 18, 19]), 2 * np.std([17, 18, 19])], rtol=1e-6)


def test_pooling_gives_nan_rows_for_spans_without_frames() -> None:
    frames = np.ones((10, 3), np.float32)
    spans = [(0.1, 0.1), (0.1, 0.05), (float("nan"), 0.1), (0.5, 0.6), (-0.5, -0.1), (0.0, 0.04)]
    pooled = pool_encoder_frames(frames, spans)
    assert np.isnan(pooled[:5]).all()
    np.testing.assert_allclose(pooled[5], [1, 1, 1, 0, 0, 0])
    assert pool_encoder_frames(frames, []).shape == (0, 6)
    with pytest.raises(ValueError, match="n_frames, d"):
        pool_encoder_frames(np.ones(10), [(0.0, 0.1)])


def test_padded_input_is_clipped_to_the_audio() -> None:
    assert padded_input(0.2, 1.0, 2.0) == (0, round(1.4 * 16_000))
    assert padded_input(1.0, 1.9, 2.0) == (round(0.6 * 16_000), 32_000)
    assert FRAME_S == 0.02


def test_encoder_frames_are_the_ones_transcription_computes(asr_model: WhisperModel, ravdess: Path) -> None:
    audio = read_audio(ravdess / "Actor_13" / "03-01-05-02-01-01-13.flac")
    frames = encoder_frames(asr_model, audio)
    seen: list[np.ndarray] = []
    encode = asr_model.encode

    def capture(features: np.ndarray):  # noqa: ANN202 - returns faster-whisper's own StorageView
        out = encode(features)
        seen.append(np.asarray(out)[0].copy())
        return out

    asr_model.encode = capture  # type: ignore[method-assign]
    try:
        list(asr_model.transcribe(audio, language="en", vad_filter=False, temperature=0.0, word_timestamps=True)[0])
    finally:
        del asr_model.encode
    assert frames.shape == (1500, 384)
    np.testing.assert_array_equal(seen[0], frames)


@pytest.mark.slow
def test_shipped_weights_beat_chance_on_held_out_actors(
    voice: WhisperVoiceEmotion, asr_model: WhisperModel, ravdess: Path
) -> None:
    """Two clips of every emotion of two dev actors (13, 18), prepared as the runtime prepares an utterance:
    the speech the pipeline's voice-activity model finds, ±0.4 s, as the input; mean/std over the speech."""
    files = [
        f
        for actor in (13, 18)
        for code in ("01", "03", "04", "05", "06", "07", "08")
        for f in sorted((ravdess / f"Actor_{actor:02d}").glob(f"03-01-{code}-*.flac"))[::3][:2]
    ]
    segmenter = SpeechSegmenter(resolve("speech_segmentation"))
    rows = []
    for f in files:
        audio = read_audio(f)
        regions = segmenter.speech_regions(audio)
        start, end = regions[0][0], regions[-1][1]
        a, b = padded_input(start, end, len(audio) / 16_000)
        rows.append(pool_encoder_frames(encoder_frames(asr_model, audio[a:b]), [(start - a / 16_000, end - a / 16_000)])[0])
    features = np.stack(rows)
    truth = [ravdess_label(f)[0] for f in files]
    result = voice.predict(features, [str(ravdess_label(f)[1]) for f in files])
    assert result.probs.shape == (len(files), len(LABELS)) and result.speaker_normalised.all()
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.abs(result.valence) <= 1) and np.all(np.abs(result.arousal) <= 1)
    population = classification_scores(truth, voice.predict(features).probs)
    speaker = classification_scores(truth, result.probs)
    # Measured on these 28 clips: 0.54 one clip at a time, 0.64 per speaker; chance is 1/7 = 0.14.
    assert population["accuracy"] >= 0.4, population
    assert speaker["accuracy"] >= 0.5, speaker


def test_other_encoders_are_refused_by_name(voice: WhisperVoiceEmotion) -> None:
    assert voice.encoder_name == "whisper-tiny.en" and voice.n_features == 768
    other = replace(resolve("asr"), name="whisper-large-v3", version="sha256:0123456789abcdef")
    with pytest.raises(EncoderMismatchError, match=r"whisper-tiny\.en.*whisper-large-v3"):
        voice.check_encoder(other)
    with pytest.raises(EncoderMismatchError, match="whisper-large-v3"):
        WhisperVoiceEmotion(resolve("voice_emotion", VOICE_MODEL), asr=other)
    with pytest.raises(EncoderMismatchError, match="N × 768"):
        voice.predict(np.zeros((2, 1280)))  # base's 2 × 512 features


def test_registry_resolves_it_offline_as_the_default(voice: WhisperVoiceEmotion) -> None:
    resolved = resolve("voice_emotion", VOICE_MODEL)
    assert resolved.source == "package" and resolved.path.name == "voice_whisper_tiny_en_logreg.npz"
    assert resolved.path.stat().st_size < 200_000
    assert resolve("voice_emotion").name == VOICE_MODEL  # the offline default since it measured better
    assert voice.metadata["train_actors"] == list(range(1, 13))
    result = voice.predict(np.full((3, 768), np.nan), ["s0"] * 3)
    assert np.isnan(result.probs).all() and not result.speaker_normalised.any()


@pytest.mark.slow
def test_the_transcriber_keeps_the_frames_training_computes(ravdess: Path) -> None:
    # the runtime path itself: the ASR adapter's kept encoder output is what training pooled for this input
    from models.asr import Transcriber

    audio = read_audio(ravdess / "Actor_13" / "03-01-05-02-01-01-13.flac")
    regions = SpeechSegmenter(resolve("speech_segmentation")).speech_regions(audio)
    transcriber = Transcriber(resolve("asr"), compute_type="int8", cpu_threads=2, keep_encoder=True)
    (segment,) = transcriber.transcribe(audio, speech=regions, max_pause_s=0.8)
    a, b = padded_input(regions[0][0], regions[-1][1], len(audio) / 16000)
    assert segment.encoder_start == pytest.approx(a / 16000)
    np.testing.assert_array_equal(segment.encoder, encoder_frames(transcriber._model, audio[a:b]))


def test_word_moments_pool_to_the_span_and_to_any_run_of_words() -> None:
    frames = np.random.default_rng(0).standard_normal((1500, 6)).astype(np.float32)
    starts, end = [0.50, 0.84, 1.22, 1.60], 2.06  # on frame edges: a part ends where the next begins
    moments = word_moments(frames, starts, end)
    np.testing.assert_allclose(pool_moments(moments), pool_encoder_frames(frames, [(0.50, end)])[0], atol=1e-5)
    # a part cut at a speaker change: its words' frames, up to the next part's first word
    np.testing.assert_allclose(pool_moments(moments[2:]), pool_encoder_frames(frames, [(1.22, end)])[0], atol=1e-5)
    np.testing.assert_allclose(pool_moments(moments[:2]), pool_encoder_frames(frames, [(0.50, 1.22)])[0], atol=1e-5)
    assert np.isnan(pool_moments(np.zeros((2, 13)))).all()
