"""models.llm.TransformersGenerator: real offline SmolLM2 weights, and a random tiny Llama (plumbing)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from emoguide.prompts.build import build_prompts, prompt_messages
from models.llm import GenerationResult, TransformersGenerator
from models.registry import ModelNotFoundError, resolve

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATS = [
    [
        {"role": "system", "content": "You are a therapist."},
        {"role": "user", "content": "I feel anxious about tomorrow."},
    ],
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": "I have not slept well for a week and I keep worrying about work.",
        },
    ],
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random-weight 2-layer Llama + a small BPE tokenizer with a chat template, saved like a hub folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<pad>", "<eos>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [c["content"] for chat in CHATS for c in chat] * 20 + [
        "system user assistant therapist client"
    ] * 20
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_tiny_llama_plumbing(tiny_model_dir):
    model = resolve("llm", path=tiny_model_dir)
    gen = TransformersGenerator(model, max_new_tokens=6, batch_size=2, dtype="float32")
    out = gen.generate(CHATS)
    assert len(out) == len(CHATS) and all(isinstance(r, GenerationResult) for r in out)
    for chat, r in zip(
        CHATS, out
    ):  # input order kept although batches are sorted by length
        expected = len(
            gen.tokenizer(gen.render(chat), add_special_tokens=False)["input_ids"]
        )
        assert r.n_prompt_tokens == expected
        assert 1 <= r.n_generated_tokens <= 6
        assert r.finish_reason in ("stop", "length")
        assert r.finish_reason == "stop" or r.n_generated_tokens == 6
    assert gen.params()["temperature"] == 0.0 and gen.params()["do_sample"] is False
    # sampling is reproducible for a given seed
    sampler = TransformersGenerator(
        model, max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3, dtype="float32"
    )
    assert [r.text for r in sampler.generate(CHATS)] == [
        r.text for r in sampler.generate(CHATS)
    ]
    assert gen.generate([]) == []


def test_bad_model_paths(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError):
        TransformersGenerator(resolve("llm", path=tmp_path / "weights.bin"))
    with pytest.raises(ModelNotFoundError):
        resolve(
            "llm", "llama-3.1-8b-instruct"
        )  # production model: hub only, network not allowed here


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    try:
        model = resolve("llm", "smollm2-135m-instruct")
    except ModelNotFoundError as exc:
        pytest.skip(f"offline SmolLM2 weights not installed: {exc}")
    assert model.source == "package" and model.path.suffix == ".gguf"
    return model


@pytest.mark.slow
def test_smollm2_generates_deterministically_in_one_batch(
    smollm2, tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "EMOGUIDE_CACHE", str(tmp_path)
    )  # the dequantised copy (~0.5 GB) is removed below
    try:
        gen = TransformersGenerator(smollm2, max_new_tokens=8, batch_size=3)
        assert gen.loaded_from.endswith(".gguf")
        rows = [
            r
            for r in build_prompts(_session(), conditions=["text", "dissonance"])
            if r["utt_id"] == "s-u1"
        ]
        chats = [prompt_messages(r) for r in rows] + [CHATS[0]]
        first = gen.generate(chats)
        assert len(first) == 3
        for r in first:
            assert (
                r.text.strip()
                and r.n_prompt_tokens > 20
                and 1 <= r.n_generated_tokens <= 8
            )
            assert r.finish_reason in ("stop", "length")
        assert (
            first[0].n_prompt_tokens < first[1].n_prompt_tokens
        )  # the dissonance prompt carries the cues
        assert gen.generate(chats) == first  # greedy: identical across calls
        # second load reads the dequantised safetensors copy and gives the same output
        again = TransformersGenerator(smollm2, max_new_tokens=8, batch_size=3)
        assert "derived" in again.loaded_from
        assert again.generate(chats) == first
    finally:
        shutil.rmtree(tmp_path / "derived", ignore_errors=True)


def _session() -> list[dict]:
    base = {
        "session_id": "s",
        "speaker": None,
        "face_valence": 0.6,
        "face_arousal": 0.3,
        "voice_valence": -0.6,
        "voice_arousal": 0.5,
        "face_probs": [0.1, 0.8, 0, 0, 0, 0, 0.1, 0],
        "voice_probs": [0.2, 0, 0.5, 0, 0.3, 0, 0, 0],
        "dissonance": True,
        "dissonance_score": 0.8,
        "dissonance_label": "smiling face, distressed voice",
    }
    lines = [
        ("therapist", "How did the conversation with your sister go?"),
        (
            "client",
            "It went fine, really. We laughed a lot. I'm totally okay with how it ended.",
        ),
        ("therapist", "You say it went fine, and I notice your voice sounds strained."),
    ]
    return [
        dict(
            base, utt_id=f"s-u{i}", start_s=3.0 * i, end_s=3.0 * i + 2.5, role=r, text=t
        )
        for i, (r, t) in enumerate(lines)
    ]


# --------------------------------------------------------------------------------------------------
# llama.cpp engine on the real split GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_small():
    from models.llm import LlamaCppGenerator

    return LlamaCppGenerator(resolve("llm", "qwen2.5-coder-0.5b-instruct"), max_new_tokens=12, n_ctx=1024)


def test_llamacpp_generates_in_input_order_and_repeatably(qwen_small):
    first = qwen_small.generate(CHATS)
    assert all(isinstance(r, GenerationResult) and r.text for r in first)
    assert first[0].n_prompt_tokens < first[2].n_prompt_tokens  # counted from each chat, not from a batch
    assert all(0 < r.n_generated_tokens <= 12 for r in first)
    assert qwen_small.generate(CHATS[::-1]) == first[::-1]  # greedy, and order does not change a reply
    assert qwen_small.params()["engine"] == "llamacpp"


def test_llamacpp_grammar_constrains_the_reply():
    from models.llm import LlamaCppGenerator

    grammar = 'root ::= "score: " [1-5]'
    gen = LlamaCppGenerator(resolve("llm", "qwen2.5-coder-0.5b-instruct"), max_new_tokens=8, n_ctx=1024, grammar=grammar)
    [res] = gen.generate([[{"role": "user", "content": "Rate this reply from 1 to 5: 'You sound tired.'"}]])
    assert res.text in {f"score: {i}" for i in range(1, 6)}
    assert gen.params()["grammar"] == grammar


def _stops_inside(text: str) -> list[str]:
    """Two stop strings from within a reply, the one listed first found later in it, and one that spans
    the end of the prompt (its closing newline, then the reply's first word): that one must not stop it."""
    words = text.split(" ")
    assert len(words) >= 5, text
    return [" " + " ".join(words[3:5]), " " + words[2], "\n" + words[0]]


@pytest.mark.parametrize("engine", ["llamacpp", "transformers"])
def test_a_reply_ends_before_the_first_stop_string(engine):
    """With stop strings taken from inside a greedy reply, the reply is the text before the first of them,
    unchanged, on both engines."""
    from models.llm import load_generator

    if engine == "llamacpp":
        model, settings = resolve("llm", "qwen2.5-coder-0.5b-instruct"), {"n_ctx": 1024}
    else:
        model, settings = resolve("llm", "smollm2-135m-instruct"), {"batch_size": 2}
    chats = [[{"role": "user", "content": f"Describe a quiet {time} by the sea in two sentences."}]
             for time in ("morning", "winter evening after a long day at work")]  # fmt: skip
    free = load_generator(engine, model, max_new_tokens=16, **settings).generate(chats)
    stops = _stops_inside(free[0].text)
    gen = load_generator(engine, model, max_new_tokens=16, stop=stops, **settings)
    stopped = gen.generate(chats)  # batched together on transformers: one row stops, the other goes on
    assert "\n" + free[0].text.split(" ")[0] not in free[0].text  # the spanning stop string is not in the reply
    assert stopped[0].text == free[0].text[: min(free[0].text.find(s) for s in stops[:2])].strip()
    assert stopped[0].finish_reason == "stop" and stopped[0].n_generated_tokens < free[0].n_generated_tokens
    if not any(s in free[1].text for s in stops):
        assert stopped[1] == free[1]
    assert gen.params()["stop"] == stops
    with pytest.raises(ValueError, match="stop strings"):
        load_generator(engine, model, stop=[""], **settings)


def test_load_generator_names_the_engines():
    from models.llm import load_generator

    with pytest.raises(ValueError, match="llamacpp, transformers"):
        load_generator("onnx", resolve("llm", "smollm2-135m-instruct"))
    with pytest.raises(ValueError, match="needs a .gguf"):
        load_generator("llamacpp", resolve("embedding"))


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Therapist: It sounds hard.", "It sounds hard."),
        ('**Therapist:** "You feel stuck."', "You feel stuck."),
        ("I hear you: that is hard.", "I hear you: that is hard."),
        ('"Quoted" and more "x"', '"Quoted" and more "x"'),
        ("The therapist said nothing.", "The therapist said nothing."),
        ('"Thank you for sharing that. It sounds', "Thank you for sharing that. It sounds"),
        ("'Tis the season, you said.", "'Tis the season, you said."),
    ],
)
def test_clean_reply_removes_only_a_leading_label_and_wrapping_quotes(raw, clean):
    from models.llm import clean_reply

    assert clean_reply(raw) == clean


