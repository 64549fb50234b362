"""The SQLite store: one DB file, WAL mode, foreign keys, busy timeout, migrations.

``Store`` is shared by several threads (web handlers, the pair pool, the trainer).
File DBs get one sqlite3 connection PER THREAD (``threading.local``); every write runs
in ``BEGIN IMMEDIATE`` so concurrent writers queue on the 30 s busy timeout instead of
failing or deadlocking on a read-to-write lock upgrade. Reads run in autocommit mode and
see the latest committed data (WAL lets them run beside a writer). An in-memory DB (path
None, for tests) has one shared connection guarded by a lock.

The API is small named methods grouped by concern: connections, prompts and pairs here;
votes and their training-data mapping in storage/votes.py; rank-of-N sets and their
votes in storage/ranks.py; rounds, adapters, state and
cached reference log-probs in storage/runs.py. Timestamps: see storage/common.py.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

import sqlite_utils

from storage.common import (
    MAX_PROMPT_CHARS,
    OVERLAP_BUCKETS,
    OVERLAP_PICK_SQL,
    PAIR_STATUSES,
    dumps,
    ids_json,
    loads,
    now,
    require_one_of,
)
from storage.errors import BadInput, StoreError, UnknownPair
from storage.ranking import parse_answers
from storage.ranks import RanksMixin
from storage.runs import RunsMixin
from storage.schema import migrate
from storage.votes import VotesMixin

__all__ = ["Store", "DB_NAME", "DEFAULT_PATH", "BUSY_TIMEOUT_S", "now", "dumps", "loads"]

BUSY_TIMEOUT_S = 30.0
KINDS = ("pair", "rank")  # what take_pair hands out: A/B pairs or rank-of-N sets
DB_NAME = "livedpo.db"
DEFAULT_PATH = Path("data") / DB_NAME


class Store(VotesMixin, RanksMixin, RunsMixin):
    """All LiveDPO data in one SQLite DB. ``Store(None)`` is an in-memory DB (tests)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._local = threading.local()
        self._shared: sqlite_utils.Database | None = None
        self._mem_lock = threading.RLock() if self.path is None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            migrate(self._db(), where=str(self.path or "the in-memory DB"))
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open {self.path} as a LiveDPO database ({e}): point "
                             "--data-dir at a new folder, or restore the file") from None

    @classmethod
    def open(cls, data_dir: str | Path) -> Store:
        """The store of a data dir (created if missing), with its adapters/ folder."""
        d = Path(data_dir)
        (d / "adapters").mkdir(parents=True, exist_ok=True)
        return cls(d / DB_NAME)

    # --- connections and transactions ---------------------------------------------------
    def _connect(self) -> sqlite_utils.Database:
        """A new connection with foreign keys, busy timeout and (for files) WAL."""
        conn = sqlite3.connect(":memory:" if self.path is None else str(self.path),
                               timeout=BUSY_TIMEOUT_S, check_same_thread=self.path is not None)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if self.path is not None:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return sqlite_utils.Database(conn)

    def _db(self) -> sqlite_utils.Database:
        """This thread's connection (the shared one for an in-memory DB)."""
        if self.path is None:
            if self._shared is None:
                self._shared = self._connect()
            return self._shared
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def close(self) -> None:
        """Close this thread's connection (and the in-memory one). Other threads' file
        connections close when their thread ends; a later call reopens transparently."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction (BEGIN IMMEDIATE); nested calls join the outer one, so
        composite operations commit or roll back as a whole."""
        with self._mem_lock or nullcontext():
            db = self._db()
            depth = getattr(self._local, "depth", 0)
            if depth:
                yield db
                return
            db.conn.execute("BEGIN IMMEDIATE")
            self._local.depth = 1
            try:
                yield db
                db.conn.execute("COMMIT")
            except BaseException:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
                raise
            finally:
                self._local.depth = 0

    def query(self, sql: str, params: Iterable | dict = ()) -> list[dict]:
        """Rows of a read-only SQL query, as dicts."""
        with self._mem_lock or nullcontext():
            return list(self._db().query(sql, params))

    def one(self, sql: str, params: Iterable | dict = ()) -> dict | None:
        """The first row of a query, or None."""
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def integrity_check(self) -> str:
        """SQLite's integrity check: 'ok' when the file is sound."""
        return self.one("pragma integrity_check")["integrity_check"]

    # --- prompts ---------------------------------------------------------------------------
    @staticmethod
    def _clean_prompt(text: object, max_chars: int, where: str = "prompt") -> str:
        """The stripped prompt, or BadInput naming it and the limit."""
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
                    max_chars: int = MAX_PROMPT_CHARS) -> int:
        """Add prompts (all or nothing; stripped); duplicates are skipped. Returns how many
        are new. An empty or over-long prompt raises BadInput naming its position."""
        clean = [self._clean_prompt(t, max_chars, f"prompt #{i + 1}")
                 for i, t in enumerate(texts)]
        with self.write() as db:
            before = db.execute("select count(*) from prompts").fetchone()[0]
            t = now()
            db.conn.executemany(
                "insert or ignore into prompts (text, source, created, served_count) "
                "values (?, ?, ?, 0)", [(text, source, t) for text in clean])
            return db.execute("select count(*) from prompts").fetchone()[0] - before

    def add_prompt(self, text: str, source: str = "user", max_chars: int = MAX_PROMPT_CHARS) -> int:
        """The id of this prompt (stripped), adding it if new."""
        t = self._clean_prompt(text, max_chars)
        with self.write() as db:
            db.execute("insert or ignore into prompts (text, source, created, served_count) "
                       "values (?, ?, ?, 0)", [t, source, now()])
            return db.execute("select id from prompts where text = ?", [t]).fetchone()[0]

    def get_prompt(self, prompt_id: int) -> dict:
        """One prompt row; BadInput if the id is unknown."""
        row = self.one("select * from prompts where id = ?", [prompt_id])
        if row is None:
            raise BadInput(f"no prompt with id {prompt_id!r}: add it with add_prompt first")
        return row

    def least_served_prompts(self, k: int, exclude_ids: Collection[int] = (),
                             rng: random.Random | None = None) -> list[dict]:
        """Up to k prompts ({id, text}), least served first, random among equals (``rng``
        makes it reproducible). User-typed prompts (source 'user') are one-offs: never."""
        excluded = set(exclude_ids)
        rows = [r for r in self.query("select id, text, served_count from prompts where "
                                      "source != 'user' order by id")
                if r["id"] not in excluded]
        (rng or random).shuffle(rows)
        rows.sort(key=lambda r: r["served_count"])  # stable: the shuffle breaks ties
        return [{"id": r["id"], "text": r["text"]} for r in rows[:max(k, 0)]]

    # --- pairs -------------------------------------------------------------------------------
    def record_pair(self, prompt_id: int, response_a: str, response_b: str, version_a: str,
                    version_b: str, gen_config: dict, seed: int, arena: bool = False,
                    status: str = "queued", end_a: str | None = None,
                    end_b: str | None = None, prompt_ids: Sequence[int] | None = None,
                    ids_a: Sequence[int] | None = None,
                    ids_b: Sequence[int] | None = None, answers: str | None = None) -> int:
        """Store a freshly sampled pair and count the prompt as served; returns its id.

        ``end_a``/``end_b``: what generation ended that answer with, '' if it was cut at
        the token limit, None if unknown (see ``frame_response``). ``prompt_ids``,
        ``ids_a``, ``ids_b``: the tokens the model saw and sampled (None if unknown).
        ``answers``: a rank set's checked answers as JSON (``record_rank_set``)."""
        require_one_of(status, PAIR_STATUSES, "pair status")
        if not version_a or not version_b:
            raise BadInput(f"pair versions {version_a!r}/{version_b!r}: both sides need an "
                           "adapter version label ('base', 'v1', ...)")
        config = dumps(gen_config, "gen_config")
        with self.write() as db:
            if not db.execute("select 1 from prompts where id = ?", [prompt_id]).fetchone():
                raise BadInput(f"no prompt with id {prompt_id!r}: add it with add_prompt first")
            cur = db.execute(
                "insert into pairs (prompt_id, response_a, response_b, version_a, version_b, "
                "arena, gen_config, seed, created, status, end_a, end_b, prompt_ids, ids_a, "
                "ids_b, answers) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [prompt_id, response_a, response_b, version_a, version_b, int(arena),
                 config, seed, now(), status, end_a, end_b, ids_json(prompt_ids, "prompt_ids"),
                 ids_json(ids_a, "ids_a"), ids_json(ids_b, "ids_b"), answers])
            db.execute("update prompts set served_count = served_count + 1 where id = ?",
                       [prompt_id])
            return cur.lastrowid

    @staticmethod
    def _pair_row(row: dict) -> dict:
        row["gen_config"] = loads(row.get("gen_config")) or {}
        row["arena"] = bool(row["arena"])
        if "answers" in row:
            row["answers"] = parse_answers(row["answers"])
        return row

    def get_pair(self, pair_id: int) -> dict:
        """Every column of the pair plus its 'prompt' text; UnknownPair if missing."""
        row = self.one("select pairs.*, prompts.text as prompt from pairs join prompts "
                       "on prompts.id = pairs.prompt_id where pairs.id = ?", [pair_id])
        if row is None:
            raise UnknownPair(f"no pair with id {pair_id!r}: it may have been deleted, or the "
                              "id is wrong; ask next_pair for a new one")
        return self._pair_row(row)

    @staticmethod
    def _available_sql(versions: Collection[str] | None, kind: str | None = None
                       ) -> tuple[str, list]:
        """WHERE clause of pairs that may still be handed out (live, not expired); ``kind``
        'pair' or 'rank' keeps A/B pairs or rank sets only."""
        # voted pairs stay available: with overlap > 1 they go to further annotators
        sql = "pairs.status != 'expired' and pairs.origin = 'live'"
        if kind is not None:
            require_one_of(kind, KINDS, "kind")
            sql += f" and pairs.answers is {'' if kind == 'pair' else 'not '}null"
        params: list = []
        if versions is not None:
            vs = list(versions)
            marks = ",".join("?" * len(vs)) or "''"
            sql += f" and pairs.version_a in ({marks}) and pairs.version_b in ({marks})"
            params = [*vs, *vs]
        return sql, params

    def take_pair(self, annotator: str, overlap: int = 1,
                  versions: Collection[str] | None = None,
                  kind: str | None = None, overlap_fraction: float = 0.0) -> dict | None:
        """Atomically give ``annotator`` the oldest pair they were never assigned that has
        fewer annotators than it needs (both sides in ``versions`` if given; A/B pairs
        or rank sets only with ``kind`` 'pair' / 'rank'); records the assignment. None
        when there is none. A pair needs ``overlap`` annotators, or at least 2 when it is
        one of the ``overlap_fraction`` share chosen by its id (``is_overlap_pair``), so
        agreement can be measured."""
        if not isinstance(annotator, str) or not annotator.strip():
            raise BadInput("annotator name is empty: log in, or pass a name")
        if overlap < 1:
            raise BadInput(f"overlap={overlap}: must be >= 1")
        if not 0.0 <= overlap_fraction <= 1.0:
            raise BadInput(f"overlap_fraction={overlap_fraction}: must be in [0, 1]")
        where, params = self._available_sql(versions, kind)
        wide = max(overlap, 2)
        needs = (f"(case when {OVERLAP_PICK_SQL} < ? then {wide} else {int(overlap)} end)")
        with self.write() as db:
            row = db.execute(
                f"select pairs.id, {needs} from pairs where {where} and not exists (select 1 "
                "from pair_assignments m where m.pair_id = pairs.id and m.annotator = ?) and "
                "not exists (select 1 from skips s where s.pair_id = pairs.id and "
                "s.annotator = ?) and (select count(*) from pair_assignments a where "
                f"a.pair_id = pairs.id) < {needs} order by pairs.id limit 1",
                [overlap_fraction * OVERLAP_BUCKETS, *params, annotator, annotator,
                 overlap_fraction * OVERLAP_BUCKETS]).fetchone()
            if row is None:
                return None
            self._assign(db, row[0], annotator, row[1])
            return self.get_pair(row[0])

    def active_annotators(self, within_s: float) -> int:
        """How many annotators were handed a pair in the last ``within_s`` seconds."""
        return self.one("select count(distinct annotator) as n from pair_assignments where "
                        "assigned_at >= ?", [now(-within_s)])["n"]

    @staticmethod
    def _assign(db: sqlite_utils.Database, pair_id: int, annotator: str,
                overlap: int) -> None:
        """Record an assignment; a queued pair becomes 'served' at ``overlap`` of them."""
        t = now()
        db.execute("insert or ignore into pair_assignments (pair_id, annotator, assigned_at) "
                   "values (?, ?, ?)", [pair_id, annotator, t])
        n = db.execute("select count(*) from pair_assignments where pair_id = ?",
                       [pair_id]).fetchone()[0]
        if n >= overlap:
            db.execute("update pairs set status = 'served', served_at = ? where id = ? and "
                       "status = 'queued'", [t, pair_id])

    def assign_pair(self, pair_id: int, annotator: str) -> None:
        """Give a specific pair (e.g. one for the annotator's own prompt) to ``annotator``."""
        with self.write():
            self.get_pair(pair_id)
            self._assign(self._db(), pair_id, annotator, 1)

    def skip_pair(self, pair_id: int, annotator: str) -> bool:
        """``annotator`` skips a pair they hold: their assignment is dropped (the pair goes
        back to the others), and they are never given it again. A pair they already voted
        on is left alone. Returns True if a held pair was released."""
        with self.write() as db:
            held = db.execute(
                "select 1 from pair_assignments a where a.pair_id = ? and a.annotator = ? and "
                "not exists (select 1 from votes v where v.pair_id = a.pair_id and "
                "v.annotator = a.annotator)", [pair_id, annotator]).fetchone()
            if not held:
                return False
            db.execute("insert or ignore into skips (pair_id, annotator, created) "
                       "values (?, ?, ?)", [pair_id, annotator, now()])
            db.execute("delete from pair_assignments where pair_id = ? and annotator = ?",
                       [pair_id, annotator])
            db.execute("update pairs set status = 'queued', served_at = null where id = ? "
                       "and status = 'served'", [pair_id])
            return True

    def pair_served_at(self, pair_id: int, annotator: str) -> float | None:
        """When ``annotator`` was given the pair (UNIX seconds), or None."""
        row = self.one("select assigned_at from pair_assignments where pair_id = ? and "
                       "annotator = ?", [pair_id, annotator])
        return datetime.fromisoformat(row["assigned_at"]).timestamp() if row else None

    def release_stale_assignments(self, max_age_s: float) -> int:
        """Assignments older than ``max_age_s`` without a vote are removed and their pairs
        go back to 'queued'. Returns how many assignments were released."""
        cutoff = now(-max_age_s)
        with self.write() as db:
            stale = db.execute(
                "select a.pair_id, a.annotator from pair_assignments a where a.assigned_at < ? "
                "and not exists (select 1 from votes v where v.pair_id = a.pair_id and "
                "v.annotator = a.annotator)", [cutoff]).fetchall()
            for pair_id, annotator in stale:
                db.execute("delete from pair_assignments where pair_id = ? and annotator = ?",
                           [pair_id, annotator])
                db.execute("update pairs set status = 'queued', served_at = null where id = ? "
                           "and status = 'served'", [pair_id])
            return len(stale)

    def ready_pair_count(self, versions: Collection[str] | None = None,
                         kind: str | None = None) -> int:
        """Pairs still to hand out: queued, live and not yet given to anyone (what the pool
        keeps topped up; with overlap > 1, pairs given once are not counted); ``kind``
        counts A/B pairs or rank sets only."""
        where, params = self._available_sql(versions, kind)
        return self.one(f"select count(*) as n from pairs where {where} and status = 'queued' "
                        "and not exists (select 1 from pair_assignments a where "
                        "a.pair_id = pairs.id) and not exists (select 1 from skips s where "
                        "s.pair_id = pairs.id)", params)["n"]

    def retire_pairs(self, keep_versions: Collection[str]) -> int:
        """Expire queued pairs that nobody holds and that show NO version in
        ``keep_versions`` (stale policy). A pair with one kept side stays: arena pairs put
        the serving version against base or the previous one. Returns the count."""
        keep = list(keep_versions)
        marks = ",".join("?" * len(keep)) or "''"
        with self.write() as db:
            return db.execute(
                f"update pairs set status = 'expired' where status = 'queued' and "
                f"version_a not in ({marks}) and version_b not in ({marks}) and not exists "
                "(select 1 from pair_assignments a where a.pair_id = pairs.id)",
                [*keep, *keep]).rowcount

    def counts(self) -> dict:
        """Row counts for status pages: prompts, pairs, pairs_ready, votes, annotators
        (distinct voters), adapters, rounds, labels."""
        c = self.one(
            "select (select count(*) from prompts) as prompts, (select count(*) from pairs) "
            "as pairs, (select count(*) from votes) as votes, (select count(distinct "
            "annotator) from votes) as annotators, (select count(*) from adapters) as "
            "adapters, (select count(*) from rounds) as rounds, (select count(*) from labels) "
            "as labels")
        c["pairs_ready"] = self.ready_pair_count()
        return c
