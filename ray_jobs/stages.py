"""Ray Data stage callables: each wraps one model adapter and isolates failures per chunk.

Each actor stage is built with the run config and the models the driver resolved for the run (slot →
:class:`~models.registry.ResolvedModel`), so every actor loads exactly what ``sessions.models`` records.
A stage never raises for a bad item: it records ``error`` and ``failed_stage`` on the row and passes
it on, so one corrupt session never drops another session's rows. Rows that already carry an error
pass through untouched. Heavy columns (audio, frames) are dropped by the last stage that needs them,
so only small per-chunk results travel back to the driver.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from emoguide.dataio.media import MediaChunk, MediaError, iter_chunks
from emoguide.dataio.storage import StorageError, is_uri, localize
from models.audio import to_samples
from models.registry import ResolvedModel, on_this_machine
from ray_jobs.config import Resources, RunConfig

_Call = TypeVar("_Call", bound=Callable[..., dict[str, Any]])


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None where the C library has none (macOS, musl): nothing to trim there."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def _trims_memory(call: _Call) -> _Call:
    """Wrap a stage's ``__call__`` so that memory freed while processing a chunk goes back to the OS.

    glibc keeps freed heap memory in its arenas for reuse, and a stage actor allocates and frees
    chunk-sized torch/numpy buffers for the whole run: the speaker actor grew by 0.4 GiB over a
    60-minute session. Trimming once per chunk costs tens of milliseconds at most, a small part of a
    chunk's work. (``MALLOC_TRIM_THRESHOLD_`` also keeps actors flat, but it makes every allocation
    over 128 kB a fresh mmap, paid on every call: the speaker stage ran 2-5x slower.)
    """

    @functools.wraps(call)
    def trimmed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return call(*args, **kwargs)
        finally:
            if _MALLOC_TRIM is not None:
                _MALLOC_TRIM(0)

    return cast(_Call, trimmed)


def actor_pool(r: Resources) -> dict[str, Any]:
    """The Ray Data arguments of an actor-pool stage (``map`` or ``map_batches``) with resources ``r``."""
    import ray

    return {
        "compute": ray.data.ActorPoolStrategy(min_size=r.min_actors, max_size=r.max_actors),
        "num_cpus": r.num_cpus,
        "num_gpus": r.num_gpus,
        # Bounded: an input that crashes its worker every time must fail its session, not loop forever.
        # (Passed as Ray remote args, the only way Ray Data 2.60 accepts them.)
        "max_restarts": r.max_restarts,
        "max_task_retries": r.max_task_retries,
    }


def _loaded(models: Mapping[str, ResolvedModel], slot: str, config: RunConfig) -> ResolvedModel:
    """The run's model of ``slot``, as found on the machine this actor runs on."""
    return on_this_machine(models[slot], allow_network=config.allow_network)


def _failed(row: dict[str, Any], stage: str, exc: BaseException) -> dict[str, Any]:
    reason = str(exc) if isinstance(exc, MediaError) else f"{type(exc).__name__}: {exc}"
    return {**row, "error": reason, "failed_stage": stage}


def iter_source_chunks(path: str, fps: float, chunk_s: float, max_side: int) -> Iterator[MediaChunk]:
    """``iter_chunks`` of a local path or an object-store URI.

    PyAV needs a local seekable file, so an object is copied to a temp file that lives only while
    its chunks are being read. Errors name ``path``, never the temp file (PyAV's messages quote it).
    """
    if not is_uri(path):
        yield from iter_chunks(path, fps=fps, chunk_s=chunk_s, max_side=max_side)
        return
    try:
        with localize(path) as local:
            yield from iter_chunks(local, fps=fps, chunk_s=chunk_s, max_side=max_side)
    except (MediaError, StorageError) as exc:
        raise MediaError(path, str(exc).replace(exc.path, path).removeprefix(f"{path}: ")) from exc