def test_llamacpp_choice_probs_match_greedy_decoding():
    """The distribution read at a prefix agrees with what greedy decoding writes there, and reading it after
    generate() reuses the cached chat."""
    from models.llm import LlamaCppGenerator

    grammar = 'root ::= "score: " [1-5]'
    gen = LlamaCppGenerator(resolve("llm", "qwen2.5-coder-0.5b-instruct"), max_new_tokens=8, n_ctx=1024, grammar=grammar)
    chat = [{"role": "user", "content": "Rate this reply from 1 to 5: 'You sound tired.'"}]
    [res] = gen.generate([chat])
    probs = gen.choice_probs(chat, ["score: ", "score: "], ["1", "2", "3", "4", "5"])
    assert probs.shape == (2, 5) and np.allclose(probs.sum(axis=1), 1)
    assert np.allclose(probs[0], probs[1])  # a prefix already evaluated gives the same distribution again
    assert res.text == f"score: {int(probs[0].argmax()) + 1}"
    with pytest.raises(ValueError, match="exactly one token"):
        gen.choice_probs(chat, ["score: "], ["12345 and more"])


def test_without_span_empties_the_block_of_the_last_message_only():
    from models.llm import without_span

    chat = [
        {"role": "system", "content": "The dialogue is between <t> and </t>."},
        {"role": "user", "content": "<t>\nClient: I lost my dog.\n</t>\nCues: sad.\nReply."},
    ]
    plain = without_span(chat, ("<t>", "</t>"))
    assert plain == [chat[0], {"role": "user", "content": "<t>\n</t>\nCues: sad.\nReply."}]
    assert chat[1]["content"].startswith("<t>\nClient")  # the input is not changed
    with pytest.raises(ValueError, match="no <x> ... </x> block"):
        without_span(chat, ("<x>", "</x>"))


