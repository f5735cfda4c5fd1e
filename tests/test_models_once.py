"""Each model is resolved once per run, in the driver: the stages load what ``sessions.models`` records,
and a worker that finds other weights under the model's name refuses them."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from unittest import mock

import pytest

from models import registry
from models.registry import ModelNotFoundError, ResolvedModel, on_this_machine
from ray_jobs import generate, pipeline
from ray_jobs.config import load_config

# The model adapters the stages (and the driver's reducer) build; each records the models it is given.
_ADAPTERS = ["models.asr.Transcriber", "models.face.FaceAnalyzer", "models.segmentation.SpeechSegmenter",
             "models.speakers.embedders.SpeakerEmbedder", "models.voice.TransformersVoiceEmotion",
             "models.llm.TransformersGenerator", "models.llm.LlamaCppGenerator", "ray_jobs.pipeline.VoiceEmotion", "ray_jobs.pipeline.WhisperVoiceEmotion"]


@pytest.fixture
def loaded(monkeypatch):
    """slot -> record of every model an adapter was built with; the registry is off limits meanwhile."""
    seen: dict[str, dict] = {}

    def adapter(*args, **kwargs):
        for value in [*args, *kwargs.values()]:
            if isinstance(value, ResolvedModel):
                seen[value.slot] = value.record()
        return mock.MagicMock(**{"params.return_value": {}})  # the generator records its params as JSON

    for target in _ADAPTERS:
        monkeypatch.setattr(target, adapter)
    return seen


def test_the_stages_load_the_models_the_run_records(loaded, monkeypatch):
    config = load_config(None)
    models = pipeline.resolve_models(config)
    llm = pipeline.resolve_llm(config)
    recorded = json.loads(pipeline.models_record(models))
    # from here on a second resolution would be a bug: it may find other weights than the recorded ones
    monkeypatch.setattr(registry, "resolve", lambda *a, **k: pytest.fail(f"model resolved again: {a}"))
    for stage, _ in pipeline.perception_stages(config):  # as build_dataset builds them
        stage(config=config, models=models)
    pipeline.load_voice_model(models["voice_emotion"], models["asr"], config.voice.min_speaker_utterances)
    assert loaded == recorded
    generate.CpuGenerationStage(config=config, model=llm)
    assert loaded["llm"] == llm.record()


@pytest.fixture
def asr(tmp_path) -> ResolvedModel:
    """The default ASR model, resolved, with a copy of its weights in tmp_path/copy."""
    model = registry.resolve("asr")
    shutil.copytree(model.path, tmp_path / "copy")
    return model


def test_a_model_found_where_the_driver_found_it_is_used_as_is(asr):
    assert on_this_machine(asr) is asr


def test_a_worker_without_the_drivers_path_uses_its_own_copy_of_the_same_version(asr, tmp_path):
    elsewhere = replace(asr, path=tmp_path / "not-on-this-node")  # e.g. the driver's cache, on another node
    assert on_this_machine(elsewhere) == asr


def test_other_weights_under_the_same_name_are_refused(asr, tmp_path):
    other = replace(asr, path=tmp_path / "not-on-this-node", version="sha256:0000000000000000")
    with pytest.raises(ModelNotFoundError, match="is not on this machine; here it is sha256:"):
        on_this_machine(other)
    changed = replace(asr, path=tmp_path / "copy", version="sha256:0000000000000000")  # same place, new content
    with pytest.raises(ModelNotFoundError):
        on_this_machine(changed)
