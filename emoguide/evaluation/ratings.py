"""Expert ratings: a blinded rating sheet out, validated ratings in (pure: no models, no Ray).

:func:`export_rating_sheet` writes two CSV files, both owner-only and atomic:

* the sheet (given path): ``item, context, response, empathy, comprehensiveness, applicability, comment``,
  one row per reply to rate. Items are blinded: ids are random (``I`` + 8 hex digits, from the seed), the
  condition, model, session and utterance ids are not in the sheet, rows are shuffled across conditions and
  items, and the therapist's actual reply (``reference``) is mixed in as just another response. The context
  is the dialogue block of the prompt without the emotion cues (the cues would reveal the condition).
  Cells that a spreadsheet would run as a formula (starting with ``= + - @``, tab or CR) get a leading
  apostrophe.
* the key (``<sheet stem>.key.csv`` next to it): ``item, session_id, utt_id, condition, model``; keep it away
  from the raters.

Empty or failed generations are not put on the sheet.

:func:`import_ratings` reads ratings in long form (``rater, item, criterion, score``, one row per rating) or
a filled sheet (wide: ``item`` + one column per criterion, blank = not rated; the rater's name is given as
``rater=``), and validates every row: non-empty rater and item, known criterion, score exactly an integer
1-5, the item known to the key when one is given, no rating given twice. All problems are collected and
raised together as :class:`RatingsError`, each naming the data row and its line in the file.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emoguide.dataio.tables import open_atomic
from emoguide.evaluation.judge import CRITERIA, REFERENCE, transcript_context

SHEET_COLUMNS = ("item", "context", "response", *CRITERIA, "comment")
KEY_COLUMNS = ("item", "session_id", "utt_id", "condition", "model")
RATINGS = pa.schema(
    [
        ("rater", pa.string()),
        ("item", pa.string()),
        ("criterion", pa.string()),
        ("score", pa.int8()),
        ("source_row", pa.int32()),  # 1-based data row in the imported file
    ]
)
_MAX_LISTED = 25


class RatingsError(ValueError):
    """Invalid ratings file; ``errors`` lists every problem found ("row N (line L): ...")."""

    def __init__(self, path: str, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        shown = "\n  ".join(self.errors[:_MAX_LISTED])
        more = f"\n  ... and {len(self.errors) - _MAX_LISTED} more" if len(self.errors) > _MAX_LISTED else ""
        super().__init__(f"{path}: {len(self.errors)} problem(s) in the ratings:\n  {shown}{more}")


def _safe_cell(text: Any) -> str:
    s = "" if text is None else str(text)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def _write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Atomic, owner-only CSV (ratings and their key reveal the study design and health data)."""
    with open_atomic(path, "w") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def key_path_for(sheet_csv: str | Path) -> Path:
    """Where :func:`export_rating_sheet` puts the key of a sheet."""
    p = Path(sheet_csv)
    return p.with_name(f"{p.stem}.key.csv")


