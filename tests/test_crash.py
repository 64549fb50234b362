"""Crash safety with real processes and a real SIGKILL.

One ``python app.py serve`` on the tiny model lives through the whole module on one data
dir: it is driven through the scripted API by several voter threads and killed with
SIGKILL (a) between two optimizer steps of a round, (b) while an adapter version is being
saved, (c) after the version dir was renamed into place but before the DB row, and (e) at
a random moment while votes stream in; (d) a ``python app.py import-prefs`` process is
killed inside its import transaction while the server keeps taking votes. Failpoints
(storage/failpoints.py) freeze the process at the exact place; the test kills it there.

After each restart on the same data dir, checked from outside (sqlite3 and the real
``app.py status --json``): ``PRAGMA integrity_check`` is ok; every vote whose API call
returned is stored exactly once, with its choice; the serving adapter is 'base' or a
complete recorded version; the interrupted round is 'failed' as interrupted; leftover
temp dirs are gone. Five server starts in all; the tests share the server and run in order,
but each one also works alone (it starts the server if needed).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage import failpoints
from storage.failpoints import arm
from tests.proc_fixtures import (
    ANNOTATOR,
    ROOT,
    Server,
    Voters,
    child_env,
    cli,
    cli_status,
    db_rows,
    wait_for,
    wait_hit,
)
from trainer.model.adapters import is_complete, set_aside_orphans

FLAGS = ["--device", "cpu", "--quantize", "none", "--max-new-tokens", "8",
         "--ready-pairs", "4", "--batch-prompts", "4", "--votes-per-round", "4",
         "--epochs", "1", "--micro-batch", "1", "--grad-accum", "1", "--window", "8",
         "--max-length", "64", "--heldout-fraction", "0", "--accept-tolerance", "1.0"]
UNVOTED_ASSIGNMENTS = ("select count(*) from pair_assignments a where not exists (select 1 "
                       "from votes v where v.pair_id = a.pair_id and v.annotator = a.annotator)")
IMPORT_ROWS = 2500  # a few MB: more than SQLite's page cache, so pages spill before COMMIT


class Life:
    """The module's server, its failpoint dir and every vote the API acknowledged."""

    def __init__(self, tmp: Path, model_dir: Path) -> None:
        self.data_dir, self.fp_dir = tmp / "data", tmp / "failpoints"
        self.server = Server(self.data_dir, model_dir, self.fp_dir, FLAGS)
        self.acked: list[tuple[int, str]] = []
        self.imported: int | None = None

    def ensure_running(self) -> Server:
        if not self.server.running():
            self.server.start()
        return self.server

    def voters(self, n: int = 3, seed: int = 0) -> Voters:
        return Voters(self.server, n=n, seed=seed)

    def keep(self, voters: Voters) -> None:
        assert not voters.errors, f"API calls failed while the server was up: {voters.errors}"
        self.acked += voters.acked

    def kill_and_restart(self, voters: Voters | None = None) -> None:
        """SIGKILL the server (votes may be in flight), then start it on the same dir;
        temp dirs the kill left behind must be gone once it is up."""
        if voters:
            voters.expect_death()
            time.sleep(random.uniform(0.0, 0.3))  # let in-flight calls overlap the kill
        self.server.kill()
        if voters:
            voters.stop()
            self.keep(voters)
        left = adapter_dirs(self, ".tmp-*")
        self.server.start()
        assert not left & adapter_dirs(self, ".tmp-*"), f"temp dirs survived a start: {left}"
        assert db_rows(self.data_dir, UNVOTED_ASSIGNMENTS) == [(0,)], \
            "pairs handed out before the kill are still held (never handed out again)"


@pytest.fixture(scope="module")
def life(tmp_path_factory, tiny_model_dir):
    life = Life(tmp_path_factory.mktemp("crash"), tiny_model_dir)
    try:
        yield life
    finally:
        life.server.kill()
        print(f"\ncrash tests: {life.server.starts} server starts, seconds to ready "
              f"{life.server.start_seconds}, {len(life.acked)} acknowledged votes")


# --- what must hold after every restart ------------------------------------------------------
def check_invariants(life: Life) -> dict:
    """The checks every crash must pass; returns ``app.py status --json``."""
    d = life.data_dir
    assert db_rows(d, "pragma integrity_check") == [("ok",)]
    assert db_rows(d, "pragma foreign_key_check") == []
    pair_ids = [p for p, _ in life.acked]
    assert len(pair_ids) == len(set(pair_ids)), "a pair was handed out twice to one annotator"
    stored = {p: (c, n) for p, c, n in db_rows(
        d, "select pair_id, choice, count(*) from votes where annotator = ? group by pair_id",
        (ANNOTATOR,))}
    missing = [p for p in pair_ids if p not in stored]
    assert not missing, f"{len(missing)} acknowledged vote(s) lost, pairs {missing[:10]}"
    wrong = [(p, c, stored[p]) for p, c in life.acked if stored[p] != (c, 1)]
    assert not wrong, f"acknowledged votes stored wrongly (pair, choice, stored): {wrong[:5]}"
    status = cli_status(d)
    serving = status["serving_adapter"]
    if serving != "base":
        (path, state), = db_rows(d, "select path, status from adapters where version = ?",
                                 (serving,))
        assert state == "ready" and is_complete(Path(path)), f"serving {serving} at {path}"
    return status


