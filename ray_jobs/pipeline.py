"""The Ray Data graph of a run and the driver loop that turns its stream into output tables.

Graph: sessions → decode (tasks, streaming chunks) → face (actor pool) → speakers: voice activity and
speaker embeddings (actor pool) → ASR of the speech found (actor pool) → voice (actor pool) → driver.
Stages overlap: while ASR works on one chunk, face works on the next.
Each stage declares its resources from the run config, so the same graph runs on a laptop, on one
GPU box (fractional GPUs) or on a cluster. The driver groups chunk results by session as they stream
in and writes a session's part files as soon as its last chunk is back, so results appear while the
run is going and a crash loses only the sessions in flight.

Every model is resolved once, here in the driver, and the stages are given what was resolved: what
``sessions.models`` records is what ran.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray

from emoguide.dataio.inputs import SessionInput, fingerprint
from emoguide.dataio.tables import (
    SESSIONS,
    UTTERANCES,
    merge_parts,
    part_paths,
    read_generation_hash,
    read_session_part,
    to_table,
    write_interventions_part,
    write_session_parts,
)
from emoguide.prompts.build import build_prompts
from emoguide.session.reduce import reduce_session
from models.audio import to_samples
from models.registry import ResolvedModel, resolve
from models.voice import EgemapsExtractor, VoiceEmotion
from models.whisper_voice import WhisperVoiceEmotion
from ray_jobs.config import Resources, RunConfig
from ray_jobs.generate import generate
from ray_jobs.stages import (
    AsrStage,
    FaceStage,
    SpeakerStage,
    VoiceStage,
    actor_pool,
    decode_session,
    is_encoder_voice_model,
    is_transformers_model,
    iter_source_chunks,
)

log = logging.getLogger("emoguide")


@dataclass
class RunSummary:
    """What a run did, for the end-of-run report and the exit code."""

    out_dir: Path
    sessions: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    wall_s: float = 0.0
    n_interventions: int = 0
    generated_tokens: int = 0
    generation_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for s in self.sessions if s["status"] == status)

    @property
    def media_s(self) -> float:
        return sum(s["duration_s"] or 0.0 for s in self.sessions)

    @property
    def n_utterances(self) -> int:
        return sum(s["n_utterances"] or 0 for s in self.sessions)


class RunEvents:
    """What the driver reports while a run goes on; these do nothing (the console's progress line
    overrides them). Called from the driver's thread only."""

    def sessions_planned(self, total: int, skipped: list[dict[str, Any]]) -> None:
        """``total`` sessions in the run, of which ``skipped`` were complete already."""

    def session_finished(self, row: dict[str, Any]) -> None:
        """A session's parts are written (``row``: its ``sessions`` row, failed or not)."""

    def generation_planned(self, total: int) -> None:
        """``total`` interventions are to be generated."""

    def intervention_finished(self) -> None:
        """One intervention came back from the LLM."""


def resolve_models(config: RunConfig) -> dict[str, ResolvedModel]:
    """Resolve every configured model up front: fails fast, before Ray starts work, and records what runs."""
    net = config.allow_network
    return {
        "asr": resolve("asr", config.asr.model, config.asr.path, allow_network=net),
        "face_detector": resolve("face_detector", config.face.detector, config.face.detector_path, allow_network=net),
        "face_emotion": resolve("face_emotion", config.face.emotion, config.face.emotion_path, allow_network=net),
        "face_landmarks": resolve(
            "face_landmarks", config.face.landmarks, config.face.landmarks_path, allow_network=net
        ),
        "voice_emotion": resolve("voice_emotion", config.voice.model, config.voice.path, allow_network=net),
        "speech_segmentation": resolve(
            "speech_segmentation", config.speakers.segmentation, config.speakers.segmentation_path, allow_network=net
        ),
        "speaker_embedding": resolve(
            "speaker_embedding", config.speakers.model, config.speakers.path, allow_network=net
        ),
    }


