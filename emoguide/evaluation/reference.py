"""Reference metrics (no LLM): each generated intervention against the therapist's actual reply.

:func:`reference_metrics` compares each generation with the reference: ROUGE-L F (``rouge-score``, Lin 2004,
Porter stemming), cosine similarity of all-MiniLM-L6-v2 sentence embeddings (:class:`MiniLMEmbedder`), length
in words and form (:func:`reply_form`); writes ``reference_metrics.parquet``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from emoguide.dataio.tables import to_table, write_atomic
from emoguide.evaluation.judge import REFERENCE, intervention_rows

REFERENCE_METRICS = pa.schema(
    [
        ("session_id", pa.string()),
        ("utt_id", pa.string()),
        ("condition", pa.string()),
        ("model", pa.string()),
        ("rouge_l_f", pa.float64()),  # null for the reference itself / an empty generation
        ("rouge_l_p", pa.float64()),
        ("rouge_l_r", pa.float64()),
        ("embedding_cosine", pa.float64()),
        ("n_words", pa.int32()),
        ("n_words_reference", pa.int32()),
        ("form", pa.string()),  # question | reflection | other
        ("form_reference", pa.string()),
        ("embedding_model", pa.string()),
    ]
)


# --------------------------------------------------------------------------------------------------
_REFLECTION_STEMS = (
    "it sounds",
    "sounds like",
    "that sounds",
    "it seems",
    "seems like",
    "it must",
    "that must",
    "it feels like",
    "so you",
    "so it",
    "so that",
    "so your",
    "i hear",
    "what i'm hearing",
    "what i hear",
    "i'm hearing",
    "part of you",
    "on one hand",
    "on the one hand",
)
_ABOUT_THE_CLIENT = ("you", "you're", "you've", "your")  # a first word that makes a statement about the client
_NOT_REFLECTION = (
    "you should",
    "you could",
    "you might want",
    "you need to",
    "you can",
    "you may want",
    "you know",
    "you have to",
    "you must",
)
_FILLER = re.compile(
    r"^(?:[\s\"'“(…-]+|(?:and|but|okay|ok|all right|alright|well|yeah|yes|mm-hmm|mm|hmm|uh|um|right|sure)\b[,.\s]*)+"
)
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


def reply_form(text: str | None) -> str | None:
    """``question`` | ``reflection`` | ``other`` by simple surface rules (None for an empty reply).

    1. question: the reply contains a ``?`` (a reflection followed by a question counts as a question);
    2. reflection: some sentence, after leading fillers ("and", "but", "okay", "well", "yeah", "mm-hmm", "um",
       ...), starts with a reflective-listening stem: "it sounds", "sounds like", "it seems", "so you",
       "I hear", "part of you", "on one hand", or "you"/"your" (a statement about the client), except
       advice and asides: "you should/could/can/need to/have to/must/might want/may want", "you know";
    3. other: everything else (information, advice, affirmations, greetings).
    These are surface rules, not MI coding; :func:`emoguide.evaluation.annomi.evaluate_judge` reports their agreement
    with AnnoMI's expert codes (``form_rules``).
    """
    if text is None or not str(text).strip():
        return None
    t = str(text).strip()
    if "?" in t:
        return "question"
    for sent in _SENTENCE.findall(t.replace("’", "'")):
        s = _FILLER.sub("", sent.lower()).lstrip()
        words = re.split(r"[\s,;:]+", s)
        if s.startswith(_NOT_REFLECTION):
            continue
        if s.startswith(_REFLECTION_STEMS) or words[0] in _ABOUT_THE_CLIENT:
            return "reflection"
    return "other"


def n_words(text: str | None) -> int | None:
    """Whitespace-separated words (None for a missing reply)."""
    return None if text is None else len(str(text).split())


def rouge_l(candidate: str, reference: str) -> tuple[float, float, float]:
    """(F, precision, recall) of ROUGE-L (Lin 2004) with rouge-score's tokeniser and Porter stemming."""
    s = _rouge_scorer().score(reference, candidate)["rougeL"]
    return float(s.fmeasure), float(s.precision), float(s.recall)


@cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def embedding_model_path() -> tuple[Path, str]:
    """(folder, name) of all-MiniLM-L6-v2, from the registry's ``embedding`` slot."""
    from models.registry import resolve

    resolved = resolve("embedding")
    return Path(resolved.path), f"{resolved.name} ({resolved.source}, {resolved.version})"


class MiniLMEmbedder:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2.

    BERT (6 layers) → mean of the last hidden states over non-padding tokens → L2 normalisation; inputs are
    truncated at 256 word pieces (the model's ``max_seq_length``). Runs on CPU with plain transformers.
    """

    def __init__(self, path: str | Path | None = None, max_seq_length: int = 256, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            path, self.name = embedding_model_path()
        else:
            self.name = str(path)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.max_seq_length = int(max_seq_length)
        self.batch_size = int(batch_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32, unit-length rows."""
        torch = self._torch
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                [str(t) for t in texts[start : start + self.batch_size]],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 384), np.float32)


def reference_metrics(run_dir: Path, embedder: MiniLMEmbedder | None = None) -> pa.Table:
    """ROUGE-L, embedding cosine, length and form of every generation against its reference.

    One row per intervention plus one ``reference`` row per item (its own length and form; similarity
    columns null). Empty or failed generations get null similarities. Writes
    ``run_dir/reference_metrics.parquet`` (atomic, owner-only) and returns the table.
    """
    run_dir = Path(run_dir)
    rows = intervention_rows(run_dir, None)
    embedder = embedder or MiniLMEmbedder()
    out: list[dict[str, Any]] = []
    pairs: list[tuple[int, str, str]] = []  # (row index, generation, reference) to embed
    seen: set[tuple[Any, Any]] = set()
    for r in rows:
        key = (r["session_id"], r["utt_id"])
        ref = r.get("reference") or ""
        gen = None if r.get("error") else r.get("generation")
        row: dict[str, Any] = {
            "session_id": key[0],
            "utt_id": key[1],
            "condition": r["condition"],
            "model": r.get("model"),
            "n_words": n_words(gen),
            "n_words_reference": n_words(ref),
            "form": reply_form(gen),
            "form_reference": reply_form(ref),
            "embedding_model": embedder.name,
        }
        if gen and str(gen).strip() and ref.strip():
            row["rouge_l_f"], row["rouge_l_p"], row["rouge_l_r"] = rouge_l(str(gen), ref)
            pairs.append((len(out), str(gen), ref))
        out.append(row)
        if key not in seen:
            seen.add(key)
            out.append(
                {
                    "session_id": key[0],
                    "utt_id": key[1],
                    "condition": REFERENCE,
                    "model": REFERENCE,
                    "n_words": n_words(ref),
                    "n_words_reference": n_words(ref),
                    "form": reply_form(ref),
                    "form_reference": reply_form(ref),
                    "embedding_model": embedder.name,
                }
            )
    if pairs:
        gen_vecs = embedder.encode([g for _, g, _ in pairs])
        ref_vecs = embedder.encode([r for _, _, r in pairs])
        for (i, _, _), cos in zip(pairs, (gen_vecs * ref_vecs).sum(axis=1), strict=True):
            out[i]["embedding_cosine"] = float(cos)
    table = to_table(out, REFERENCE_METRICS)
    write_atomic(table, run_dir / "reference_metrics.parquet")
    return table