def running_round(life: Life) -> int:
    """The one round in progress (the one the failpoint froze)."""
    (round_id,), = db_rows(life.data_dir, "select id from rounds where status = 'running'")
    return round_id


def assert_interrupted(life: Life, round_id: int) -> None:
    (status, error), = db_rows(life.data_dir, "select status, error from rounds where id = ?",
                               (round_id,))
    assert status == "failed" and "interrupted" in error, (status, error)


def adapter_dirs(life: Life, pattern: str) -> set[str]:
    return {p.name for p in (life.data_dir / "adapters").glob(pattern)}


def recorded_versions(life: Life) -> set[str]:
    return {v for v, in db_rows(life.data_dir, "select version from adapters")}


# --- the crashes ------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_between_optimizer_steps_of_a_round(life):
    server = life.ensure_running()
    hit = arm(life.fp_dir, "round.step")
    with life.voters(seed=1) as voters:
        assert wait_hit(hit) == server.pid  # votes trigger a round; it froze after step 1
        voters.wait_acked(len(voters.acked) + 2)  # votes still stream while it trains
        round_id = running_round(life)
        assert db_rows(life.data_dir, "select count(*) from train_steps where round_id = ?",
                       (round_id,)) == [(1,)]
        life.kill_and_restart(voters)
    hit.unlink()
    check_invariants(life)
    assert_interrupted(life, round_id)


@pytest.mark.slow
def test_kill_while_an_adapter_version_is_saved(life):
    life.ensure_running()
    hit = arm(life.fp_dir, "adapter.before_rename")
    with life.voters(seed=2) as voters:
        wait_hit(hit)
        round_id = running_round(life)
        temp, = adapter_dirs(life, ".tmp-*")
        assert is_complete(life.data_dir / "adapters" / temp)  # written, not yet renamed
        life.kill_and_restart(voters)  # (checks that the temp dir is gone after the start)
    hit.unlink()
    check_invariants(life)
    assert_interrupted(life, round_id)
    assert db_rows(life.data_dir, "select count(*) from adapters where round_id = ?",
                   (round_id,)) == [(0,)], "the interrupted save was recorded"


@pytest.mark.slow
def test_kill_after_rename_before_the_db_row_does_not_block_later_versions(life):
    """A kill between the version dir's rename and its DB row leaves an orphan vN dir; it is
    set aside at start, so a later save of vN does not fail with FileExistsError."""
    life.ensure_running()
    hit = arm(life.fp_dir, "adapter.before_record")
    with life.voters(seed=3) as voters:
        wait_hit(hit)
        round_id = running_round(life)
        orphan, = adapter_dirs(life, "v*") - recorded_versions(life)
        life.kill_and_restart(voters)
    hit.unlink()
    check_invariants(life)
    assert_interrupted(life, round_id)
    aside = adapter_dirs(life, f".orphan-{orphan}-*")
    assert len(aside) == 1 and is_complete(life.data_dir / "adapters" / aside.pop())
    life.server.train_now()  # (a round also starts by itself: its votes are still new)
    done = wait_for(lambda: db_rows(life.data_dir, "select status, error, adapter_version "
                                    "from rounds where id > ? and status != 'running' "
                                    "order by id limit 1", (round_id,)),
                    240, "the first round after the restart to finish")
    assert done == [("accepted", None, orphan)], done  # (then served; later rounds may follow)
    (path, state), = db_rows(life.data_dir, "select path, status from adapters where "
                             "version = ?", (orphan,))
    assert state == "ready" and Path(path) == life.data_dir / "adapters" / orphan
    assert is_complete(Path(path))


def _prefs_file(path: Path, n: int) -> Path:
    filler = "lorem ipsum dolor sit amet " * 20
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Crash import prompt #{i}?",
                                "chosen": f"Chosen {i}: {filler}",
                                "rejected": f"Rejected {i}: {filler}"}) + "\n")
    return path


def _import_counts(life: Life) -> tuple:
    return db_rows(life.data_dir, "select (select count(*) from pairs where origin = 'import'),"
                   " (select count(*) from votes where annotator = 'import'), (select count(*)"
                   " from prompts where text like 'Crash import prompt #%')")[0]