def test_llamacpp_context_contrast_decodes_the_contrasted_logits():
    """Each token is the argmax of (1 + a) * logits(prompt) - a * logits(prompt without the block), read here
    independently of the decoding loop, and a contrast of 0 decodes exactly as plain greedy decoding."""
    from llama_cpp import Llama

    from models.llm import LlamaCppGenerator, _eval_to, without_span

    model, span, alpha = resolve("llm", "qwen2.5-coder-0.5b-instruct"), ("<t>", "</t>"), 1.0
    chat = [{"role": "user", "content": "<t>Client: I lost my dog last week.</t> Answer the client in one sentence."}]
    gen = LlamaCppGenerator(
        model, max_new_tokens=6, n_ctx=512, context_contrast=alpha, contrast_span=span, prefix_marker="</t>"
    )
    [res] = gen.generate([chat])
    assert gen.params()["context_contrast"] == alpha
    reader = Llama(model_path=str(model.path), n_ctx=512, verbose=False)
    full, plain = (gen._tokens(gen._format(messages=c).prompt) for c in (chat, without_span(chat, span)))
    reply: list[int] = []
    for _ in range(6):
        logits = (1 + alpha) * _eval_to(reader, full + reply) - alpha * _eval_to(reader, plain + reply)
        reply.append(int(np.argmax(logits)))
        if reply[-1] == reader.token_eos() or reader.detokenize(reply[-1:]) == b"<|im_end|>":
            reply.pop()
            break
    assert res.text == reader.detokenize(reply).decode("utf-8", "replace").strip()
    other = [{"role": "user", "content": "<t>Client: Work has been hard.</t> Answer the client in one sentence."}]
    assert gen.generate([other, chat])[1] == res  # the reply before does not change this one
    off = LlamaCppGenerator(model, max_new_tokens=6, n_ctx=512, contrast_span=span, prefix_marker="</t>")
    greedy = LlamaCppGenerator(model, max_new_tokens=6, n_ctx=512, prefix_marker="</t>")
    assert off.generate([chat]) == greedy.generate([chat])


def test_transformers_context_contrast_is_the_same_batched_or_alone(tiny_model_dir):
    """The emptied prompts are padded like the prompts: a reply does not depend on its batch."""
    model = resolve("llm", path=tiny_model_dir)
    chats = [[{"role": "user", "content": f"<t>{c[-1]['content']}</t> Reply."}] for c in CHATS]
    settings = {"max_new_tokens": 6, "context_contrast": 0.5, "contrast_span": ("<t>", "</t>"), "dtype": "float32"}
    batched = TransformersGenerator(model, batch_size=3, **settings).generate(chats)
    alone = TransformersGenerator(model, batch_size=1, **settings).generate(chats)
    plain = TransformersGenerator(model, batch_size=3, max_new_tokens=6, dtype="float32").generate(chats)
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.text for r in batched] != [r.text for r in plain]
