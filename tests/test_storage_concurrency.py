import threading
from collections import Counter
from collections.abc import Callable

import pytest

from storage.db import Store


def _run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    """Start every target at once; return the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(fn):
        def run():
            start.wait()
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - collected and asserted by callers
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    return errors


def _queued(store: Store, n: int, versions=("base", "base")) -> list[int]:
    pid = store.add_prompt("q", source="import")
    return [store.record_pair(pid, f"a{i}", f"b{i}", *versions, {}, i) for i in range(n)]


def test_8_threads_x_200_votes_all_stored(tmp_path):
    store = Store(tmp_path / "c.db")
    pairs = _queued(store, 200)

    def annotate(who: str) -> Callable[[], None]:
        def run():
            for i, p in enumerate(pairs):
                store.record_vote(p, who, "ab"[i % 2], decide_ms=i)
        return run

    errors = _run_threads([annotate(f"t{k}") for k in range(8)])
    assert errors == []  # no 'database is locked' escaped
    assert store.votes_count() == 1600
    assert Counter(r["annotator"] for r in store.query("select annotator from votes")) == {
        f"t{k}": 200 for k in range(8)}
    assert store.integrity_check() == "ok"


@pytest.mark.parametrize("overlap", [1, 2])
def test_take_pair_is_atomic_across_threads(tmp_path, overlap):
    store = Store(tmp_path / "t.db")
    ids = _queued(store, 40)
    got: list[tuple[str, int]] = []
    lock = threading.Lock()

    def taker(who: str) -> Callable[[], None]:
        def run():
            while (pair := store.take_pair(who, overlap=overlap)) is not None:
                with lock:
                    got.append((who, pair["id"]))
        return run

    assert _run_threads([taker(f"u{k}") for k in range(6)]) == []
    per_pair = Counter(pid for _, pid in got)
    assert per_pair == {i: overlap for i in ids}  # every pair exactly `overlap` times
    assert len(set(got)) == len(got)  # never twice to the same annotator
    assert {p["status"] for p in store.query("select status from pairs")} == {"served"}


def test_pool_annotators_and_trainer_at_once(tmp_path):
    """The real mix: a producer adds pairs, annotators take and vote, a trainer reads the
    training data and writes steps/state, all on one shared Store."""
    store = Store(tmp_path / "mix.db")
    pid = store.add_prompt("q", source="import")
    done = threading.Event()
    voted: list[int] = []

    def producer():
        for i in range(120):
            store.record_pair(pid, f"a{i}", f"b{i}", "base", "base", {"i": i}, i)
        done.set()

    def annotator(who: str) -> Callable[[], None]:
        def run():
            while True:
                pair = store.take_pair(who)
                if pair is None:
                    if not done.is_set():
                        continue
                    pair = store.take_pair(who)  # one last look, after the producer's end:
                    if pair is None:  # a pair taken here must be voted on, not dropped
                        return
                store.record_vote(pair["id"], who, "a")
                voted.append(pair["id"])
        return run

    def trainer():
        rid = store.start_round({"beta": 0.1})
        step = 0
        while not done.is_set():
            rows = store.training_pairs(max_vote_id=store.last_vote_id())
            step += 1
            store.record_step(rid, step, {"n": len(rows)})
            store.set_state("trained_through", store.last_vote_id())
        store.finish_round(rid, "accepted", counts={"steps": step})

    errors = _run_threads([producer, trainer, *[annotator(f"u{k}") for k in range(4)]])
    assert errors == []
    assert sorted(voted) == sorted(r["id"] for r in store.query("select id from pairs"))
    assert store.votes_count() == 120 and len(store.training_pairs()) == 120
    assert store.list_rounds()[0]["status"] == "accepted"


def test_two_store_objects_on_one_file(tmp_path):
    """Two Stores (like two processes) on one DB file: writers wait, none fails."""
    s1, s2 = Store(tmp_path / "two.db"), Store(tmp_path / "two.db")
    pairs = _queued(s1, 100)

    def votes(store: Store, who: str) -> Callable[[], None]:
        return lambda: [store.record_vote(p, who, "b") for p in pairs]

    assert _run_threads([votes(s1, "x"), votes(s2, "y"), votes(s1, "z")]) == []
    assert s2.votes_count() == 300


def test_in_memory_store_is_shared_safely(tmp_path):
    store = Store(None)
    pairs = _queued(store, 50)

    def annotate(who: str) -> Callable[[], None]:
        return lambda: [store.record_vote(p, who, "tie") for p in pairs]

    assert _run_threads([annotate(f"m{k}") for k in range(4)]) == []
    assert store.votes_count() == 200 and store.integrity_check() == "ok"