def decode_session(row: dict[str, Any], config: RunConfig) -> Iterator[dict[str, Any]]:
    """flat_map: one session row → its chunk rows (or a single error row)."""
    base = {"session_id": row["session_id"], "error": None, "failed_stage": None}
    emitted = 0
    try:
        for chunk in iter_source_chunks(
            row["path"], fps=config.decode.fps, chunk_s=config.decode.chunk_s, max_side=config.decode.max_side
        ):
            emitted += 1
            yield {
                **base,
                "chunk_index": chunk.index,
                "start_s": chunk.start_s,
                "end_s": chunk.end_s,
                "is_last": chunk.is_last,
                "audio": chunk.audio,
                "frames": chunk.frames,
                "frame_times": chunk.frame_times,
            }
    except Exception as exc:  # noqa: BLE001 - any decoder failure belongs to this session only
        yield _failed(
            {
                **base,
                "chunk_index": emitted,
                "start_s": 0.0,
                "end_s": 0.0,
                "is_last": True,
                "audio": np.zeros(0, np.float32),
                "frames": np.zeros((0, 0, 0, 3), np.uint8),
                "frame_times": np.zeros(0),
            },
            "decode",
            exc,
        )


class AsrStage:
    """Transcribes the speech the speaker stage found in each chunk and cuts it into utterances
    (``emoguide/session/utterances.py``); loads the Whisper model once per actor."""

    def __init__(self, config: RunConfig, models: Mapping[str, ResolvedModel]) -> None:
        from models.asr import Transcriber

        c = config.asr
        self.utterances = config.utterances
        self.pool = is_encoder_voice_model(_loaded(models, "voice_emotion", config).path)
        self.transcriber = Transcriber(
            _loaded(models, "asr", config),
            device=c.device,
            compute_type=c.compute_type,
            cpu_threads=c.cpu_threads,
            language=c.language,
            beam_size=c.beam_size,
            keep_encoder=self.pool,
        )

    def _record(self, utterance: Any) -> dict[str, Any]:
        """An utterance as a row; with an encoder voice model, its own span's pooled encoder frames
        (the encoder already ran for transcription: no second pass)."""
        from models.whisper_voice import pool_encoder_frames, word_moments

        record = utterance.as_record()
        if self.pool and utterance.encoder is not None:
            offset = utterance.encoder_start
            span = (utterance.start - offset, utterance.end - offset)
            record["voice_embedding"] = pool_encoder_frames(utterance.encoder, [span])[0].tolist()
            # per word, for the parts a speaker change may cut it into once speakers are known
            starts = [w.start - offset for w in utterance.words]
            record["voice_word_moments"] = word_moments(utterance.encoder, starts, span[1]).tolist()
        return record

    @_trims_memory
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from emoguide.session.utterances import split_segment

        row = {**row, "segments": []}
        regions = row.pop("speech_regions", None)
        if row.get("error"):
            return row
        cut = self.utterances
        try:
            speech = [tuple(r) for r in np.asarray(regions, np.float64).reshape(-1, 2)]
            groups = self.transcriber.transcribe(
                row["audio"], offset_s=float(row["start_s"]), speech=speech, max_pause_s=cut.max_pause_s
            )
            utterances = [u for g in groups for u in split_segment(g, cut.max_pause_s, cut.max_duration_s)]
            row["segments"] = [self._record(u) for u in utterances]
        except Exception as exc:  # noqa: BLE001 - isolate the failure to this chunk's session
            return _failed(row, "asr", exc)
        return row


class FaceStage:
    """Per sampled frame: every face (up to ``face.max_faces``), its emotion, mouth opening and colour
    signature; whose face is whose is decided per session in the reducer.

    Frames are dropped here: only small per-face arrays travel on.
    """

    def __init__(self, config: RunConfig, models: Mapping[str, ResolvedModel]) -> None:
        from models.face import FaceAnalyzer

        c = config.face
        self.analyzer = FaceAnalyzer(
            _loaded(models, "face_detector", config),
            _loaded(models, "face_emotion", config),
            _loaded(models, "face_landmarks", config),
            min_score=c.min_score,
            max_faces=c.max_faces,
        )

    @_trims_memory
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        frames: Any = row.get("frames")
        row = {k: v for k, v in row.items() if k != "frames"}
        if row.get("error"):
            return row
        try:
            faces = self.analyzer.analyze(frames)
        except Exception as exc:  # noqa: BLE001 - isolate the failure to this chunk's session
            return _failed(row, "face", exc)
        row.update({f"face_{name}": value for name, value in vars(faces).items()})
        return row

    def __del__(self) -> None:
        analyzer = getattr(self, "analyzer", None)
        if analyzer is not None:
            analyzer.close()