@pytest.mark.slow
def test_kill_inside_an_import_transaction_leaves_nothing(life, tmp_path):
    server = life.ensure_running()
    prefs = _prefs_file(tmp_path / "prefs.jsonl", IMPORT_ROWS)
    before = _import_counts(life)
    hit = arm(life.fp_dir, "import.before_commit")
    with life.voters(seed=4) as voters:
        voters.wait_acked(2)
        proc = subprocess.Popen([sys.executable, "app.py", "import-prefs", str(prefs),
                                 "--data-dir", str(life.data_dir)], cwd=ROOT,
                                env=child_env(life.fp_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            assert wait_hit(hit, 120) == proc.pid  # all rows inserted, write lock held
            time.sleep(1.0)  # the server's vote writes queue behind the lock meanwhile
            proc.kill()
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        hit.unlink()
        n = len(voters.acked)
        voters.wait_acked(n + 3, timeout=120)  # the dead writer's lock is gone: votes go on
    life.keep(voters)
    assert proc.returncode == -9 and server.running()
    assert _import_counts(life) == before, "a killed import left rows behind"
    check_invariants(life)
    r = cli("import-prefs", str(prefs), data_dir=life.data_dir)
    assert r.returncode == 0 and f"pairs={IMPORT_ROWS}" in r.stdout, r.stderr
    assert _import_counts(life) == tuple(b + IMPORT_ROWS for b in before)
    life.imported = before[0] + IMPORT_ROWS


@pytest.mark.slow
def test_kill_at_a_random_moment_while_votes_stream_in(life):
    life.ensure_running()
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    rounds_before = db_rows(life.data_dir, "select coalesce(max(id), 0) from rounds")[0][0]
    with life.voters(n=4, seed=seed) as voters:
        voters.wait_acked(8)
        time.sleep(rng.uniform(0.0, 2.0))
        life.kill_and_restart(voters)
    check_invariants(life)
    stuck = db_rows(life.data_dir, "select id from rounds where status = 'running' and id <= ?",
                    (rounds_before,))
    assert not stuck, f"seed {seed}: rounds left running: {stuck}"
    if life.imported is not None:
        assert _import_counts(life)[0] == life.imported
    with life.voters(n=1, seed=seed + 1) as voters:  # the restarted server takes votes
        voters.wait_acked(2)
    life.keep(voters)
    check_invariants(life)


@pytest.mark.slow
def test_version_dirs_match_the_db_after_all_crashes(life):
    """Every recorded version has its complete dir; every vN dir is recorded (no orphans;
    polled, as a live round may be between its rename and its DB row)."""
    life.ensure_running()

    def consistent() -> bool:
        recorded = {v: Path(p) for v, p in db_rows(life.data_dir,
                                                   "select version, path from adapters")}
        assert all(is_complete(p) for p in recorded.values()), recorded
        dirs = {n for n in adapter_dirs(life, "v*") if re.fullmatch(r"v\d+", n)}
        return dirs <= set(recorded)

    wait_for(consistent, 60, "every vN dir to be recorded in the DB")


def test_set_aside_orphans_moves_only_unrecorded_version_dirs(tmp_path):
    for name in ("v1", "v2", "v3", "notes", ".tmp-v4-x"):
        (tmp_path / name).mkdir()
    moved = set_aside_orphans(tmp_path, known={"v1", "v3"})
    assert [p.name.split("-")[1] for p in moved] == ["v2"]
    assert {p.name for p in tmp_path.iterdir()} == {"v1", "v3", "notes", ".tmp-v4-x",
                                                    moved[0].name}
    (tmp_path / "v2").mkdir()  # the same version orphaned again within the second
    again = set_aside_orphans(tmp_path, known={"v1", "v3"})
    assert len(again) == 1 and again[0] != moved[0] and moved[0].is_dir()
    assert set_aside_orphans(tmp_path / "missing", known=set()) == []


def test_failpoint_fires_once_and_blocks_until_released(tmp_path, monkeypatch):
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints.failpoint("x")  # not configured: a no-op
    monkeypatch.setenv(failpoints.ENV, str(tmp_path))
    failpoints.failpoint("x")  # configured but not armed: a no-op
    hit = arm(tmp_path, "x")
    t = threading.Thread(target=failpoints.failpoint, args=("x",))
    t.start()
    assert wait_hit(hit, 30) == os.getpid()
    t.join(0.3)
    assert t.is_alive()  # blocked at the failpoint
    hit.unlink()
    t.join(30)
    assert not t.is_alive() and not (tmp_path / "x").exists()
    failpoints.failpoint("x")  # one-shot: fired already, so no block now
