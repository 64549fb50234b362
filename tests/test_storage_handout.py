"""Handing out pairs: take, skip, overlap, retire, stale assignments (storage.db.Store)."""

import pytest

from storage.db import Store
from storage.errors import BadInput, UnknownPair


@pytest.fixture
def store():
    return Store(None)


def _pair(store, prompt="Why is the sky blue?", a="Rayleigh scattering.", b="Magic.", **kw):
    pid = store.add_prompt(prompt, source=kw.pop("source", "user"))
    return store.record_pair(pid, a, b, kw.pop("va", "base"), kw.pop("vb", "base"), {}, 7, **kw)


def test_skip_returns_the_pair_to_others_never_to_the_skipper(store):
    import time

    p1, p2 = _pair(store, "q1"), _pair(store, "q2")
    t0 = time.time()
    assert store.take_pair("u1")["id"] == p1
    served = store.pair_served_at(p1, "u1")
    assert served is not None and t0 - 1 <= served <= time.time() + 1
    assert store.pair_served_at(p1, "u2") is None and store.pair_served_at(999, "u1") is None
    assert store.skip_pair(p1, "u1") is True
    assert store.pair_served_at(p1, "u1") is None  # no longer held
    assert store.ready_pair_count() == 1  # p2 only: a skipped pair is not "ready"
    assert store.take_pair("u1")["id"] == p2  # never p1 again for u1
    assert store.take_pair("u1") is None
    assert store.take_pair("u2")["id"] == p1  # ...but u2 may judge it
    store.record_vote(p1, "u2", "a")
    assert store.skip_pair(p1, "u2") is False  # voted: the skip changes nothing
    assert store.skip_pair(p2, "u2") is False  # never held by u2
    assert store.votes_count() == 1


def test_stale_assignments_go_back_to_the_queue(store):
    p1 = _pair(store, "q1")
    assert store.take_pair("u1")["id"] == p1 and store.ready_pair_count() == 0
    assert store.release_stale_assignments(3600) == 0  # fresh: kept
    assert store.release_stale_assignments(-1) == 1  # older than "-1 s ago": released
    assert store.ready_pair_count() == 1 and store.get_pair(p1)["status"] == "queued"
    assert store.take_pair("u2")["id"] == p1


def test_take_pair_overlap_and_retire(store):
    p1, p2 = _pair(store, "q1"), _pair(store, "q2", va="v1", vb="v1")
    assert store.ready_pair_count() == 2 and store.ready_pair_count({"v1"}) == 1
    assert store.take_pair("u1", overlap=2)["id"] == p1
    assert store.get_pair(p1)["status"] == "queued"  # assigned once of 2
    assert store.take_pair("u1", overlap=2)["id"] == p2  # never the same pair twice
    assert store.take_pair("u2", overlap=2)["id"] == p1  # overlap 2: a second annotator
    assert store.get_pair(p1)["status"] == "served"
    store.record_vote(p2, "u1", "a")
    assert store.take_pair("u3", overlap=2)["id"] == p2  # voted once: still open to others
    assert store.take_pair("u4", overlap=2) is None
    p3 = _pair(store, "q3")
    p4 = _pair(store, "q4", va="v1", vb="base", arena=True)
    assert store.take_pair("u1", versions={"v1"}) is None  # only pairs of these versions
    assert store.retire_pairs({"v1"}) == 1  # p3; p4 still shows v1 (arena)
    assert store.get_pair(p3)["status"] == "expired" and store.get_pair(p4)["status"] == "queued"
    assert store.take_pair("u5")["id"] == p4
    with pytest.raises(BadInput, match="annotator name is empty"):
        store.take_pair("")


def test_imported_pairs_are_never_handed_out(store, tmp_path):
    from storage.io import import_prefs

    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    import_prefs(store, f)
    assert store.take_pair("u", overlap=5) is None and store.ready_pair_count() == 0


def test_release_stale_assignments(store):
    p, q = _pair(store), _pair(store, "q2")
    assert store.take_pair("u1")["id"] == p
    assert store.take_pair("u1")["id"] == q
    store.record_vote(q, "u1", "a")
    assert store.ready_pair_count() == 0
    assert store.release_stale_assignments(max_age_s=3600) == 0  # not old yet
    assert store.release_stale_assignments(max_age_s=-1) == 1  # the voted one stays
    assert store.get_pair(p)["status"] == "queued" and store.get_pair(p)["served_at"] is None
    assert store.take_pair("u2")["id"] == p


def test_assign_pair(store):
    p = _pair(store)
    store.assign_pair(p, "me")
    assert store.get_pair(p)["status"] == "served" and store.take_pair("other") is None
    with pytest.raises(UnknownPair):
        store.assign_pair(123, "me")
