"""The run configuration: what each stage computes and the resources it asks Ray for.

One YAML file (``--config``) overrides the defaults below; unknown keys are an error so a typo
never silently falls back to a default. ``config_hash`` covers only settings that change results
(models, sampling, thresholds), not resources, so moving a run to a GPU cluster keeps resume valid.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from emoguide.prompts.build import DEFAULT_TEMPLATE
from emoguide.prompts.conditions import CONDITIONS


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message says which key and why."""


@dataclass
class Resources:
    """What one stage asks Ray for. Fractional CPUs keep a 2-core machine from deadlocking."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int = 1
    max_restarts: int = 3  # a crashed actor is restarted this often (Ray Data's default is forever)
    max_task_retries: int = 2  # and the chunk it held is retried this often, then its session fails


@dataclass
class DecodeConfig:
    fps: float = 2.0
    chunk_s: float = 30.0
    max_side: int = 640
    # Sessions decoded at once (one decode task each): how many sessions' chunks are in the pipeline
    # together. None: as many as Ray Data schedules. Like resources, it never changes results.
    sessions_in_flight: int | None = None
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=0.25))


@dataclass
class AsrConfig:
    model: str = "whisper-tiny.en"
    path: str | None = None
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 2
    beam_size: int = 5
    language: str | None = None
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1.0))


@dataclass
class FaceConfig:
    detector: str = "blazeface-short-range"
    detector_path: str | None = None
    emotion: str = "fer-mini-xception"
    emotion_path: str | None = None
    min_score: float = 0.5  # detector confidence below which a face is not a face
    landmarks: str = "facemesh-v1"  # mouth opening, for telling whose face is whose
    landmarks_path: str | None = None
    max_faces: int = 4  # faces kept per frame, largest first
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=0.25))


@dataclass
class VoiceConfig:
    # Whisper tiny.en encoder frames (what the ASR computes anyway): 0.76 voice accuracy through the whole
    # pipeline on held-out RAVDESS actors, against 0.63 for egemaps-ravdess-logreg. Fits only the
    # whisper-tiny.en ASR model: with another ASR, choose egemaps-ravdess-logreg or a transformers model.
    model: str = "whisper-tiny-en-ravdess-logreg"
    path: str | None = None
    device: str = "cpu"  # for transformers speech-emotion models
    min_speaker_utterances: int = 8  # per-speaker normalisation needs this many utterances of a speaker
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=0.25))


@dataclass
class SpeakersConfig:
    model: str = "campplus-zh-en"
    path: str | None = None
    segmentation: str = "pyannote-segmentation-3.0"  # voice activity: where the speaker windows go
    segmentation_path: str | None = None
    device: str = "cpu"
    num_speakers: int | None = None  # known count; otherwise estimated within [min, max]
    # Cosine distance at which clusters stop merging when the count is estimated; null: the value
    # calibrated for the default CAM++ encoder. Another encoder needs its own (or num_speakers).
    distance_threshold: float | None = None
    min_speakers: int = 1  # 1 keeps a monologue one speaker; 2 helps when every session is a dialogue
    max_speakers: int = 4
    therapist_speaker: str | None = None  # e.g. "S1": overrides role assignment
    min_role_confidence: float = 0.6  # below it every role is "unknown"
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=0.25))


GENERATION_ENGINES = ("llamacpp", "transformers", "vllm")


@dataclass
class GenerationConfig:
    enabled: bool = True  # --no-generate stops after the reducer
    engine: str = "llamacpp"  # CPU: llamacpp (GGUF as is) or transformers; "vllm" on GPU (the gpu presets)
    model: str = "qwen2.5-coder-1.5b-instruct"  # the offline default (README: Interventions)
    path: str | None = None
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    context_turns: int = 6
    template: str = DEFAULT_TEMPLATE
    max_new_tokens: int = 96
    temperature: float = 0.0  # 0 = greedy: repeatable
    top_p: float = 1.0
    repetition_penalty: float = 1.1  # small models loop without it; 1.0 = off
    # CPU engines: context-aware decoding against the prompt without its dialogue, 0 = off (README: Interventions)
    context_contrast: float = 0.0
    seed: int = 0
    batch_size: int = 8
    num_threads: int | None = None  # CPU twin: torch threads per actor (None: torch's default)
    tensor_parallel_size: int = 1  # vLLM
    max_model_len: int = 4096  # vLLM
    gpu_memory_utilization: float = 0.85  # vLLM
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1.0))


@dataclass
class UtterancesConfig:
    """Where utterances end (``emoguide/session/utterances.py``); face, voice and dissonance are per utterance."""

    max_pause_s: float = 0.8  # a longer pause between words ends an utterance (and a Whisper input)
    max_duration_s: float = 20.0  # a longer utterance is cut at its longest pause


@dataclass
class DissonanceConfig:
    threshold: float = 0.5  # the paper's rule: max(|dV|, |dA|) > threshold
    # A channel less sure than this (top-class probability) is not used: dissonance is then null.
    min_face_confidence: float = 0.0
    min_voice_confidence: float = 0.0


STAGES = ("decode", "asr", "face", "speakers", "voice", "generation")


@dataclass
class RunConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    speakers: SpeakersConfig = field(default_factory=SpeakersConfig)
    utterances: UtterancesConfig = field(default_factory=UtterancesConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    dissonance: DissonanceConfig = field(default_factory=DissonanceConfig)
    allow_network: bool = False  # hub downloads at run time; off by default (sensitive data)
    redact: bool = False  # replace names, places, numbers, e-mails in transcripts (emoguide/session/redact.py)

    def config_hash(self) -> str:
        """Fingerprint of every setting that changes the perception tables (resources excluded).

        Generation settings are left out: changing the LLM must not redo the videos.
        """
        data = _strip_resources({k: v for k, v in asdict(self).items() if k != "generation"})
        return _digest(data)

    def generation_hash(self) -> str:
        """Fingerprint of the settings that change generated interventions (not batching or resources)."""
        data = _strip_resources(asdict(self.generation))
        for key in ("enabled", "batch_size", "num_threads"):
            data.pop(key)
        return _digest(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Presets set devices and resources for a kind of cluster; a config file and the command line override
# them. gpu-1 shares one GPU between the perception stages with fractions; gpu-n gives every stage an
# autoscaling pool of up to one actor per GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu-1": {
        "decode": {"resources": {"num_cpus": 1.0}},
        "asr": {
            "device": "cuda",
            "compute_type": "float16",
            "cpu_threads": 4,
            "resources": {"num_cpus": 1.0, "num_gpus": 0.4},
        },
        "face": {"resources": {"num_cpus": 1.0, "num_gpus": 0.1}},
        "voice": {"device": "cuda", "resources": {"num_cpus": 1.0, "num_gpus": 0.1}},
        "speakers": {"device": "cuda", "resources": {"num_cpus": 1.0, "num_gpus": 0.1}},
        # generation runs after perception, so it gets the whole GPU
        "generation": {
            "engine": "vllm",
            "model": "llama-3.1-8b-instruct",
            "batch_size": 64,
            "resources": {"num_cpus": 1.0, "num_gpus": 1.0},
        },
    },
}
PRESET_NAMES = ("auto", "cpu", "gpu-1", "gpu-n")


def preset_overrides(name: str, num_gpus: float) -> dict[str, Any]:
    """The settings of a preset on a cluster with ``num_gpus`` GPUs (gpu-n scales its pools with them)."""
    if name == "gpu-n":
        n = max(1, int(num_gpus))
        preset = copy.deepcopy(PRESETS["gpu-1"])
        for stage in ("asr", "face", "voice", "speakers"):
            preset[stage]["resources"].update(min_actors=1, max_actors=n)
        preset["asr"]["resources"]["num_gpus"] = 1.0
        preset["decode"]["resources"]["num_cpus"] = 1.0
        return preset
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESET_NAMES)}")
    return copy.deepcopy(PRESETS[name])


def choose_preset(requested: str, num_gpus: float) -> tuple[str, str]:
    """(preset, reason): ``auto`` follows the GPUs Ray reports; a GPU preset without GPUs is an error."""
    if requested == "auto":
        if num_gpus <= 0:
            return "cpu", "Ray reports no GPUs: using the cpu preset"
        name = "gpu-1" if num_gpus < 2 else "gpu-n"
        return name, f"Ray reports {num_gpus:g} GPU(s): using the {name} preset"
    if requested.startswith("gpu") and num_gpus <= 0:
        raise ConfigError(f"preset {requested!r} needs GPUs, but Ray reports none")
    if requested not in PRESET_NAMES:
        raise ConfigError(f"unknown preset {requested!r}; known: {', '.join(PRESET_NAMES)}")
    return requested, f"using the {requested} preset"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_NOT_HASHED = frozenset({"resources", "sessions_in_flight"})  # how a run is scheduled, not what it computes


def _strip_resources(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_resources(v) for k, v in value.items() if k not in _NOT_HASHED}
    return value


def _merge(target: Any, overrides: dict[str, Any], where: str) -> None:
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(overrides).__name__}")
    known = {f.name: f for f in fields(target)}
    hints = get_type_hints(type(target))
    for key, value in overrides.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"unknown setting {name!r}; known: {', '.join(sorted(known))}")
        current = getattr(target, key)
        if is_dataclass(current):
            _merge(current, value, name)
            continue
        setattr(target, key, _coerce(value, current, hints[key], name))


def _coerce(value: Any, current: Any, annotation: Any, name: str) -> Any:
    types = (annotation, *get_args(annotation))  # ``float | None`` -> (the union, float, NoneType)
    optional = type(None) in types
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: may not be null")
    if isinstance(current, bool) or annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if isinstance(current, list):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{name}: expected a list of names, got {value!r}")
    for kind in (int, float, str):
        if isinstance(current, kind) or kind in types:
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, kind) and not isinstance(value, bool):
                return value
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    preset: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults, then the preset, then the YAML file, then explicit overrides (from the command line)."""
    config = RunConfig()
    if preset:
        _merge(config, copy.deepcopy(preset), "")
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        _merge(config, data, "")
    if overrides:
        _merge(config, copy.deepcopy(overrides), "")
    _validate(config)
    return config