class SpeakerStage:
    """Voice activity, then speaker embeddings over the chunk's speech windows.

    Speech is where the segmentation model hears it, not where Whisper put words: Whisper's word
    timings spill into pauses. The regions travel on as ``speech_regions``: the ASR stage, which runs
    next, transcribes only them. Words outside every window take the nearest one's speaker.
    Clustering needs the whole session, so it happens in the reducer; here each window becomes one
    embedding row, with its (start, end) in session seconds.
    """

    def __init__(self, config: RunConfig, models: Mapping[str, ResolvedModel]) -> None:
        from models.segmentation import SpeechSegmenter
        from models.speakers.embedders import SpeakerEmbedder
        from models.speakers.windows import cut_windows, region_windows

        c = config.speakers
        self.segmenter = SpeechSegmenter(_loaded(models, "speech_segmentation", config), device=c.device)
        self.embedder = SpeakerEmbedder(_loaded(models, "speaker_embedding", config), device=c.device)
        self.cut_windows, self.region_windows = cut_windows, region_windows

    @_trims_memory
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row.get("error"):
            return row
        try:
            speech = self.segmenter.speech_regions(row["audio"], offset_s=float(row["start_s"]))
            windows = self.region_windows(speech)
            embeddings = self.embedder.embed(self.cut_windows(row["audio"], windows, offset_s=float(row["start_s"])))
        except Exception as exc:  # noqa: BLE001 - isolate the failure to this chunk's session
            return _failed(row, "speakers", exc)
        row["speech_regions"] = np.asarray(speech, dtype=np.float64).reshape(-1, 2)
        row["speaker_windows"] = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
        row["speaker_embeddings"] = np.asarray(embeddings, dtype=np.float32).reshape(len(windows), self.embedder.dim)
        return row


def is_transformers_model(path: Path) -> bool:
    """Speech-emotion checkpoints in Hugging Face format are folders; the offline models are .npz files."""
    return path.is_dir()


def is_encoder_voice_model(path: Path) -> bool:
    """A voice classifier on Whisper encoder frames records the encoder it was trained on."""
    if path.is_dir() or path.suffix != ".npz":
        return False
    with np.load(path, allow_pickle=False) as npz:
        return "encoder_version" in npz.files


class VoiceStage:
    """Per utterance: eGeMAPS functionals (prosody, and the offline emotion model's input).

    The offline eGeMAPS classifier itself runs in the session reducer, because it normalises each
    speaker with statistics over the whole session. A transformers speech-emotion model (production)
    needs the audio, so it runs here and its probabilities travel on. Audio is dropped here.
    """

    def __init__(self, config: RunConfig, models: Mapping[str, ResolvedModel]) -> None:
        from models.voice import EgemapsExtractor, TransformersVoiceEmotion

        c = config.voice
        model = _loaded(models, "voice_emotion", config)
        self.extractor = EgemapsExtractor()
        self.ser = TransformersVoiceEmotion(model, device=c.device) if is_transformers_model(model.path) else None

    @_trims_memory
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        audio: Any = row.get("audio")
        row = {k: v for k, v in row.items() if k != "audio"}
        if row.get("error"):
            return row
        try:
            start = float(row["start_s"])
            pieces = [audio[to_samples(s["start"] - start) : to_samples(s["end"] - start)] for s in row["segments"]]
            row["voice_features"] = self.extractor.features(pieces)
            if self.ser is not None:
                result = self.ser.predict(pieces)
                row.update(voice_probs=result.probs, voice_valence=result.valence, voice_arousal=result.arousal)
        except Exception as exc:  # noqa: BLE001 - isolate the failure to this chunk's session
            return _failed(row, "voice", exc)
        return row
