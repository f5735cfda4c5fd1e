"""The review studio's state: raters, blinded items, ratings and sign-ins in ``RUN_DIR/ratings.sqlite``.

SQLite in WAL mode with ``synchronous=FULL``: every answer is committed the moment it is posted, so
killing the server loses nothing and a rater resumes at their first unrated item. The file is
owner-only (ratings reveal the study design, items hold therapy dialogue).

Items are the replies :func:`emoguide.evaluation.ratings.rating_entries` picks (every generation plus the
therapist's actual reply, the ``reference``), made once from ``interventions.parquet`` when the store
is created, with random ids from a recorded seed. Every rater rates the same items (so agreement can
be computed) in their own order: a permutation from the rater's own recorded seed.

Secrets: a rater's token and a sign-in's cookie are stored only as SHA-256 hashes (both are 192+
random bits, so a plain hash cannot be reversed by guessing); the CSRF key never leaves the file.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emoguide.dataio.tables import write_atomic
from emoguide.evaluation.judge import CRITERIA
from emoguide.evaluation.ratings import KEY_COLUMNS, RATINGS, blinded_ids, rating_entries, write_key

DB_NAME = "ratings.sqlite"
SCHEMA_VERSION = "1"
LOGIN_TTL_S = 7 * 24 * 3600  # a sign-in lasts a week; the token signs in again
MAX_COMMENT_CHARS = 4000
MAX_NAME_CHARS = 64
SCORE_RANGE = range(1, 6)
COMMENTS = pa.schema([("rater", pa.string()), ("item", pa.string()), ("comment", pa.string())])

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item TEXT PRIMARY KEY, session_id TEXT NOT NULL, utt_id TEXT NOT NULL, condition TEXT NOT NULL,
    model TEXT, context TEXT NOT NULL, response TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    name TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, seed INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL REFERENCES raters(name), item TEXT NOT NULL REFERENCES items(item),
    {", ".join(f"{c} INTEGER NOT NULL CHECK ({c} BETWEEN 1 AND 5)" for c in CRITERIA)},
    comment TEXT NOT NULL DEFAULT '', revision INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (rater, item));
CREATE TABLE IF NOT EXISTS logins (
    login_hash TEXT PRIMARY KEY, rater TEXT NOT NULL REFERENCES raters(name), created_at REAL NOT NULL);
"""


class StudioError(ValueError):
    """A request or command the store refuses; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    """One rater's validated answer to one item."""

    scores: dict[str, int]
    comment: str


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_answer(form: Mapping[str, Any]) -> Answer:
    """Scores (each exactly an integer 1-5) and an optional comment from a posted form, or StudioError."""
    scores, problems = {}, []
    for c in CRITERIA:
        raw = str(form.get(c) or "").strip()
        if not raw.isdigit() or int(raw) not in SCORE_RANGE:
            problems.append(f"{c} must be an integer 1-5 (got {raw or 'nothing'!r})")
        else:
            scores[c] = int(raw)
    comment = str(form.get("comment") or "").strip()
    if len(comment) > MAX_COMMENT_CHARS:
        problems.append(f"comment is longer than {MAX_COMMENT_CHARS} characters")
    if problems:
        raise StudioError("; ".join(problems), 422)
    return Answer(scores, comment)


