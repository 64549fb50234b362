"""Versioned schema migrations, written with sqlite-utils.

``migrate(db)`` applies the missing migrations in order, each in its own ``BEGIN
IMMEDIATE`` transaction, and records its version in the ``migrations`` table; running it
again (or from two processes at once) changes nothing. To change the schema, append a
``(version, name, function)`` to ``MIGRATIONS``; never edit a released migration.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from storage.common import now
from storage.errors import StoreError


def _v1_initial(db: sqlite_utils.Database) -> None:
    """Every table of the first release."""
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


def _v2_origin_and_indexes(db: sqlite_utils.Database) -> None:
    """pairs.origin ('live' | 'import'): imported pairs are never handed to annotators.
    Plus the lookup indexes that take_pair, progress and the KTO export use."""
    db["pairs"].add_column("origin", str, not_null_default="live")
    db.execute("update pairs set origin = 'import' where version_a = 'import' and "
               "version_b = 'import'")
    db["pair_assignments"].create_index(["annotator"], if_not_exists=True)
    db["votes"].create_index(["annotator"], if_not_exists=True)
    db["pairs"].create_index(["prompt_id"], if_not_exists=True)
    db["labels"].create_index(["prompt_id"], if_not_exists=True)


def _v3_skips(db: sqlite_utils.Database) -> None:
    """skips: who skipped which pair. A skipped pair goes back to the others, never to
    the annotator who skipped it, and is not counted as ready (the pool refills)."""
    db["skips"].create({"pair_id": int, "annotator": str, "created": str},
                       pk=("pair_id", "annotator"), foreign_keys=[("pair_id", "pairs", "id")])


def _v4_answer_ends(db: sqlite_utils.Database) -> None:
    """pairs.end_a / end_b: what generation ended each answer with ('<eos>',
    '\nQuestion:', ...), '' if it was cut at the token limit, NULL if unknown (older and
    imported pairs: scored with the template's usual end). Training scores an answer
    with the end it really had (trainer/model/generate.py: frame_response)."""
    db["pairs"].add_column("end_a", str)
    db["pairs"].add_column("end_b", str)


def _v5_drop_annotators(db: sqlite_utils.Database) -> None:
    """Drop the ``annotators`` table: nothing read it. Users and roles live in the users
    file (app/auth.py); who voted is ``votes.annotator``."""
    db["annotators"].drop(ignore=True)


def _v6_sampled_tokens(db: sqlite_utils.Database) -> None:
    """pairs.prompt_ids / ids_a / ids_b: the token ids the model was conditioned on and
    sampled (JSON lists), so training scores exactly those tokens; NULL for imported
    pairs and pairs from before v6 (their texts are tokenised instead)."""
    for column in ("prompt_ids", "ids_a", "ids_b"):
        db["pairs"].add_column(column, str)


def _v7_rank_sets(db: sqlite_utils.Database) -> None:
    """pairs.answers: a rank-of-N set's answers (JSON list of {text, version, end, ids,
    reward}; NULL for an A/B pair, whose answers are response_a / response_b), and
    votes.ranking: a rank vote's order as tiers of answer indices, best first (JSON, e.g.
    [[2], [0, 3], [1]]: 2 best, 1 worst; NULL for A/B votes, ties and both-bad)."""
    db["pairs"].add_column("answers", str)
    db["votes"].add_column("ranking", str)


def _v8_adjudications(db: sqlite_utils.Database) -> None:
    """adjudications: an admin's decision on an A/B pair whose annotators disagreed (its
    label for training and export from then on), with who decided and when."""
    db["adjudications"].create({"pair_id": int, "choice": str, "admin": str, "created": str},
                               pk="pair_id", foreign_keys=[("pair_id", "pairs", "id")],
                               not_null={"choice", "admin", "created"})


def _v9_audit_log(db: sqlite_utils.Database) -> None:
    """audit_log: every admin action (users, settings, train now, rollback, imports,
    adjudication) with who, when, what and its details (JSON)."""
    db["audit_log"].create({"id": int, "at": str, "admin": str, "action": str,
                            "detail": str}, pk="id", not_null={"at", "admin", "action"})


Migration = tuple[int, str, Callable[[sqlite_utils.Database], None]]
MIGRATIONS: list[Migration] = [
    (1, "initial schema", _v1_initial),
    (2, "pair origin, lookup indexes", _v2_origin_and_indexes),
    (3, "skipped pairs", _v3_skips),
    (4, "how each answer ended", _v4_answer_ends),
    (5, "drop the unused annotators table", _v5_drop_annotators),
    (6, "sampled token ids of each pair", _v6_sampled_tokens),
    (7, "rank-of-N sets and their rankings", _v7_rank_sets),
    (8, "adjudications of disagreements", _v8_adjudications),
    (9, "audit log of admin actions", _v9_audit_log),
]
LATEST = MIGRATIONS[-1][0]


def applied_versions(db: sqlite_utils.Database) -> list[int]:
    """Migration versions recorded in this DB, ascending."""
    if "migrations" not in db.table_names():
        return []
    return [r["version"] for r in db.query("select version from migrations order by version")]


def _refuse_newer(db: sqlite_utils.Database, where: str) -> None:
    newest = max(applied_versions(db), default=0)
    if newest > LATEST:
        raise StoreError(f"{where} has schema version {newest}, newer than this LiveDPO "
                         f"knows ({LATEST}): upgrade LiveDPO, or use another data dir")


def _apply(db: sqlite_utils.Database, version: int, name: str,
           fn: Callable[[sqlite_utils.Database], None]) -> bool:
    """Apply one migration unless already recorded; True if applied now."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("select 1 from migrations where version = ?", [version]).fetchone():
            db.conn.execute("COMMIT")
            return False
        fn(db)
        db.execute("insert into migrations (version, name, applied) values (?, ?, ?)",
                   [version, name, now()])
        db.conn.execute("COMMIT")
        return True
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


def migrate(db: sqlite_utils.Database, target: int | None = None,
            where: str = "the database") -> list[int]:
    """Apply missing migrations up to ``target`` (default: all); returns the versions
    applied now (empty when the schema was already current)."""
    db.execute("create table if not exists migrations "
               "(version integer primary key, name text, applied text)")
    _refuse_newer(db, where)
    return [version for version, name, fn in MIGRATIONS
            if (target is None or version <= target) and _apply(db, version, name, fn)]