def resolve_llm(config: RunConfig) -> ResolvedModel:
    """The generation model, resolved with the others at the start of a run (not after perception)."""
    c = config.generation
    return resolve("llm", c.model, c.path, allow_network=config.allow_network)


def models_record(models: dict[str, ResolvedModel]) -> str:
    """``sessions.models``: JSON slot → {slot, name, source, version} of the perception models."""
    return json.dumps({slot: m.record() for slot, m in models.items()}, sort_keys=True)


def load_voice_model(
    model: ResolvedModel, asr: ResolvedModel, min_speaker_utterances: int
) -> VoiceEmotion | WhisperVoiceEmotion | None:
    """The voice model the reducer runs (None: a transformers model runs in the voice stage). A
    classifier of Whisper encoder frames must match the ASR model: checked here, before any work."""
    if is_transformers_model(model.path):
        return None
    if is_encoder_voice_model(model.path):
        return WhisperVoiceEmotion(model, asr=asr, min_speaker_utterances=min_speaker_utterances)
    return VoiceEmotion(model, min_speaker_utterances=min_speaker_utterances)


# Smaller than the audio of the shortest chunk allowed (decode.chunk_s >= 5 s: 320 kB), so that each
# chunk row is its own block.
_ONE_CHUNK_BLOCK_BYTES = 1 << 18


def perception_stages(config: RunConfig) -> list[tuple[type, Resources]]:
    """The actor-pool stages after decode, in graph order, each with its resources.

    Face first: it needs no transcript and drops the frames, the heaviest column, as early as possible.
    """
    return [
        (FaceStage, config.face.resources),
        (SpeakerStage, config.speakers.resources),
        (AsrStage, config.asr.resources),
        (VoiceStage, config.voice.resources),
    ]


def check_resources(config: RunConfig, available: dict[str, float]) -> str | None:
    """A warning when the actor pools at their minimum size (plus decode) ask for more than the cluster has.

    Ray Data starts every pool at its minimum size and waits for each actor: on a fixed-size cluster a
    request that cannot fit never runs, and the run hangs instead of failing (an autoscaling cluster may
    still grow to fit it).
    """
    stages = [resources for _, resources in perception_stages(config)]
    cpus = config.decode.resources.num_cpus + sum(r.min_actors * r.num_cpus for r in stages)
    gpus = sum(r.min_actors * r.num_gpus for r in stages)
    have_cpu, have_gpu = available.get("CPU", 0.0), available.get("GPU", 0.0)
    if cpus <= have_cpu + 1e-9 and gpus <= have_gpu + 1e-9:
        return None
    return (
        f"the stages' actor pools need {cpus:g} CPUs and {gpus:g} GPUs at their minimum size, but Ray "
        f"reports {have_cpu:g} CPUs and {have_gpu:g} GPUs: lower num_cpus/num_gpus or min_actors in the "
        "config, or the run will wait for resources that never come"
    )


def build_dataset(
    sessions: list[SessionInput], config: RunConfig, models: dict[str, ResolvedModel]
) -> ray.data.Dataset:
    """The lazy Ray Data graph for ``sessions``, its stages loading ``models``; nothing runs until it is
    iterated."""
    # A chunk whose task or actor crashes past its retries is dropped instead of aborting the run: its
    # session is then recorded as failed ("not all chunks came back"), and every other session completes.
    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = -1
    # One chunk per block. With Ray Data's default (128 MiB blocks) decode buffers several chunks' frames
    # before handing them on and converts them to a block in one more copy, and every stage then holds
    # that many chunks at once: memory set by the block size, not the chunk length.
    ctx.target_max_block_size = _ONE_CHUNK_BLOCK_BYTES
    items = [{"session_id": s.session_id, "path": s.path} for s in sessions]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    in_flight = config.decode.sessions_in_flight
    ds = ds.flat_map(
        decode_session,
        fn_kwargs={"config": config},
        num_cpus=config.decode.resources.num_cpus,
        compute=ray.data.TaskPoolStrategy(size=in_flight) if in_flight else None,
    )
    for stage, resources in perception_stages(config):
        ds = ds.map(stage, fn_constructor_kwargs={"config": config, "models": models}, **actor_pool(resources))
    return ds