def _validate(config: RunConfig) -> None:
    if config.decode.fps <= 0 or config.decode.fps > 60:
        raise ConfigError(f"decode.fps must be in (0, 60], got {config.decode.fps}")
    if config.decode.chunk_s < 5:
        raise ConfigError(f"decode.chunk_s must be at least 5 s, got {config.decode.chunk_s}")
    if config.decode.sessions_in_flight is not None and config.decode.sessions_in_flight < 1:
        raise ConfigError(f"decode.sessions_in_flight must be at least 1, got {config.decode.sessions_in_flight}")
    if config.decode.max_side < 64:
        raise ConfigError(f"decode.max_side must be at least 64 px, got {config.decode.max_side}")
    u = config.utterances
    if not 0.0 < u.max_pause_s < u.max_duration_s:
        raise ConfigError("utterances: need 0 < max_pause_s < max_duration_s")
    d = config.dissonance
    if not (0.0 <= d.min_face_confidence < 1.0 and 0.0 <= d.min_voice_confidence < 1.0):
        raise ConfigError("dissonance.min_face_confidence and min_voice_confidence must be in [0, 1)")
    if not 0.0 < config.dissonance.threshold < 2.0:
        raise ConfigError(f"dissonance.threshold must be in (0, 2), got {config.dissonance.threshold}")
    g = config.generation
    if g.engine not in GENERATION_ENGINES:
        raise ConfigError(f"generation.engine must be one of {', '.join(GENERATION_ENGINES)}, got {g.engine!r}")
    if g.context_contrast < 0 or (g.context_contrast and g.engine == "vllm"):
        raise ConfigError(
            f"generation.context_contrast must be >= 0, and 0 with the vllm engine, got {g.context_contrast}"
        )
    if not g.conditions or any(c not in CONDITIONS for c in g.conditions):
        raise ConfigError(f"generation.conditions must be a non-empty subset of {', '.join(CONDITIONS)}")
    if g.context_turns < 1 or g.max_new_tokens < 1 or g.batch_size < 1 or not 0 < g.top_p <= 1 or g.temperature < 0:
        raise ConfigError(
            "generation: context_turns, max_new_tokens, batch_size >= 1; 0 < top_p <= 1; temperature >= 0"
        )
    sp = config.speakers
    if not 1 <= sp.min_speakers <= sp.max_speakers or (sp.num_speakers is not None and sp.num_speakers < 1):
        raise ConfigError("speakers: need 1 <= min_speakers <= max_speakers and num_speakers >= 1")
    if sp.distance_threshold is not None and not 0.0 < sp.distance_threshold < 2.0:
        raise ConfigError(f"speakers.distance_threshold must be in (0, 2), got {sp.distance_threshold}")
    if not 0.0 < config.face.min_score < 1.0:
        raise ConfigError(f"face.min_score must be in (0, 1), got {config.face.min_score}")
    if config.face.max_faces < 1:
        raise ConfigError(f"face.max_faces must be at least 1, got {config.face.max_faces}")
    for stage in STAGES:
        r: Resources = getattr(config, stage).resources
        if r.num_cpus < 0 or r.num_gpus < 0:
            raise ConfigError(f"{stage}.resources: num_cpus and num_gpus must be >= 0")
        if not 1 <= r.min_actors <= r.max_actors:
            raise ConfigError(f"{stage}.resources: need 1 <= min_actors <= max_actors")