def rating_entries(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The replies experts rate, from ``interventions.parquet`` rows, in row order: every non-empty generation
    and, once per client turn, the therapist's actual reply (condition and model ``reference``).

    Each entry carries its key fields (session_id, utt_id, condition, model), the dialogue ``context`` without
    the emotion cues (they would reveal the condition) and the ``response``. The rating sheet and the review
    studio both rate exactly these, so their items mean the same thing.
    """
    entries: list[dict[str, Any]] = []
    seen: set[tuple[Any, Any]] = set()
    for r in rows:
        sid, uid = r["session_id"], r["utt_id"]
        ctx = transcript_context(r["prompt"])
        gen = None if r.get("error") else r.get("generation")
        if gen is not None and str(gen).strip():
            entries.append(
                {
                    "session_id": sid,
                    "utt_id": uid,
                    "condition": r["condition"],
                    "model": r.get("model"),
                    "context": ctx,
                    "response": str(gen).strip(),
                }
            )
        if (sid, uid) not in seen and str(r.get("reference") or "").strip():
            seen.add((sid, uid))
            entries.append(
                {
                    "session_id": sid,
                    "utt_id": uid,
                    "condition": REFERENCE,
                    "model": REFERENCE,
                    "context": ctx,
                    "response": str(r["reference"]).strip(),
                }
            )
    return entries


def blinded_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct random item ids (``I`` + 8 hex digits) that say nothing about what they name."""
    ids: list[str] = []
    used: set[str] = set()
    while len(ids) < n:
        cand = f"I{int(rng.integers(0, 2**32)):08x}"
        if cand not in used:
            used.add(cand)
            ids.append(cand)
    return ids


def write_key(key_csv: str | Path, key_rows: Iterable[Sequence[Any]]) -> Path:
    """The key (``item, session_id, utt_id, condition, model``), sorted by item; keep it away from raters."""
    return _write_csv_atomic(Path(key_csv), KEY_COLUMNS, sorted(key_rows, key=lambda k: k[0]))


def export_rating_sheet(run_dir: str | Path, out_csv: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the blinded sheet to ``out_csv`` and its key next to it; returns (sheet_csv, key_csv)."""
    run_dir, out_csv = Path(run_dir), Path(out_csv)
    path = run_dir / "interventions.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no interventions in this run folder")
    entries = rating_entries(pq.read_table(path).to_pylist())
    rng = np.random.default_rng(seed)
    ids = blinded_ids(rng, len(entries))
    order = rng.permutation(len(entries))
    sheet = [
        [ids[i], _safe_cell(entries[i]["context"]), _safe_cell(entries[i]["response"]), *[""] * len(CRITERIA), ""]
        for i in order
    ]
    key_csv = key_path_for(out_csv)
    _write_csv_atomic(out_csv, SHEET_COLUMNS, sheet)
    write_key(key_csv, ([ids[i], *(entries[i][c] for c in KEY_COLUMNS[1:])] for i in range(len(entries))))
    return out_csv, key_csv


def read_key(key_csv: str | Path) -> list[dict[str, str]]:
    """The key rows (item, session_id, utt_id, condition, model) as written by :func:`export_rating_sheet`."""
    with open(key_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and set(KEY_COLUMNS) - set(rows[0]):
        raise ValueError(f"{key_csv}: not a rating-sheet key (needs columns {', '.join(KEY_COLUMNS)})")
    return rows


_SCORE = re.compile(r"\s*([1-5])\s*")


def _known_items(items: Any) -> set[str] | None:
    if items is None:
        return None
    if isinstance(items, (str, Path)):
        with open(items, newline="", encoding="utf-8") as fh:
            return {str(r["item"]).strip() for r in csv.DictReader(fh)}
    out = set()
    for it in items:
        out.add(str(it["item"] if isinstance(it, dict) else it).strip())
    return out


def import_ratings(
    csv_path: str | Path, items: Any = None, rater: str | None = None, criteria: Sequence[str] = CRITERIA
) -> pa.Table:
    """Validated ratings as a table (rater, item, criterion, score int8 1-5, source_row).

    ``items``: the known item ids — a key or sheet CSV path, key rows, or ids; None skips that check.
    ``rater``: required for a filled sheet (wide form); not allowed with the long form, which names the rater
    on every row. Raises :class:`RatingsError` listing every problem with its row.
    """
    path = str(csv_path)
    known = _known_items(items)
    errors: list[str] = []
    out: list[dict[str, Any]] = []
    first_row: dict[tuple[str, str, str], int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = cols
        long_form = {"rater", "item", "criterion", "score"} <= set(cols)
        wide_form = "item" in cols and any(c in cols for c in criteria)
        if not long_form and not wide_form:
            found = ", ".join(cols) or "none"
            need = f"rater, item, criterion, score (or a filled sheet: item, {', '.join(criteria)})"
            raise RatingsError(path, [f"header: need columns {need}; found {found}"])
        if long_form and rater is not None:
            raise ValueError(f"{path}: rater= is only for a filled sheet; this file names the rater on each row")
        if not long_form and not (rater and rater.strip()):
            raise ValueError(f"{path}: a filled rating sheet needs rater= (the name of who filled it)")
        for n, row in enumerate(reader, start=1):
            where = f"row {n} (line {reader.line_num})"
            if None in row:  # more cells than header columns
                errors.append(f"{where}: {len(row[None])} cell(s) more than the header has columns")
            item = str(row.get("item") or "").strip()
            if long_form:
                cells = [
                    (str(row.get("rater") or "").strip(), str(row.get("criterion") or "").strip(), row.get("score"))
                ]
            else:
                cells = [
                    ((rater or "").strip(), c, row.get(c))
                    for c in criteria
                    if c in row and str(row.get(c) or "").strip()
                ]
            if not item:
                errors.append(f"{where}: empty item")
            elif known is not None and item not in known:
                errors.append(f"{where}: unknown item {item!r} (not in the rating sheet's key)")
            for who, crit, score in cells:
                if not who:
                    errors.append(f"{where}: empty rater")
                if crit not in criteria:
                    errors.append(f"{where}: unknown criterion {crit!r} (expected one of {', '.join(criteria)})")
                m = _SCORE.fullmatch(str(score if score is not None else ""))
                if m is None:
                    errors.append(f"{where}: score {score!r} for {crit or '?'} is not an integer 1-5")
                if who and item and crit in criteria and m is not None:
                    k = (who, item, crit)
                    if k in first_row:
                        errors.append(f"{where}: {who} rated {item} on {crit} again (first at row {first_row[k]})")
                        continue
                    first_row[k] = n
                    out.append(
                        {"rater": who, "item": item, "criterion": crit, "score": int(m.group(1)), "source_row": n}
                    )
    if errors:
        raise RatingsError(path, errors)
    return pa.Table.from_pylist(out, schema=RATINGS)