def run_pipeline(
    sessions: list[SessionInput],
    out_dir: Path,
    config: RunConfig,
    force: bool = False,
    events: RunEvents | None = None,
) -> RunSummary:
    """Process ``sessions`` into ``out_dir``; Ray must already be initialised.

    Sessions finished earlier under the same config and input fingerprint are kept, not redone,
    unless ``force``. ``events`` hears of the run's progress as it goes.
    """
    started = time.monotonic()
    events = events or RunEvents()
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    summary = RunSummary(out_dir)
    models = resolve_models(config)  # fails fast, before Ray starts work
    llm = resolve_llm(config) if config.generation.enabled else None
    todo, meta = _plan(sessions, out_dir, config, models, force, summary)
    events.sessions_planned(len(sessions), list(summary.sessions))
    if todo:
        _perceive(todo, meta, out_dir, config, models, summary, events)
    if llm is not None:
        run_generation(out_dir, summary, config, llm, events)
    tables = ("sessions", "utterances", "interventions") if llm is not None else ("sessions", "utterances")
    merge_parts(out_dir, [s.session_id for s in sessions], tables)
    summary.wall_s = time.monotonic() - started
    return summary


def _plan(
    sessions: list[SessionInput],
    out_dir: Path,
    config: RunConfig,
    models: dict[str, ResolvedModel],
    force: bool,
    summary: RunSummary,
) -> tuple[list[SessionInput], dict[str, dict[str, Any]]]:
    """(sessions to process, their fixed ``sessions`` columns); the ones already complete under this
    config and input go into ``summary`` as they are."""
    config_hash = config.config_hash()
    recorded = models_record(models)
    todo: list[SessionInput] = []
    meta: dict[str, dict[str, Any]] = {}
    for s in sessions:
        fp = fingerprint(s.path)
        previous = None if force else read_session_part(out_dir, s.session_id)
        if (
            previous is not None
            and previous["status"] == "ok"
            and previous["config_hash"] == config_hash
            and previous["input_fingerprint"] == fp
        ):
            summary.sessions.append(previous)
            summary.skipped += 1
            continue
        todo.append(s)
        meta[s.session_id] = {
            "session_id": s.session_id,
            "source_path": s.path,
            "config_hash": config_hash,
            "input_fingerprint": fp,
            "models": recorded,
        }
    return todo, meta


def _perceive(
    todo: list[SessionInput],
    meta: dict[str, dict[str, Any]],
    out_dir: Path,
    config: RunConfig,
    models: dict[str, ResolvedModel],
    summary: RunSummary,
    events: RunEvents,
) -> None:
    """Run the graph over ``todo``; each session is reduced and written as soon as its chunks are back."""
    warning = check_resources(config, ray.cluster_resources())
    if warning:
        log.warning(warning)
    voice = load_voice_model(models["voice_emotion"], models["asr"], config.voice.min_speaker_utterances)
    paths = {s.session_id: s.path for s in todo}
    rows = build_dataset(todo, config, models).iter_rows()
    for sid, chunks, wall_s in _group_by_session(rows, list(paths)):
        session_meta = {**meta[sid], "wall_s": wall_s}
        try:
            session_row, utterances = reduce_session(
                session_meta, chunks, config, voice, partial(_span_features, paths[sid])
            )
        except Exception as exc:  # noqa: BLE001 - a reducer bug fails this session only
            failed = _failed_chunk("reduce", f"{type(exc).__name__}: {exc}")
            session_row, utterances = reduce_session(session_meta, [failed], config)
        _finish(out_dir, summary, session_row, utterances, events)


