"""Rounds, per-step metrics, adapter versions, the serving pointer, cached reference
log-probs, small JSON state and the audit log of admin actions."""

from __future__ import annotations

from typing import Any

from storage.common import (
    ADAPTER_STATUSES,
    ROUND_STATUSES,
    dumps,
    is_version,
    loads,
    now,
    require_one_of,
    version_number,
)
from storage.errors import BadInput

__all__ = ["RunsMixin", "ROUND_STATUSES", "INTERRUPTED"]

SERVING_KEY = "serving_adapter"
INTERRUPTED = "interrupted (process stopped)"  # the error of a round a stop cut short


class RunsMixin:
    """State, adapter, round, step and reference-cache methods of ``storage.db.Store``."""

    # --- state -----------------------------------------------------------------------------
    def audit(self, admin: str, action: str, **detail: Any) -> None:
        """Record an admin action (who, when, what) in the audit log."""
        with self.write() as db:
            db.execute("insert into audit_log (at, admin, action, detail) values (?,?,?,?)",
                       [now(), admin, action, dumps(detail)])

    def audit_log(self, limit: int | None = None) -> list[dict]:
        """The audit log, newest first ({id, at, admin, action, detail})."""
        rows = self.query("select * from audit_log order by id desc"
                          + (" limit ?" if limit else ""), [limit] if limit else [])
        return [{**r, "detail": loads(r["detail"]) or {}} for r in rows]

    def get_state(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key`` (``default`` if unset)."""
        row = self.one("select value from state where key = ?", [key])
        return default if row is None else loads(row["value"])

    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` (None stores JSON null)."""
        text = "null" if value is None else dumps(value, f"state {key!r}")
        with self.write() as db:
            db.execute("insert into state (key, value) values (?, ?) on conflict (key) do "
                       "update set value = excluded.value", [key, text])

    # --- adapters ----------------------------------------------------------------------------
    def next_adapter_version(self) -> str:
        """'v1', 'v2', ...: one more than the highest version ever added."""
        return f"v{self.one('select coalesce(max(number), 0) + 1 as n from adapters')['n']}"

    def add_adapter(self, version: str, path: str, parent_version: str | None,
                    round_id: int | None, status: str = "ready", metrics: Any = None) -> None:
        """Record an adapter version saved at ``path`` (BadInput if the label is taken)."""
        if not is_version(version):
            raise BadInput(f"adapter version {version!r}: expected 'v<number>', e.g. "
                           f"{self.next_adapter_version()!r}")
        require_one_of(status, ADAPTER_STATUSES, "adapter status")
        text = dumps(metrics, "adapter metrics")
        with self.write() as db:
            if db.execute("select 1 from adapters where version = ? or number = ?",
                          [version, version_number(version)]).fetchone():
                raise BadInput(f"adapter version {version!r} already exists: use "
                               f"{self.next_adapter_version()!r}")
            db.execute("insert into adapters (version, number, path, parent_version, round_id, "
                       "created, status, metrics) values (?,?,?,?,?,?,?,?)",
                       [version, version_number(version), str(path), parent_version, round_id, now(),
                        status, text])

    @staticmethod
    def _adapter_row(row: dict | None) -> dict | None:
        if row is not None:
            row["metrics"] = loads(row["metrics"])
        return row

    def get_adapter(self, version: str) -> dict | None:
        """One adapter row (metrics decoded), or None."""
        return self._adapter_row(self.one("select * from adapters where version = ?",
                                          [version]))

    def list_adapters(self) -> list[dict]:
        """Every adapter version, oldest first."""
        return [self._adapter_row(r) for r in
                self.query("select * from adapters order by number")]

    def set_adapter_status(self, version: str, status: str) -> None:
        """Mark an adapter saved, ready, rejected or failed (BadInput if unknown)."""
        require_one_of(status, ADAPTER_STATUSES, "adapter status")
        with self.write() as db:
            if not db.execute("update adapters set status = ? where version = ?",
                              [status, version]).rowcount:
                raise BadInput(f"no adapter version {version!r}: see list_adapters()")

    def serving_adapter(self) -> str:
        """The version annotators are served ('base' when none was set)."""
        return self.get_state(SERVING_KEY, "base")

    def set_serving_adapter(self, version: str) -> None:
        """Serve 'base' or an adapter whose status is 'ready' (else BadInput)."""
        with self.write():
            if version != "base":
                row = self.get_adapter(version)
                if row is None or row["status"] != "ready":
                    ready = [a["version"] for a in self.list_adapters()
                             if a["status"] == "ready"]
                    raise BadInput(f"adapter {version!r} cannot serve: it is "
                                   f"{'unknown' if row is None else row['status']}. Use "
                                   f"'base' or one of: {', '.join(ready) or 'none yet'}")
            self.set_state(SERVING_KEY, version)

    # --- rounds and steps -----------------------------------------------------------------------
    def start_round(self, config: dict, trigger: str = "auto") -> int:
        """A new 'running' round; returns its id."""
        text = dumps(config, "round config")
        with self.write() as db:
            return db.execute("insert into rounds (started, status, trigger, config) values "
                              "(?, 'running', ?, ?)", [now(), trigger, text]).lastrowid

    def finish_round(self, round_id: int, status: str, counts: Any = None,
                     metrics: Any = None, error: str | None = None,
                     adapter_version: str | None = None) -> None:
        """Close a round as accepted, rejected or failed, with its counts and metrics."""
        require_one_of(status, ROUND_STATUSES[1:], "final round status")
        values = [dumps(counts, "round counts"), dumps(metrics, "round metrics")]
        with self.write() as db:
            if not db.execute("update rounds set finished = ?, status = ?, counts = ?, "
                              "metrics = ?, error = ?, adapter_version = ? where id = ?",
                              [now(), status, *values, error, adapter_version,
                               round_id]).rowcount:
                raise BadInput(f"no round with id {round_id!r}: start it with start_round")

    def fail_interrupted_rounds(self) -> int:
        """Rounds a crash left 'running' become 'failed', and any adapter they had saved
        but not yet served too (call at start-up). Returns how many rounds."""
        with self.write() as db:
            db.execute("update adapters set status = 'failed' where status = 'saved' and "
                       "round_id in (select id from rounds where status = 'running')")
            return db.execute("update rounds set status = 'failed', finished = ?, error = ? "
                              "where status = 'running'", [now(), INTERRUPTED]).rowcount

    @staticmethod
    def _round_row(row: dict | None) -> dict | None:
        if row is not None:
            for k in ("config", "counts", "metrics"):
                row[k] = loads(row[k])
        return row

    def get_round(self, round_id: int) -> dict | None:
        """One round (JSON columns decoded), or None."""
        return self._round_row(self.one("select * from rounds where id = ?", [round_id]))

    def round_last_vote(self, round_id: int) -> int | None:
        """The newest vote round ``round_id`` read (its counts' ``max_vote_id``), or None
        when the round is unknown or stopped before it read its votes."""
        counts = (self.get_round(round_id) or {}).get("counts") or {}
        return counts.get("max_vote_id")

    def list_rounds(self, limit: int = 50) -> list[dict]:
        """The newest rounds first."""
        return [self._round_row(r) for r in
                self.query("select * from rounds order by id desc limit ?", [limit])]

    def record_step(self, round_id: int, step: int, metrics: dict) -> None:
        """Metrics of one optimizer step (a repeated step replaces the row)."""
        text = dumps(metrics, "step metrics")
        with self.write() as db:
            db.execute("insert or replace into train_steps (round_id, step, metrics, created) "
                       "values (?, ?, ?, ?)", [round_id, step, text, now()])

    def train_steps(self, round_id: int | None = None) -> list[dict]:
        """Step rows (metrics decoded) of one round, or of every round."""
        sql, params = "select * from train_steps", []
        if round_id is not None:
            sql, params = sql + " where round_id = ?", [round_id]
        rows = self.query(sql + " order by round_id, step", params)
        for r in rows:
            r["metrics"] = loads(r["metrics"])
        return rows

    # --- cached reference log-probs ---------------------------------------------------------------
    def get_ref_logps(self, ref_version: str, keys: list[tuple[int, str]]
                      ) -> dict[tuple[int, str], tuple[float, int]]:
        """Cached (logp, n_tokens) for each (pair_id, text_hash) key found in the cache."""
        out: dict[tuple[int, str], tuple[float, int]] = {}
        pair_ids = sorted({k[0] for k in keys})
        for i in range(0, len(pair_ids), 500):  # stay under SQLite's variable limit
            chunk = pair_ids[i:i + 500]
            rows = self.query(
                f"select pair_id, text_hash, logp, n_tokens from ref_logps where ref_version = ? "
                f"and pair_id in ({','.join('?' * len(chunk))})", [ref_version, *chunk])
            for r in rows:
                out[(r["pair_id"], r["text_hash"])] = (r["logp"], r["n_tokens"])
        wanted = set(keys)
        return {k: v for k, v in out.items() if k in wanted}

    def put_ref_logps(self, ref_version: str, rows: list[tuple[int, str, float, int]]) -> None:
        """Cache (pair_id, text_hash, logp, n_tokens) rows for a reference version."""
        with self.write() as db:
            db.conn.executemany("insert or replace into ref_logps (pair_id, ref_version, "
                                "text_hash, logp, n_tokens) values (?, ?, ?, ?, ?)",
                                [(p, ref_version, h, float(lp), int(n)) for p, h, lp, n in rows])
