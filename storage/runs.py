"""Rounds, per-step metrics, adapter versions, the serving pointer, cached reference
log-probs and small JSON state."""

from __future__ import annotations

from storage.errors import BadInput

ROUND_STATUSES = ("running", "accepted", "rejected", "failed")


class RunsMixin:
    # --- state -----------------------------------------------------------------------------
    def get_state(self, key: str, default=None):
        from storage.db import loads

        row = self.one("select value from state where key = ?", [key])
        return default if row is None else loads(row["value"])

    def set_state(self, key: str, value) -> None:
        from storage.db import dumps

        with self.write() as db:
            db.execute("insert into state (key, value) values (?, ?) on conflict (key) do "
                       "update set value = excluded.value", [key, dumps(value)])

    # --- adapters ----------------------------------------------------------------------------
    def next_adapter_version(self) -> str:
        return f"v{self.one('select coalesce(max(number), 0) + 1 as n from adapters')['n']}"

    def add_adapter(self, version: str, path: str, parent_version: str | None,
                    round_id: int | None, status: str = "ready", metrics=None) -> None:
        from storage.db import dumps, now

        if not version.startswith("v") or not version[1:].isdigit():
            raise BadInput(f"adapter version {version!r}: expected 'v<number>'")
        with self.write() as db:
            db.execute("insert into adapters (version, number, path, parent_version, round_id, "
                       "created, status, metrics) values (?,?,?,?,?,?,?,?)",
                       [version, int(version[1:]), path, parent_version, round_id, now(),
                        status, dumps(metrics)])

    def _adapter_row(self, row: dict | None) -> dict | None:
        from storage.db import loads

        if row is not None:
            row["metrics"] = loads(row["metrics"])
        return row

    def get_adapter(self, version: str) -> dict | None:
        return self._adapter_row(self.one("select * from adapters where version = ?",
                                          [version]))

    def list_adapters(self) -> list[dict]:
        return [self._adapter_row(r) for r in
                self.query("select * from adapters order by number")]

    def set_adapter_status(self, version: str, status: str) -> None:
        with self.write() as db:
            db.execute("update adapters set status = ? where version = ?", [status, version])

    def serving_adapter(self) -> str:
        return self.get_state("serving_adapter", "base")

    def set_serving_adapter(self, version: str) -> None:
        if version != "base":
            row = self.get_adapter(version)
            if row is None or row["status"] != "ready":
                ready = [a["version"] for a in self.list_adapters() if a["status"] == "ready"]
                raise BadInput(f"adapter {version!r} cannot serve: it is "
                               f"{'unknown' if row is None else row['status']}. Use 'base' or "
                               f"one of: {', '.join(ready) or 'none yet'}")
        self.set_state("serving_adapter", version)

    # --- rounds and steps -----------------------------------------------------------------------
    def start_round(self, config: dict, trigger: str = "auto") -> int:
        from storage.db import dumps, now

        with self.write() as db:
            return db.execute("insert into rounds (started, status, trigger, config) values "
                              "(?, 'running', ?, ?)", [now(), trigger, dumps(config)]).lastrowid

    def finish_round(self, round_id: int, status: str, counts=None, metrics=None,
                     error: str | None = None, adapter_version: str | None = None) -> None:
        from storage.db import dumps, now

        if status not in ROUND_STATUSES[1:]:
            raise BadInput(f"round status {status!r}: use accepted, rejected or failed")
        with self.write() as db:
            db.execute("update rounds set finished = ?, status = ?, counts = ?, metrics = ?, "
                       "error = ?, adapter_version = ? where id = ?",
                       [now(), status, dumps(counts), dumps(metrics), error, adapter_version,
                        round_id])

    def fail_interrupted_rounds(self) -> int:
        """Rounds a crash left 'running' are marked failed (call at start-up)."""
        from storage.db import now

        with self.write() as db:
            return db.execute("update rounds set status = 'failed', finished = ?, error = "
                              "'interrupted (process stopped)' where status = 'running'",
                              [now()]).rowcount

    def _round_row(self, row: dict | None) -> dict | None:
        from storage.db import loads

        if row is not None:
            for k in ("config", "counts", "metrics"):
                row[k] = loads(row[k])
        return row

    def get_round(self, round_id: int) -> dict | None:
        return self._round_row(self.one("select * from rounds where id = ?", [round_id]))

    def list_rounds(self, limit: int = 50) -> list[dict]:
        return [self._round_row(r) for r in
                self.query("select * from rounds order by id desc limit ?", [limit])]

    def record_step(self, round_id: int, step: int, metrics: dict) -> None:
        from storage.db import dumps, now

        with self.write() as db:
            db.execute("insert or replace into train_steps (round_id, step, metrics, created) "
                       "values (?, ?, ?, ?)", [round_id, step, dumps(metrics), now()])

    def train_steps(self, round_id: int | None = None) -> list[dict]:
        from storage.db import loads

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
        out: dict[tuple[int, str], tuple[float, int]] = {}
        pair_ids = sorted({k[0] for k in keys})
        for i in range(0, len(pair_ids), 500):
            chunk = pair_ids[i:i + 500]
            rows = self.query(
                f"select pair_id, text_hash, logp, n_tokens from ref_logps where ref_version = ? "
                f"and pair_id in ({','.join('?' * len(chunk))})", [ref_version, *chunk])
            for r in rows:
                out[(r["pair_id"], r["text_hash"])] = (r["logp"], r["n_tokens"])
        wanted = set(keys)
        return {k: v for k, v in out.items() if k in wanted}

    def put_ref_logps(self, ref_version: str, rows: list[tuple[int, str, float, int]]) -> None:
        with self.write() as db:
            db.conn.executemany("insert or replace into ref_logps (pair_id, ref_version, "
                                "text_hash, logp, n_tokens) values (?, ?, ?, ?, ?)",
                                [(p, ref_version, h, lp, n) for p, h, lp, n in rows])