def _group_by_session(
    rows: Iterable[dict[str, Any]], session_ids: list[str]
) -> Iterator[tuple[str, list[dict[str, Any]], float | None]]:
    """(session id, its chunks, seconds since its first chunk came back) as each session's last chunk
    arrives; then each session whose chunks did not all come back, with a failure marker and no time:
    it is recorded as failed, never silently dropped."""
    pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
    expected: dict[str, int] = {}
    first_seen: dict[str, float] = {}
    done: set[str] = set()
    for row in rows:
        sid = row["session_id"]
        first_seen.setdefault(sid, time.monotonic())
        pending[sid].append(row)
        if row["is_last"]:
            expected[sid] = int(row["chunk_index"]) + 1
        if expected.get(sid) == len(pending[sid]):
            done.add(sid)
            yield sid, pending.pop(sid), time.monotonic() - first_seen[sid]
    for sid in [sid for sid in session_ids if sid not in done]:
        lost = _failed_chunk("pipeline", "not all chunks came back from the pipeline")
        yield sid, [*pending.pop(sid, []), lost], None


def run_generation(
    out_dir: Path, summary: RunSummary, config: RunConfig, llm: ResolvedModel, events: RunEvents
) -> None:
    """Interventions by ``llm`` for every usable session that lacks them under the current generation
    settings."""
    ghash = config.generation_hash()
    todo = [
        s["session_id"]
        for s in summary.sessions
        if s["status"] != "failed" and read_generation_hash(out_dir, s["session_id"]) != ghash
    ]
    if not todo:
        return
    c = config.generation
    utterances = [u for sid in todo for u in pq.read_table(part_paths(out_dir, sid)["utterances"]).to_pylist()]
    prompts = build_prompts(utterances, c.conditions, c.context_turns, c.template)
    expected = Counter(p["session_id"] for p in prompts)
    events.generation_planned(len(prompts))
    for sid in todo:  # sessions without a client turn answered by the therapist are done already
        if not expected[sid]:
            write_interventions_part(out_dir, sid, [], ghash)
    started = time.monotonic()
    done: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in generate(prompts, config, llm):
        events.intervention_finished()
        sid = row["session_id"]
        done[sid].append({**row, "generation_hash": ghash})
        summary.n_interventions += 1
        summary.generated_tokens += int(row.get("n_generated_tokens") or 0)
        if len(done[sid]) == expected[sid]:
            write_interventions_part(out_dir, sid, done.pop(sid), ghash)
    summary.generation_s = time.monotonic() - started


def _failed_chunk(stage: str, error: str) -> dict[str, Any]:
    """A marker chunk, ordered after every real one, that makes the reducer record the session's failure."""
    return {"chunk_index": 1 << 30, "start_s": 0.0, "end_s": 0.0, "failed_stage": stage, "error": error}


def _span_features(path: str, spans: list[tuple[float, float]]) -> np.ndarray:
    """eGeMAPS features of time spans of a session, decoding its audio once more (only for utterances
    made by splitting an ASR segment at a speaker change: the voice stage saw whole segments).
    An object-store source is downloaded again for this."""
    wanted: list[list[np.ndarray]] = [[] for _ in spans]
    for chunk in iter_source_chunks(path, fps=1.0, chunk_s=60.0, max_side=64):
        for i, (start, end) in enumerate(spans):
            a, b = (to_samples(t - chunk.start_s, len(chunk.audio)) for t in (start, end))
            if b > a:
                wanted[i].append(chunk.audio[a:b].copy())  # a view would keep the whole chunk alive
    pieces = [np.concatenate(p) if p else np.zeros(0, np.float32) for p in wanted]
    return _extractor().features(pieces)


@lru_cache(maxsize=1)
def _extractor() -> EgemapsExtractor:
    return EgemapsExtractor()


def _finish(
    out_dir: Path,
    summary: RunSummary,
    session_row: dict[str, Any],
    utterances: list[dict[str, Any]],
    events: RunEvents,
) -> None:
    sid = session_row["session_id"]
    tables = {"sessions": to_table([session_row], SESSIONS), "utterances": to_table(utterances, UTTERANCES)}
    write_session_parts(out_dir, sid, tables)
    summary.sessions.append(session_row)
    events.session_finished(session_row)
