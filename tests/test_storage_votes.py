"""storage/votes.py: what the votes say about prompts."""

from __future__ import annotations

import pytest

from storage.db import Store


@pytest.fixture
def store():
    return Store(None)


def _pair(store, prompt: str) -> int:
    pid = store.add_prompt(prompt, source="user")
    return store.record_pair(pid, "A.", "B.", "base", "base", {}, 7)


def test_recent_voted_prompts_are_newest_first_once_each(store):
    pairs = [_pair(store, prompt=q) for q in ("Q1", "Q2", "Q3")]
    again = _pair(store, prompt="Q1")  # the same prompt, another pair
    for p in (*pairs, again):
        store.record_vote(p, "ann", "tie")
    assert store.recent_voted_prompts(10) == ["Q1", "Q3", "Q2"]
    assert store.recent_voted_prompts(2) == ["Q1", "Q3"]
    assert store.recent_voted_prompts(10, max_vote_id=2) == ["Q2", "Q1"]


def test_undo_takes_back_the_last_vote_until_a_round_read_it(store):
    from storage.errors import BadInput

    first, second, shown = (_pair(store, prompt=q) for q in ("Q1", "Q2", "Q3"))
    for p in (first, second, shown):
        assert store.take_pair("ann")["id"] == p
    store.record_vote(first, "ann", "a")
    store.record_vote(second, "bob", "b")
    store.record_vote(second, "ann", "b")
    assert len(store.training_pairs()) == 2
    assert store.undo_last_vote("ann", trained_through=0, showing=shown) == second
    assert [r["choice"] for r in store.query("select choice from votes where annotator = "
                                             "'ann'")] == ["a"]  # only the last one went
    assert store.get_pair(second)["status"] == "voted"  # bob's vote is still on it
    held = {r["pair_id"] for r in store.query("select pair_id from pair_assignments where "
                                              "annotator = 'ann'")}
    assert held == {first, second}  # the shown pair went back to the queue
    assert store.get_pair(shown)["status"] == "queued"
    store.record_vote(second, "ann", "a")  # judged again
    with pytest.raises(BadInput, match=r"pair 2\) was already used by a training round"):
        store.undo_last_vote("ann", trained_through=10**6)
    assert store.undo_last_vote("ann", trained_through=0) == second
    assert store.undo_last_vote("ann", trained_through=0) == first
    assert store.get_pair(first)["status"] == "served"  # no vote left: held, unvoted
    with pytest.raises(BadInput, match="no vote of yours to undo"):
        store.undo_last_vote("ann", trained_through=0)


def test_a_share_of_pairs_goes_to_two_annotators(store):
    from storage.common import is_overlap_pair

    ids = [_pair(store, prompt=f"Q{i}") for i in range(200)]
    picked = {p for p in ids if is_overlap_pair(p, 0.15)}
    assert 15 <= len(picked) <= 50  # about 15% of 200
    got = {name: [] for name in ("ann", "bob")}
    for _ in range(200):
        for name in got:
            pair = store.take_pair(name, overlap_fraction=0.15)
            if pair:
                got[name].append(pair["id"])
    shared = set(got["ann"]) & set(got["bob"])
    assert shared == picked  # exactly the picked pairs were judged twice
    assert set(got["ann"]) | set(got["bob"]) == set(ids)  # the rest once, by either
    assert store.active_annotators(60) == 2
    with pytest.raises(Exception, match=r"overlap_fraction=2: must be in \[0, 1\]"):
        store.take_pair("ann", overlap_fraction=2)


def test_disagreements_wait_for_an_admin_whose_decision_is_the_label(store, tmp_path):
    import json

    from storage.errors import BadInput
    from storage.io import export, import_prefs

    split, clear, lone = (_pair(store, prompt=q) for q in ("Q1", "Q2", "Q3"))
    store.record_vote(split, "ann", "a")
    store.record_vote(split, "bob", "b")
    store.record_vote(split, "cyd", "a")  # a 2-1 majority for A
    store.record_vote(clear, "ann", "b")
    store.record_vote(clear, "bob", "b")
    store.record_vote(lone, "ann", "a")
    assert [d["pair_id"] for d in store.disagreements()] == [split]
    assert {v["annotator"]: v["choice"] for v in store.disagreements()[0]["votes"]} == {
        "ann": "a", "bob": "b", "cyd": "a"}
    by_pair = lambda rows: {r["pair_id"]: r["chosen"] for r in rows}  # noqa: E731
    assert by_pair(store.training_pairs(disagreement="drop")) == {clear: "B.", lone: "A."}
    assert by_pair(store.training_pairs(disagreement="majority"))[split] == "A."
    store.adjudicate(split, "b", "alice")
    assert store.disagreements() == []
    assert by_pair(store.training_pairs(disagreement="drop"))[split] == "B."  # the admin's
    row = next(r for r in store.training_pairs() if r["pair_id"] == split)
    assert row["agreement"] == pytest.approx(1 / 3)  # one vote of three agreed with it
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    export(store, "dpo", first)
    rows = [json.loads(x) for x in first.read_text().split("\n") if x]
    decided = next(r for r in rows if r["pair_id"] == split)
    assert decided["adjudicated_by"] == "alice" and decided["chosen"] == "B."
    assert decided["annotators"] == {"ann": "rejected", "bob": "chosen", "cyd": "rejected"}
    fresh = Store(None)
    import_prefs(fresh, first)
    export(fresh, "dpo", second)
    assert second.read_bytes() == first.read_bytes()
    with pytest.raises(BadInput, match="choice 'maybe' is not valid"):
        store.adjudicate(split, "maybe", "alice")
    with pytest.raises(BadInput, match="has no votes"):
        store.adjudicate(_pair(store, prompt="Q4"), "a", "alice")