class Store:
    """One run folder's ratings database (a connection per call: safe across server threads)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        fresh = not self.path.exists()
        if fresh:  # owner-only from the first byte
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        setup = sqlite3.connect(self.path, timeout=10)
        try:
            setup.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection uses the WAL
            setup.executescript(_SCHEMA)
        finally:
            setup.close()
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('csrf_key', ?)", (secrets.token_hex(32),))
            if db.execute("SELECT value FROM meta WHERE key='item_seed'").fetchone() is None:
                self._make_items(db)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _make_items(self, db: sqlite3.Connection) -> None:
        """The blinded items, once per store: the same ids for every rater, whatever runs later. Without
        interventions.parquet yet, nothing is recorded and the items are made when it exists."""
        path = self.run_dir / "interventions.parquet"
        if not path.exists():
            return
        entries = rating_entries(pq.read_table(path).to_pylist())
        seed = secrets.randbits(63)
        ids = blinded_ids(np.random.default_rng(seed), len(entries))
        db.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (i, e["session_id"], e["utt_id"], e["condition"], e["model"], e["context"], e["response"])
                for i, e in zip(ids, entries, strict=True)
            ],
        )
        db.execute("INSERT INTO meta VALUES ('item_seed', ?)", (str(seed),))

    def meta(self, key: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------------------------------------
    # raters and sign-ins

    def add_rater(self, name: str, reissue: bool = False) -> str:
        """Register ``name`` (or give it a new token with ``reissue``); returns the token, never stored."""
        name = name.strip()
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise StudioError(f"rater name must be 1-{MAX_NAME_CHARS} printable characters")
        token = secrets.token_urlsafe(24)
        with self._db() as db:
            exists = db.execute("SELECT 1 FROM raters WHERE name=?", (name,)).fetchone()
            if exists and not reissue:
                raise StudioError(f"rater {name!r} already exists in {self.path} (--reissue gives a new token)", 409)
            if exists:
                db.execute("UPDATE raters SET token_hash=? WHERE name=?", (sha256(token), name))
                db.execute("DELETE FROM logins WHERE rater=?", (name,))
            else:
                db.execute(
                    "INSERT INTO raters VALUES (?, ?, ?, ?)", (name, sha256(token), secrets.randbits(63), time.time())
                )
        return token

    def raters(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT name, seed FROM raters ORDER BY created_at").fetchall()
        return [{"name": n, "seed": s} for n, s in rows]

    def sign_in(self, token: str) -> tuple[str, str]:
        """(rater, login secret for the cookie) for a valid token, else StudioError 401."""
        with self._db() as db:
            row = db.execute("SELECT name FROM raters WHERE token_hash=?", (sha256(token.strip()),)).fetchone()
            if row is None:
                raise StudioError("unknown token", 401)
            login = secrets.token_urlsafe(32)
            db.execute("INSERT INTO logins VALUES (?, ?, ?)", (sha256(login), row[0], time.time()))
        return row[0], login

    def rater_for_login(self, login: str | None) -> str | None:
        if not login:
            return None
        with self._db() as db:
            row = db.execute("SELECT rater, created_at FROM logins WHERE login_hash=?", (sha256(login),)).fetchone()
        return row[0] if row and time.time() - row[1] < LOGIN_TTL_S else None

    def sign_out(self, login: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM logins WHERE login_hash=?", (sha256(login),))

    # ------------------------------------------------------------------------------------------------
    # items and ratings

    def order(self, rater: str) -> list[str]:
        """The rater's items in their own shuffled order (a permutation from the rater's recorded seed)."""
        with self._db() as db:
            row = db.execute("SELECT seed FROM raters WHERE name=?", (rater,)).fetchone()
            items = [r[0] for r in db.execute("SELECT item FROM items ORDER BY item")]
        if row is None:
            raise StudioError(f"unknown rater {rater!r}", 401)
        return [items[i] for i in np.random.default_rng(row[0]).permutation(len(items))]

    def item(self, item: str) -> dict[str, Any]:
        """The blinded view of an item: context and response only (no condition, model or session)."""
        with self._db() as db:
            row = db.execute("SELECT context, response FROM items WHERE item=?", (item,)).fetchone()
        if row is None:
            raise StudioError(f"unknown item {item!r}", 404)
        return {"item": item, "context": row[0], "response": row[1]}

    def answer(self, rater: str, item: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute(
                f"SELECT {', '.join(CRITERIA)}, comment, revision FROM ratings WHERE rater=? AND item=?", (rater, item)
            ).fetchone()
        if row is None:
            return None
        return {**dict(zip(CRITERIA, row[:-2], strict=True)), "comment": row[-2], "revision": row[-1]}

    def rated(self, rater: str) -> set[str]:
        with self._db() as db:
            return {r[0] for r in db.execute("SELECT item FROM ratings WHERE rater=?", (rater,))}

    def save(self, rater: str, item: str, answer: Answer, revision: int) -> int:
        """Store an answer given on top of ``revision`` (0: none yet); returns the new revision.

        A form posted twice, or over an answer saved meanwhile, carries a stale revision: refused (409)
        and nothing changes. An unknown item is 404.
        """
        with self._db() as db:
            if db.execute("SELECT 1 FROM items WHERE item=?", (item,)).fetchone() is None:
                raise StudioError(f"unknown item {item!r}", 404)
            row = db.execute("SELECT revision FROM ratings WHERE rater=? AND item=?", (rater, item)).fetchone()
            current = row[0] if row else 0
            if revision != current:
                raise StudioError(
                    f"item {item} was already saved (revision {current}); reload it to change the answer", 409
                )
            values = [answer.scores[c] for c in CRITERIA]
            db.execute(
                f"INSERT INTO ratings (rater, item, {', '.join(CRITERIA)}, comment, revision, updated_at) "
                f"VALUES (?, ?, {', '.join('?' * len(CRITERIA))}, ?, ?, ?) ON CONFLICT (rater, item) DO UPDATE SET "
                + ", ".join(f"{c}=excluded.{c}" for c in (*CRITERIA, "comment", "revision", "updated_at")),
                (rater, item, *values, answer.comment, current + 1, time.time()),
            )
        return current + 1

    def progress(self) -> dict[str, dict[str, int]]:
        """Per session: items, and ratings given (over all raters)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT i.session_id, COUNT(DISTINCT i.item), COUNT(r.item) FROM items i "
                "LEFT JOIN ratings r ON r.item = i.item GROUP BY i.session_id"
            ).fetchall()
        return {sid: {"items": n, "ratings": k} for sid, n, k in rows}

    # ------------------------------------------------------------------------------------------------
    # export

    def export(self) -> dict[str, Path]:
        """``expert_ratings.parquet`` (the schema ``eval import-ratings`` writes: one row per rater × item ×
        criterion, ``source_row`` numbering the rows), its key ``expert_ratings.key.csv`` (for
        ``eval agreement --key``) and the raters' comments ``expert_comments.parquet``."""
        with self._db() as db:
            answers = db.execute(
                f"SELECT rater, item, {', '.join(CRITERIA)}, comment FROM ratings ORDER BY rater, item"
            ).fetchall()
            keys = db.execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM items").fetchall()
        rows = [
            {"rater": a[0], "item": a[1], "criterion": c, "score": a[2 + k]}
            for a in answers
            for k, c in enumerate(CRITERIA)
        ]
        for n, row in enumerate(rows, start=1):
            row["source_row"] = n
        comments = pa.Table.from_pylist(
            [{"rater": a[0], "item": a[1], "comment": a[-1]} for a in answers if a[-1]], schema=COMMENTS
        )
        return {
            "ratings": write_atomic(
                pa.Table.from_pylist(rows, schema=RATINGS), self.run_dir / "expert_ratings.parquet"
            ),
            "key": write_key(self.run_dir / "expert_ratings.key.csv", keys),
            "comments": write_atomic(comments, self.run_dir / "expert_comments.parquet"),
        }
