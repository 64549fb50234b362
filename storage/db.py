"""The SQLite store: one DB file, WAL mode, foreign keys, busy timeout, migrations.

``Store`` is shared by several threads (web handlers, the pair pool, the trainer).
File DBs get one sqlite3 connection PER THREAD; every write runs in ``BEGIN IMMEDIATE``
so concurrent writers queue on the busy timeout instead of failing or deadlocking. An
in-memory DB (path None, for tests) has one connection guarded by a lock.

The API is small named methods grouped by concern: prompts and pairs here, votes in
storage/votes.py, rounds/adapters/metrics in storage/runs.py.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from storage.errors import BadInput, UnknownPair
from storage.runs import RunsMixin
from storage.schema import migrate
from storage.votes import VotesMixin

BUSY_TIMEOUT_S = 30.0
DB_NAME = "livedpo.db"


def now() -> str:
    """UTC timestamp, ISO-8601 with milliseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def dumps(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def loads(text):
    return None if text is None else json.loads(text)


class Store(VotesMixin, RunsMixin):
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._local = threading.local()
        self._shared: sqlite_utils.Database | None = None
        self._mem_lock = threading.RLock() if self.path is None else None
        migrate(self._db())

    @classmethod
    def open(cls, data_dir: str | Path) -> Store:
        """The store of a data dir (created if missing), with its adapters/ folder."""
        d = Path(data_dir)
        (d / "adapters").mkdir(parents=True, exist_ok=True)
        return cls(d / DB_NAME)

    # --- connections and transactions ---------------------------------------------------
    def _connect(self) -> sqlite_utils.Database:
        conn = sqlite3.connect(":memory:" if self.path is None else str(self.path),
                               timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if self.path is not None:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return sqlite_utils.Database(conn)

    def _db(self) -> sqlite_utils.Database:
        if self.path is None:
            if self._shared is None:
                self._shared = self._connect()
            return self._shared
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction (BEGIN IMMEDIATE); nested calls join the outer one."""
        with self._mem_lock or nullcontext():
            db = self._db()
            if db.conn.in_transaction:
                yield db
                return
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.conn.execute("ROLLBACK")
                raise
            db.conn.execute("COMMIT")

    def query(self, sql: str, params: Iterable | dict = ()) -> list[dict]:
        with self._mem_lock or nullcontext():
            return list(self._db().query(sql, params))

    def one(self, sql: str, params: Iterable | dict = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def integrity_check(self) -> str:
        return self.one("pragma integrity_check")["integrity_check"]

    # --- prompts ---------------------------------------------------------------------------
    @staticmethod
    def _clean_prompt(text, max_chars: int, where: str = "prompt") -> str:
        if not isinstance(text, str):
            raise BadInput(f"{where}: expected text, got {type(text).__name__}")
        t = text.strip()
        if not t:
            raise BadInput(f"{where} is empty: write a question or instruction")
        if len(t) > max_chars:
            raise BadInput(f"{where} has {len(t)} characters; the limit is {max_chars} "
                           "(shorten it or raise --max-prompt-chars)")
        return t

    def add_prompts(self, texts: Iterable[str], source: str = "import",
                    max_chars: int = 4000) -> int:
        """Add prompts (all or nothing); duplicates are skipped. Returns how many are new."""
        clean = [self._clean_prompt(t, max_chars, f"prompt #{i + 1}")
                 for i, t in enumerate(texts)]
        with self.write() as db:
            before = db.execute("select count(*) from prompts").fetchone()[0]
            db.conn.executemany(
                "insert or ignore into prompts (text, source, created, served_count) "
                "values (?, ?, ?, 0)", [(t, source, now()) for t in clean])
            return db.execute("select count(*) from prompts").fetchone()[0] - before

    def add_prompt(self, text: str, source: str = "user", max_chars: int = 4000) -> int:
        """The id of this prompt, adding it if new."""
        t = self._clean_prompt(text, max_chars)
        with self.write() as db:
            db.execute("insert or ignore into prompts (text, source, created, served_count) "
                       "values (?, ?, ?, 0)", [t, source, now()])
            return db.execute("select id from prompts where text = ?", [t]).fetchone()[0]

    def get_prompt(self, prompt_id: int) -> dict:
        row = self.one("select * from prompts where id = ?", [prompt_id])
        if row is None:
            raise BadInput(f"no prompt with id {prompt_id}")
        return row

    def least_served_prompts(self, k: int, exclude_ids: Collection[int] = (),
                             rng: random.Random | None = None) -> list[dict]:
        """Up to k prompts, least served first (random among equals); no user one-offs."""
        rows = self.query("select id, text, served_count from prompts where source != 'user' "
                          "order by id")
        rows = [r for r in rows if r["id"] not in set(exclude_ids)]
        (rng or random).shuffle(rows)
        rows.sort(key=lambda r: r["served_count"])
        return [{"id": r["id"], "text": r["text"]} for r in rows[:k]]

    # --- pairs -------------------------------------------------------------------------------
    def record_pair(self, prompt_id: int, response_a: str, response_b: str, version_a: str,
                    version_b: str, gen_config: dict, seed: int, arena: bool = False,
                    status: str = "queued") -> int:
        with self.write() as db:
            cur = db.execute(
                "insert into pairs (prompt_id, response_a, response_b, version_a, version_b, "
                "arena, gen_config, seed, created, status) values (?,?,?,?,?,?,?,?,?,?)",
                [prompt_id, response_a, response_b, version_a, version_b, int(arena),
                 dumps(gen_config), seed, now(), status])
            db.execute("update prompts set served_count = served_count + 1 where id = ?",
                       [prompt_id])
            return cur.lastrowid

    @staticmethod
    def _pair_row(row: dict) -> dict:
        row["gen_config"] = loads(row.get("gen_config")) or {}
        row["arena"] = bool(row["arena"])
        return row

    def get_pair(self, pair_id: int) -> dict:
        row = self.one("select pairs.*, prompts.text as prompt from pairs join prompts "
                       "on prompts.id = pairs.prompt_id where pairs.id = ?", [pair_id])
        if row is None:
            raise UnknownPair(f"no pair with id {pair_id!r}: it may have been deleted, or the "
                              "id is wrong; ask next_pair for a new one")
        return self._pair_row(row)

    def _available_sql(self, versions: Collection[str] | None) -> tuple[str, list]:
        sql = "pairs.status != 'expired'"  # with overlap, voted pairs go to others too
        params: list = []
        if versions is not None:
            marks = ",".join("?" * len(versions)) or "''"
            sql += f" and pairs.version_a in ({marks}) and pairs.version_b in ({marks})"
            params = [*versions, *versions]
        return sql, params

    def take_pair(self, annotator: str, overlap: int = 1,
                  versions: Collection[str] | None = None) -> dict | None:
        """Atomically hand the oldest available pair to ``annotator`` (None if none)."""
        if not annotator:
            raise BadInput("annotator name is empty")
        where, params = self._available_sql(versions)
        with self.write() as db:
            row = db.execute(
                f"select pairs.id from pairs where {where} and pairs.id not in "
                "(select pair_id from pair_assignments where annotator = ?) and "
                "(select count(*) from pair_assignments a where a.pair_id = pairs.id) < ? "
                "order by pairs.id limit 1", [*params, annotator, overlap]).fetchone()
            if row is None:
                return None
            self._assign(db, row[0], annotator, overlap)
        return self.get_pair(row[0])

    def _assign(self, db, pair_id: int, annotator: str, overlap: int) -> None:
        db.execute("insert or ignore into pair_assignments (pair_id, annotator, assigned_at) "
                   "values (?, ?, ?)", [pair_id, annotator, now()])
        n = db.execute("select count(*) from pair_assignments where pair_id = ?",
                       [pair_id]).fetchone()[0]
        if n >= overlap:
            db.execute("update pairs set status = 'served', served_at = ? where id = ? and "
                       "status = 'queued'", [now(), pair_id])

    def assign_pair(self, pair_id: int, annotator: str) -> None:
        """Give a specific pair (e.g. for the annotator's own prompt) to ``annotator``."""
        self.get_pair(pair_id)
        with self.write() as db:
            self._assign(db, pair_id, annotator, 1)

    def release_stale_assignments(self, max_age_s: float) -> int:
        """Assignments older than max_age_s without a vote go back to the queue."""
        cutoff = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - max_age_s,
                                        timezone.utc).isoformat(timespec="milliseconds")
        with self.write() as db:
            stale = db.execute(
                "select a.pair_id, a.annotator from pair_assignments a where a.assigned_at < ? "
                "and not exists (select 1 from votes v where v.pair_id = a.pair_id and "
                "v.annotator = a.annotator)", [cutoff]).fetchall()
            for pair_id, annotator in stale:
                db.execute("delete from pair_assignments where pair_id = ? and annotator = ?",
                           [pair_id, annotator])
                db.execute("update pairs set status = 'queued' where id = ? and status = "
                           "'served'", [pair_id])
            return len(stale)

    def ready_pair_count(self, versions: Collection[str] | None = None) -> int:
        """Pairs still to hand out: queued and not yet assigned to anyone."""
        where, params = self._available_sql(versions)
        return self.one(f"select count(*) as n from pairs where {where} and status = 'queued' "
                        "and not exists (select 1 from pair_assignments a where "
                        "a.pair_id = pairs.id)", params)["n"]

    def retire_pairs(self, keep_versions: Collection[str]) -> int:
        """Expire queued, unassigned pairs with NO side in keep_versions (stale policy)."""
        marks = ",".join("?" * len(keep_versions)) or "''"
        with self.write() as db:
            return db.execute(
                f"update pairs set status = 'expired' where status = 'queued' and "
                f"version_a not in ({marks}) and version_b not in ({marks}) and not exists "
                "(select 1 from pair_assignments a where a.pair_id = pairs.id)",
                [*keep_versions, *keep_versions]).rowcount

    def counts(self) -> dict:
        c = self.one(
            "select (select count(*) from prompts) as prompts, (select count(*) from pairs) "
            "as pairs, (select count(*) from votes) as votes, (select count(distinct "
            "annotator) from votes) as annotators, (select count(*) from adapters) as "
            "adapters, (select count(*) from rounds) as rounds, (select count(*) from labels) "
            "as labels")
        c["pairs_ready"] = self.ready_pair_count()
        return c
