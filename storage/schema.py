"""Versioned schema migrations. ``migrate(db)`` applies the missing ones, in order, each
in its own transaction; running it again changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import sqlite_utils


def _v1_initial(db: sqlite_utils.Database) -> None:
    db["prompts"].create({"id": int, "text": str, "source": str, "created": str,
                          "served_count": int}, pk="id", not_null={"text"},
                         defaults={"served_count": 0, "source": "import"})
    db["prompts"].create_index(["text"], unique=True)
    db["pairs"].create({
        "id": int, "prompt_id": int, "response_a": str, "response_b": str, "version_a": str,
        "version_b": str, "arena": int, "gen_config": str, "seed": int, "created": str,
        "status": str, "served_at": str}, pk="id", foreign_keys=[("prompt_id", "prompts", "id")],
        not_null={"prompt_id", "response_a", "response_b", "version_a", "version_b"},
        defaults={"arena": 0, "status": "queued"})
    db["pairs"].create_index(["status", "id"])
    db["pair_assignments"].create({"pair_id": int, "annotator": str, "assigned_at": str},
                                  pk=("pair_id", "annotator"),
                                  foreign_keys=[("pair_id", "pairs", "id")])
    db["votes"].create({
        "id": int, "pair_id": int, "annotator": str, "choice": str, "better_answer": str,
        "decide_ms": int, "created": str, "updated": str}, pk="id",
        foreign_keys=[("pair_id", "pairs", "id")], not_null={"pair_id", "annotator", "choice"})
    db["votes"].create_index(["pair_id", "annotator"], unique=True)
    db["annotators"].create({"name": str, "role": str, "created": str}, pk="name",
                            defaults={"role": "annotator"})
    db["labels"].create({"id": int, "prompt_id": int, "completion": str, "label": int,
                         "source": str, "created": str}, pk="id",
                        foreign_keys=[("prompt_id", "prompts", "id")])
    db["rounds"].create({
        "id": int, "started": str, "finished": str, "status": str, "trigger": str,
        "config": str, "counts": str, "metrics": str, "error": str, "adapter_version": str},
        pk="id", defaults={"status": "running"})
    db["adapters"].create({
        "version": str, "number": int, "path": str, "parent_version": str, "round_id": int,
        "created": str, "status": str, "metrics": str}, pk="version",
        foreign_keys=[("round_id", "rounds", "id")])
    db["adapters"].create_index(["number"], unique=True)
    db["state"].create({"key": str, "value": str}, pk="key")
    db["train_steps"].create({"round_id": int, "step": int, "metrics": str, "created": str},
                             pk=("round_id", "step"), foreign_keys=[("round_id", "rounds", "id")])
    db["ref_logps"].create({"pair_id": int, "ref_version": str, "text_hash": str,
                            "logp": float, "n_tokens": int},
                           pk=("pair_id", "ref_version", "text_hash"),
                           foreign_keys=[("pair_id", "pairs", "id")])


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "initial schema", _v1_initial),
]


def applied_versions(db: sqlite_utils.Database) -> list[int]:
    if "migrations" not in db.table_names():
        return []
    return [r["version"] for r in db.query("select version from migrations order by version")]


def migrate(db: sqlite_utils.Database) -> list[int]:
    """Apply missing migrations; returns the versions applied now (empty if none)."""
    db.execute("create table if not exists migrations "
               "(version integer primary key, name text, applied text)")
    done = []
    for version, name, fn in MIGRATIONS:
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("select 1 from migrations where version = ?", [version]).fetchone():
                db.conn.execute("COMMIT")
                continue
            fn(db)
            db.execute("insert into migrations (version, name, applied) values (?, ?, ?)",
                       [version, name, datetime.now(timezone.utc).isoformat()])
            db.conn.execute("COMMIT")
            done.append(version)
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
    return done
