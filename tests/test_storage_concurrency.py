import threading

from storage.db import Store


def test_8_threads_x_200_votes_all_stored(tmp_path):
    store = Store(tmp_path / "c.db")
    pid = store.add_prompt("q")
    pairs = [store.record_pair(pid, f"a{i}", f"b{i}", "base", "base", {}, i)
             for i in range(200)]
    errors = []

    def annotate(who: str):
        try:
            for i, p in enumerate(pairs):
                store.record_vote(p, who, "ab"[i % 2], decide_ms=i)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=annotate, args=(f"t{k}",)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # no 'database is locked' escaped
    assert store.votes_count() == 1600
    assert store.integrity_check() == "ok"


def test_take_pair_is_atomic_across_threads(tmp_path):
    store = Store(tmp_path / "t.db")
    pid = store.add_prompt("q")
    for i in range(60):
        store.record_pair(pid, f"a{i}", f"b{i}", "base", "base", {}, i)
    got: list[int] = []
    lock = threading.Lock()

    def taker(who: str):
        while (pair := store.take_pair(who)) is not None:
            with lock:
                got.append(pair["id"])

    threads = [threading.Thread(target=taker, args=(f"u{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 61))  # every pair exactly once
