"""Generation of therapist interventions: prompts → LLM → ``interventions.parquet``.

Runs after perception, as its own Ray Data pass, so a single GPU first serves the perception stages
and then the LLM whole. Three engines with the same inputs and outputs:

* ``vllm`` (GPU): ``ray.data.llm``'s vLLM engine processor (model, batch size, tensor parallelism and
  maximum model length from the config). vLLM lives in the ``gpu`` extra and the docker image.
* ``llamacpp`` (CPU default): an actor pool around :class:`models.llm.LlamaCppGenerator` running the
  offline default, Qwen2.5-Coder-1.5B-Instruct in 4 bits; the dialogue block of a client turn is
  evaluated once for all its conditions.
* ``transformers`` (CPU): an actor pool around :class:`models.llm.TransformersGenerator`, several
  prompts per forward pass (any Hugging Face causal LM, or a GGUF dequantised).

On every engine a reply ends where a line would open the transcript's next turn ("Client:", ``TURN_STARTS``)
and goes through :func:`models.llm.clean_reply` (a leading "Therapist:" label removed).

Each row keeps its prompt, the therapist's actual reply (``reference``), the model and the sampling
parameters (``params``, JSON), so conditions can be compared under identical settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray

from emoguide.prompts.build import TRANSCRIPT_END, TRANSCRIPT_START, TURN_STARTS
from models.llm import clean_reply
from models.registry import ResolvedModel, on_this_machine
from ray_jobs.config import GenerationConfig, RunConfig
from ray_jobs.stages import actor_pool


def sampling_params(c: GenerationConfig) -> dict[str, Any]:
    """vLLM sampling parameters; with temperature 0 decoding is greedy and runs are repeatable."""
    return {
        "temperature": c.temperature,
        "top_p": c.top_p,
        "max_tokens": c.max_new_tokens,
        "seed": c.seed,
        "repetition_penalty": c.repetition_penalty,
        "stop": list(TURN_STARTS),
    }


def vllm_processor_config(c: GenerationConfig, model: ResolvedModel | str) -> Any:
    """The ``ray.data.llm`` vLLM processor config (buildable without a GPU; vLLM runs only when executed)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    source = str(model.path) if isinstance(model, ResolvedModel) else model
    return vLLMEngineProcessorConfig(
        model_source=source,
        engine_kwargs={
            "tensor_parallel_size": c.tensor_parallel_size,
            "max_model_len": c.max_model_len,
            "gpu_memory_utilization": c.gpu_memory_utilization,
            "seed": c.seed,
        },
        batch_size=c.batch_size,
        concurrency=c.resources.max_actors,
    )


def vllm_processor(c: GenerationConfig, model: ResolvedModel | str, model_name: str) -> Any:
    """A processor that maps prompt rows to rows with ``generation`` and token counts."""
    from ray.data.llm import build_processor

    params = sampling_params(c)
    recorded = json.dumps({**params, "engine": "vllm"}, sort_keys=True)

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "messages": json.loads(row["prompt"]), "sampling_params": params}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        keep = {k: row[k] for k in _KEYS if k in row}
        return {
            **keep,
            "generation": clean_reply(row["generated_text"]),
            "model": model_name,
            "params": recorded,
            "n_generated_tokens": int(row.get("num_generated_tokens") or 0),
            "error": None,
        }

    return build_processor(vllm_processor_config(c, model), preprocess=preprocess, postprocess=postprocess)


def cpu_generator(c: GenerationConfig, model: ResolvedModel) -> Any:
    """The CPU engine ``c.engine`` with the run's sampling settings (llama.cpp or transformers)."""
    from models.llm import load_generator

    engine_settings: dict[str, Any] = (
        {"prefix_marker": TRANSCRIPT_END} if c.engine == "llamacpp" else {"batch_size": c.batch_size}
    )
    return load_generator(
        c.engine,
        model,
        max_new_tokens=c.max_new_tokens,
        temperature=c.temperature,
        top_p=c.top_p,
        seed=c.seed,
        num_threads=c.num_threads,
        repetition_penalty=c.repetition_penalty,
        context_contrast=c.context_contrast,
        contrast_span=(TRANSCRIPT_START, TRANSCRIPT_END),
        stop=TURN_STARTS,
        **engine_settings,
    )


class CpuGenerationStage:
    """A CPU twin (llama.cpp or transformers): one model per actor, failures kept per row.
    ``model`` is the LLM the driver resolved for the run."""

    def __init__(self, config: RunConfig, model: ResolvedModel) -> None:
        model = on_this_machine(model, allow_network=config.allow_network)
        self.model_name = model.name
        self.generator = cpu_generator(config.generation, model)
        self.params = json.dumps(self.generator.params(), sort_keys=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["prompt"])
        out: dict[str, Any] = {k: batch[k] for k in _KEYS}
        try:
            results = self.generator.generate([json.loads(p) for p in batch["prompt"]])
            out.update(
                generation=[r.text for r in results],
                n_generated_tokens=[r.n_generated_tokens for r in results],
                error=[None] * n,
            )
        except Exception as exc:  # noqa: BLE001 - a failed batch is recorded, the run goes on
            out.update(generation=[None] * n, n_generated_tokens=[0] * n, error=[f"{type(exc).__name__}: {exc}"] * n)
        out.update(model=[self.model_name] * n, params=[self.params] * n)
        return out


_KEYS = ("session_id", "utt_id", "condition", "prompt", "reference", "template")  # travel with the prompt
# Prompt columns the output keeps without sending them through the LLM pass: joined back on the driver.
_CARRIED = ("cue", "turn_utt_ids")


def _row_key(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A prompt row's identity: one client turn (its last utterance) under one condition."""
    return row["session_id"], row["utt_id"], row["condition"]


def generate(rows: list[dict[str, Any]], config: RunConfig, model: ResolvedModel) -> Iterator[dict[str, Any]]:
    """Generate an intervention for each prompt row with ``model`` (resolved once for the run); rows
    come back as they finish (any order), with the prompt's cue and turn utterances."""
    if not rows:
        return
    c = config.generation
    items = [{k: r[k] for k in _KEYS} for r in rows]
    carried = {_row_key(r): {k: r[k] for k in _CARRIED} for r in rows}
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // c.batch_size, 64)))
    if c.engine == "vllm":
        ds = vllm_processor(c, model, model.name)(ds)
    else:
        ds = ds.map_batches(
            CpuGenerationStage,
            fn_constructor_kwargs={"config": config, "model": model},
            batch_size=c.batch_size,
            **actor_pool(c.resources),
        )
    for row in ds.iter_rows():
        yield {**row, **carried[_row_key(row)]}
