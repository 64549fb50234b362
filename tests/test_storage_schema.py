"""Schema migrations: idempotent, upgrades fill new columns, newer schemas refused."""

import pytest
import sqlite_utils

from storage.db import Store
from storage.errors import StoreError
from storage.schema import LATEST, MIGRATIONS, applied_versions, migrate


def test_migrations_are_idempotent(tmp_path):
    s1 = Store(tmp_path / "x.db")
    schema = s1.query("select type, name, sql from sqlite_master order by name")
    applied = s1.query("select * from migrations")
    s2 = Store(tmp_path / "x.db")  # migrating again changes nothing
    assert migrate(s2._db()) == []
    assert s2.query("select type, name, sql from sqlite_master order by name") == schema
    assert s2.query("select * from migrations") == applied
    assert applied_versions(s2._db()) == [v for v, _, _ in MIGRATIONS]
    assert s2.one("pragma journal_mode")["journal_mode"] == "wal"
    assert s2.one("pragma foreign_keys")["foreign_keys"] == 1
    assert s2.one("pragma busy_timeout")["timeout"] == 30_000


def test_upgrade_from_v1_backfills_imported_pairs(tmp_path):
    db = sqlite_utils.Database(tmp_path / "old.db")
    assert migrate(db, target=1) == [1]
    db.execute("insert into prompts (id, text) values (1, 'q')")
    db.execute("insert into pairs (prompt_id, response_a, response_b, version_a, version_b, "
               "status) values (1, 'c', 'r', 'import', 'import', 'voted'), "
               "(1, 'x', 'y', 'base', 'base', 'queued')")
    db.conn.commit()
    db.close()
    s = Store(tmp_path / "old.db")
    assert applied_versions(s._db()) == list(range(1, LATEST + 1))  # every later one applied
    assert "annotators" not in s._db().table_names()  # v5: roles live in the users file
    assert [p["origin"] for p in s.query("select origin from pairs order by id")] == [
        "import", "live"]
    assert s.take_pair("u")["id"] == 2
    s.record_vote(2, "u", "a")  # pairs from before v4: how they ended is unknown (None)
    assert [(r["chosen_end"], r["rejected_end"]) for r in s.training_pairs()] == [
        (None, None)]


def test_refuses_newer_schema_and_non_db_files(tmp_path):
    s = Store(tmp_path / "n.db")
    with s.write() as db:
        db.execute("insert into migrations (version, name) values (?, 'future')", [LATEST + 1])
    with pytest.raises(StoreError, match="newer than this LiveDPO knows"):
        Store(tmp_path / "n.db")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open .*junk.db as a LiveDPO database"):
        Store(tmp_path / "junk.db")
