import pytest

from storage.db import Store
from storage.errors import BadChoice, BadInput, UnknownPair
from storage.schema import MIGRATIONS, applied_versions


@pytest.fixture
def store():
    return Store(None)


def _pair(store, prompt="Why is the sky blue?", a="Rayleigh scattering.", b="Magic.", **kw):
    pid = store.add_prompt(prompt)
    return store.record_pair(pid, a, b, kw.pop("va", "base"), kw.pop("vb", "base"), {}, 7, **kw)


def test_migrations_are_idempotent(tmp_path):
    s1 = Store(tmp_path / "x.db")
    schema = s1.query("select sql from sqlite_master order by name")
    s2 = Store(tmp_path / "x.db")  # migrating again changes nothing
    assert s2.query("select sql from sqlite_master order by name") == schema
    assert applied_versions(s2._db()) == [v for v, _, _ in MIGRATIONS]
    assert s2.one("pragma journal_mode")["journal_mode"] == "wal"
    assert s2.one("pragma foreign_keys")["foreign_keys"] == 1


def test_prompts_dedupe_and_validate(store):
    assert store.add_prompts(["a", "b", "a", "  b  "]) == 2
    with pytest.raises(BadInput, match="prompt #2 is empty"):
        store.add_prompts(["c", "   "])
    with pytest.raises(BadInput, match="5 characters; the limit is 4"):
        store.add_prompts(["d", "12345"], max_chars=4)
    assert store.counts()["prompts"] == 2  # all-or-nothing


def test_vote_mapping_for_every_choice(store):
    pa, pb, pt, px = (_pair(store, f"q{i}", f"A{i}", f"B{i}") for i in range(4))
    for pair, choice in ((pa, "a"), (pb, "b"), (pt, "tie"), (px, "both_bad")):
        store.record_vote(pair, "ann", choice)
    dpo = {(r["prompt"], r["chosen"], r["rejected"]) for r in store.training_pairs()}
    assert dpo == {("q0", "A0", "B0"), ("q1", "B1", "A1")}  # no tie / both-bad examples
    kto = {(r["completion"], r["label"]) for r in store.kto_rows()}
    assert kto == {("A0", True), ("B0", False), ("B1", True), ("A1", False),
                   ("A2", True), ("B2", True), ("A3", False), ("B3", False)}


def test_better_answer_is_chosen_over_both(store):
    p = _pair(store)
    store.record_vote(p, "ann", "both_bad", better_answer="Sunlight scatters off air.")
    rows = store.training_pairs()
    assert {(r["chosen"], r["rejected"]) for r in rows} == {
        ("Sunlight scatters off air.", "Rayleigh scattering."),
        ("Sunlight scatters off air.", "Magic.")}
    assert ("Sunlight scatters off air.", True) in {(r["completion"], r["label"])
                                                     for r in store.kto_rows()}


def test_majority_and_agreement(store):
    p = _pair(store)
    for who, c in (("x", "a"), ("y", "a"), ("z", "b")):
        store.record_vote(p, who, c)
    (row,) = store.training_pairs()
    assert row["chosen"] == "Rayleigh scattering." and row["agreement"] == pytest.approx(2 / 3)
    assert store.annotator_progress("z")["agreement"] == 0.0
    assert store.annotator_progress("x")["agreement"] == 0.5  # y agrees, z does not
    q = _pair(store, "q2")
    store.record_vote(q, "x", "a")
    store.record_vote(q, "y", "b")  # an even split gives no example
    assert [r["pair_id"] for r in store.training_pairs()] == [p]


def test_repeat_vote_updates_instead_of_duplicating(store):
    p = _pair(store)
    v1 = store.record_vote(p, "ann", "a")
    v2 = store.record_vote(p, "ann", "b", decide_ms=1200)
    assert v1 == v2 and store.votes_count() == 1
    assert store.training_pairs()[0]["chosen"] == "Magic."


def test_bad_votes_store_nothing(store):
    p = _pair(store)
    with pytest.raises(BadChoice, match="'c' is not valid: use one of a, b, tie, both_bad"):
        store.record_vote(p, "ann", "c")
    with pytest.raises(UnknownPair, match="no pair with id 999"):
        store.record_vote(999, "ann", "a")
    with pytest.raises(BadInput, match="annotator name is empty"):
        store.record_vote(p, " ", "a")
    with pytest.raises(BadInput, match="decide_ms"):
        store.record_vote(p, "ann", "a", decide_ms=-5)
    assert store.votes_count() == 0 and store.get_pair(p)["status"] == "queued"


def test_take_pair_overlap_and_retire(store):
    p1, p2 = _pair(store, "q1"), _pair(store, "q2", va="v1", vb="v1")
    assert store.ready_pair_count() == 2
    assert store.take_pair("u1", overlap=2)["id"] == p1
    assert store.take_pair("u1", overlap=2)["id"] == p2  # never the same pair twice
    assert store.take_pair("u2", overlap=2)["id"] == p1  # overlap 2: a second annotator
    assert store.take_pair("u3", overlap=2)["id"] == p2
    assert store.take_pair("u4", overlap=2) is None
    p3 = _pair(store, "q3")
    assert store.take_pair("u1", versions={"v1"}) is None  # only current-version pairs
    assert store.retire_pairs({"v1"}) == 1 and store.get_pair(p3)["status"] == "expired"


def test_release_stale_assignments(store):
    p = _pair(store)
    store.take_pair("u1")
    assert store.ready_pair_count() == 0
    assert store.release_stale_assignments(max_age_s=-1) == 1
    assert store.take_pair("u2")["id"] == p


def test_adapters_serving_rounds_steps_and_ref_cache(store):
    assert store.serving_adapter() == "base" and store.next_adapter_version() == "v1"
    rid = store.start_round({"beta": 0.1})
    store.record_step(rid, 1, {"loss": 0.69})
    store.add_adapter("v1", "/x/v1", "base", rid, metrics={"acc": 0.7})
    store.finish_round(rid, "accepted", counts={"train": 4}, adapter_version="v1")
    store.set_serving_adapter("v1")
    assert store.serving_adapter() == "v1" and store.next_adapter_version() == "v2"
    with pytest.raises(BadInput, match="'v9' cannot serve: it is unknown"):
        store.set_serving_adapter("v9")
    assert store.get_round(rid)["counts"] == {"train": 4}
    assert store.train_steps(rid)[0]["metrics"] == {"loss": 0.69}
    store.start_round({})
    assert store.fail_interrupted_rounds() == 1
    assert store.list_rounds()[0]["error"] == "interrupted (process stopped)"
    p = _pair(store)
    store.put_ref_logps("base", [(p, "h1", -3.5, 4)])
    assert store.get_ref_logps("base", [(p, "h1"), (p, "h2")]) == {(p, "h1"): (-3.5, 4)}
    assert store.get_ref_logps("v1", [(p, "h1")]) == {}


def test_arena_results(store):
    p = _pair(store, va="v1", vb="base", arena=True)
    q = _pair(store, "q2", va="base", vb="v1", arena=True)
    store.record_vote(p, "u", "a")  # v1 wins
    store.record_vote(q, "u", "tie")
    (row,) = store.arena_results()
    assert row == {"version": "v1", "opponent": "base", "wins": 1, "losses": 0, "ties": 1,
                   "both_bad": 0, "n": 2}
