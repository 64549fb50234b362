import random
import sqlite3

import pytest

from storage.db import Store
from storage.errors import BadChoice, BadInput, UnknownPair


@pytest.fixture
def store():
    return Store(None)


def _pair(store, prompt="Why is the sky blue?", a="Rayleigh scattering.", b="Magic.", **kw):
    pid = store.add_prompt(prompt, source=kw.pop("source", "user"))
    return store.record_pair(pid, a, b, kw.pop("va", "base"), kw.pop("vb", "base"), {}, 7, **kw)


# --- connections --------------------------------------------------------------------
def test_open_creates_data_dir(tmp_path):
    s = Store.open(tmp_path / "data")
    assert (tmp_path / "data" / "livedpo.db").is_file()
    assert (tmp_path / "data" / "adapters").is_dir()
    assert s.counts()["prompts"] == 0


def test_nested_writes_are_one_transaction(store):
    with pytest.raises(RuntimeError), store.write():
        store.add_prompt("first")
        store.add_prompt("second")
        raise RuntimeError("boom")
    assert store.counts()["prompts"] == 0
    store.add_prompt("after")  # the store still works
    assert store.counts()["prompts"] == 1


# --- prompts -----------------------------------------------------------------------------------
def test_prompts_dedupe_and_validate(store):
    assert store.add_prompts(["a", "b", "a", "  b  "]) == 2
    with pytest.raises(BadInput, match="prompt #2 is empty"):
        store.add_prompts(["c", "   "])
    with pytest.raises(BadInput, match="prompt #2 has 5 characters; the limit is 4"):
        store.add_prompts(["d", "12345"], max_chars=4)
    assert store.counts()["prompts"] == 2  # all-or-nothing
    assert store.add_prompt(" a ") == store.add_prompt("a")  # duplicate -> existing id
    assert store.get_prompt(store.add_prompt("a"))["source"] == "import"
    with pytest.raises(BadInput, match="no prompt with id 99"):
        store.get_prompt(99)


def test_least_served_prompts(store):
    store.add_prompts(["p1", "p2", "p3"])
    user = store.add_prompt("typed by a user")  # one-off: never sampled again
    ids = {r["text"]: r["id"] for r in store.query("select id, text from prompts")}
    store.record_pair(ids["p1"], "a", "b", "base", "base", {}, 0)
    store.record_pair(ids["p1"], "a", "b", "base", "base", {}, 0)
    store.record_pair(ids["p2"], "a", "b", "base", "base", {}, 0)
    assert store.get_prompt(ids["p1"])["served_count"] == 2
    got = store.least_served_prompts(10, rng=random.Random(0))
    assert [r["text"] for r in got] == ["p3", "p2", "p1"] and user not in {r["id"] for r in got}
    assert [r["text"] for r in store.least_served_prompts(1, exclude_ids={ids["p3"]})] == ["p2"]
    store.add_prompts(["p4"])
    ties = {tuple(r["text"] for r in store.least_served_prompts(2, rng=random.Random(s)))
            for s in range(20)}
    assert ties == {("p3", "p4"), ("p4", "p3")}  # random tie-break


def test_record_pair_validates(store):
    pid = store.add_prompt("q")
    with pytest.raises(BadInput, match="no prompt with id 42"):
        store.record_pair(42, "a", "b", "base", "base", {}, 0)
    with pytest.raises(BadInput, match="pair status 'new' is not valid"):
        store.record_pair(pid, "a", "b", "base", "base", {}, 0, status="new")
    with pytest.raises(BadInput, match="gen_config cannot be stored as JSON"):
        store.record_pair(pid, "a", "b", "base", "base", {"x": object()}, 0)
    assert store.counts()["pairs"] == 0 and store.get_prompt(pid)["served_count"] == 0
    p = store.get_pair(store.record_pair(pid, "a", "b", "v1", "base", {"t": 0.9}, 3, arena=True))
    assert (p["prompt"], p["gen_config"], p["seed"], p["arena"], p["status"]) == (
        "q", {"t": 0.9}, 3, True, "queued")
    with pytest.raises(UnknownPair, match="no pair with id 77"):
        store.get_pair(77)


# --- votes and the training-data mapping ------------------------------------------------------------
def test_vote_mapping_for_every_choice(store):
    pa, pb, pt, px = (_pair(store, f"q{i}", f"A{i}", f"B{i}") for i in range(4))
    for pair, choice in ((pa, "a"), (pb, "b"), (pt, "tie"), (px, "both_bad")):
        store.record_vote(pair, "ann", choice)
    rows = store.training_pairs()
    assert [(r["prompt"], r["chosen"], r["rejected"], r["agreement"], r["n_votes"])
            for r in rows] == [("q0", "A0", "B0", 1.0, 1), ("q1", "B1", "A1", 1.0, 1)]
    assert [r["key"] for r in rows] == [f"{pa}:ab", f"{pb}:ab"]
    kto = [(r["pair_id"], r["completion"], r["label"]) for r in store.kto_rows()]
    assert kto == [(pa, "A0", True), (pa, "B0", False), (pb, "A1", False), (pb, "B1", True),
                   (pt, "A2", True), (pt, "B2", True), (px, "A3", False), (px, "B3", False)]


def test_better_answer_is_chosen_over_both(store):
    p = _pair(store)
    store.record_vote(p, "ann", "both_bad", better_answer="  Sunlight scatters off air.  ")
    q = _pair(store, "q2", "same", "other")
    store.record_vote(q, "ann", "b", better_answer="same")  # equal to A: no A row
    rows = store.training_pairs()
    assert [(r["key"], r["chosen"], r["rejected"]) for r in rows] == [
        (f"{p}:better:ann:a", "Sunlight scatters off air.", "Rayleigh scattering."),
        (f"{p}:better:ann:b", "Sunlight scatters off air.", "Magic."),
        (f"{q}:ab", "other", "same"),
        (f"{q}:better:ann:b", "same", "other")]
    assert (p, "Sunlight scatters off air.", True) in {
        (r["pair_id"], r["completion"], r["label"]) for r in store.kto_rows()}


def test_how_each_answer_ended_travels_to_every_training_row(store):
    """'' = cut at the token limit, a string = the terminator generated, None = unknown
    (older pairs; a written better answer)."""
    cut = _pair(store, "q0", "short.", "a long answer that ran out of", end_a="<eos>",
                end_b="")
    old = _pair(store, "q1", "x", "y")  # unknown, as before the column existed
    store.record_vote(cut, "ann", "a")
    store.record_vote(old, "ann", "b")
    rows = store.training_pairs()
    assert [(r["chosen"], r["chosen_end"], r["rejected_end"]) for r in rows] == [
        ("short.", "<eos>", ""), ("y", None, None)]
    kto = {r["completion"]: r["end"] for r in store.kto_rows()}
    assert kto == {"short.": "<eos>", "a long answer that ran out of": "", "x": None,
                   "y": None}
    store.record_vote(cut, "ann", "b", better_answer="Better.")
    better = [r for r in store.training_pairs() if r["kind"] == "better"]
    assert {(r["rejected"], r["chosen_end"], r["rejected_end"]) for r in better} == {
        ("short.", None, "<eos>"), ("a long answer that ran out of", None, "")}


def test_majority_and_agreement(store):
    p = _pair(store)
    for who, c in (("x", "a"), ("y", "a"), ("z", "b")):
        store.record_vote(p, who, c)
    (row,) = store.training_pairs()
    assert row["chosen"] == "Rayleigh scattering." and row["agreement"] == pytest.approx(2 / 3)
    assert row["n_votes"] == 3
    assert store.annotator_progress("z")["agreement"] == 0.0  # others' majority: a
    assert store.annotator_progress("y")["agreement"] is None  # others split a/b
    q = _pair(store, "q2")
    store.record_vote(q, "x", "a")
    store.record_vote(q, "y", "b")  # an even split gives no example
    assert [r["pair_id"] for r in store.training_pairs()] == [p]
    assert [r["pair_id"] for r in store.kto_rows()] == [p, p]
    prog = store.annotator_progress("x")
    assert (prog["agreement"], prog["agreement_n"]) == (0.0, 1)  # q: y said b
    assert (prog["votes_total"], prog["votes_today"]) == (2, 2)
    t = _pair(store, "q3")
    for who, c in (("x", "tie"), ("y", "tie"), ("z", "a")):
        store.record_vote(t, who, c)
    assert t not in {r["pair_id"] for r in store.training_pairs()}  # tie majority
    assert store.annotator_progress("nobody") == {
        "votes_today": 0, "votes_total": 0, "agreement": None, "agreement_n": 0}


def test_key_is_stable_when_the_majority_flips(store):
    p = _pair(store)
    store.record_vote(p, "x", "a")
    key = store.training_pairs()[0]["key"]
    store.record_vote(p, "x", "b")
    assert store.training_pairs()[0]["key"] == key


def test_cutoff(store):
    p1, p2, p3 = (_pair(store, f"q{i}") for i in range(3))
    v1 = store.record_vote(p1, "u", "a")
    store.record_vote(p3, "u", "a")
    store.record_vote(p2, "u", "b")  # p2 voted last
    assert [r["pair_id"] for r in store.training_pairs(max_vote_id=v1)] == [p1]
    assert [r["pair_id"] for r in store.training_pairs()] == [p1, p2, p3]  # pair order
    assert [r["pair_id"] for r in store.kto_rows(max_vote_id=v1)] == [p1, p1]
    assert store.last_vote_id() == 3 and store.usable_votes_since(v1) == 2
    store.record_vote(p1, "w", "tie")
    assert store.usable_votes_since(3) == 1  # ties count (they feed KTO)


def test_repeat_vote_updates_instead_of_duplicating(store):
    p = _pair(store)
    v1 = store.record_vote(p, "ann", "a", better_answer="x")
    before = store.one("select created from votes")["created"]
    v2 = store.record_vote(p, "ann", "b", decide_ms=1200)
    assert v1 == v2 and store.votes_count() == 1
    row = store.one("select * from votes")
    assert (row["choice"], row["better_answer"], row["decide_ms"], row["created"]) == (
        "b", None, 1200, before)
    assert store.training_pairs()[0]["chosen"] == "Magic."
    assert store.get_pair(p)["status"] == "voted"


def test_bad_votes_store_nothing(store):
    p = _pair(store)
    with pytest.raises(BadChoice, match="'c' is not valid: use one of a, b, tie, both_bad"):
        store.record_vote(p, "ann", "c")
    with pytest.raises(UnknownPair, match="no pair with id 999"):
        store.record_vote(999, "ann", "a")
    with pytest.raises(BadInput, match="annotator name is empty"):
        store.record_vote(p, " ", "a")
    with pytest.raises(BadInput, match="decide_ms=-5: must be a non-negative"):
        store.record_vote(p, "ann", "a", decide_ms=-5)
    with pytest.raises(BadInput, match="better answer has 20001 characters; the limit is"):
        store.record_vote(p, "ann", "a", better_answer="x" * 20_001)
    with pytest.raises(BadInput, match="pair id 'abc' is not a number"):
        store.record_vote("abc", "ann", "a")
    assert store.votes_count() == 0 and store.get_pair(p)["status"] == "queued"
    assert store.query("select * from pair_assignments") == []


# --- annotators, runs, adapters, state ----------------------------------------------------------------
def test_recent_votes_and_counts(store):
    p = _pair(store)
    store.record_vote(p, "ann", "tie", decide_ms=5)
    (r,) = store.recent_votes()
    assert (r["prompt"], r["response_a"], r["choice"], r["decide_ms"]) == (
        "Why is the sky blue?", "Rayleigh scattering.", "tie", 5)
    c = store.counts()
    assert {k: c[k] for k in ("prompts", "pairs", "pairs_ready", "votes", "annotators",
                              "adapters", "rounds")} == {
        "prompts": 1, "pairs": 1, "pairs_ready": 0, "votes": 1, "annotators": 1,
        "adapters": 0, "rounds": 0}


def test_adapters_serving_rounds_steps_and_ref_cache(store):
    assert store.serving_adapter() == "base" and store.next_adapter_version() == "v1"
    rid = store.start_round({"beta": 0.1}, trigger="manual")
    store.record_step(rid, 1, {"loss": 0.69})
    store.record_step(rid, 1, {"loss": 0.5})  # a repeated step replaces
    store.add_adapter("v1", "/x/v1", "base", rid, metrics={"acc": 0.7})
    with pytest.raises(BadInput, match="'v1' already exists: use 'v2'"):
        store.add_adapter("v1", "/x/v1", "base", rid)
    with pytest.raises(BadInput, match="expected 'v<number>'"):
        store.add_adapter("best", "/x", None, None)
    store.finish_round(rid, "accepted", counts={"train": 4}, adapter_version="v1")
    store.set_serving_adapter("v1")
    assert store.serving_adapter() == "v1" and store.next_adapter_version() == "v2"
    with pytest.raises(BadInput, match="'v9' cannot serve: it is unknown. Use 'base' or one "
                                       "of: v1"):
        store.set_serving_adapter("v9")
    store.add_adapter("v2", "/x/v2", "v1", None, status="rejected")
    with pytest.raises(BadInput, match="'v2' cannot serve: it is rejected"):
        store.set_serving_adapter("v2")
    store.set_adapter_status("v2", "ready")
    store.set_serving_adapter("v2")
    with pytest.raises(BadInput, match="no adapter version 'v7'"):
        store.set_adapter_status("v7", "failed")
    assert [a["version"] for a in store.list_adapters()] == ["v1", "v2"]
    assert store.get_adapter("v1")["metrics"] == {"acc": 0.7} and store.get_adapter("v5") is None
    r = store.get_round(rid)
    assert (r["counts"], r["config"], r["trigger"], r["status"]) == (
        {"train": 4}, {"beta": 0.1}, "manual", "accepted")
    assert [s["metrics"] for s in store.train_steps(rid)] == [{"loss": 0.5}]
    with pytest.raises(BadInput, match="final round status 'running' is not valid"):
        store.finish_round(rid, "running")
    store.start_round({})
    saved = store.start_round({})  # stopped after saving its adapter, before serving it
    store.add_adapter("v3", "/tmp/v3", parent_version="v2", round_id=saved, status="saved")
    assert store.fail_interrupted_rounds() == 2
    assert store.list_rounds()[0]["error"] == "interrupted (process stopped)"
    assert store.get_adapter("v3")["status"] == "failed"  # never offered for rollback
    assert len(store.train_steps()) == 1 and store.get_round(999) is None


def test_ref_logp_cache(store):
    p, q = _pair(store), _pair(store, "q2")
    store.put_ref_logps("base", [(p, "h1", -3.5, 4), (q, "h1", -1.0, 2)])
    store.put_ref_logps("base", [(p, "h1", -3.0, 4)])  # replaces
    assert store.get_ref_logps("base", [(p, "h1"), (p, "h2")]) == {(p, "h1"): (-3.0, 4)}
    assert store.get_ref_logps("v1", [(p, "h1")]) == {}
    assert len(store.get_ref_logps("base", [(q, "h1"), (p, "h1")])) == 2


def test_state(store):
    assert store.get_state("ui", {"x": 1}) == {"x": 1}
    store.set_state("ui", {"theme": "dark", "n": [1, 2]})
    store.set_state("ui", {"theme": "light"})
    assert store.get_state("ui") == {"theme": "light"}
    with pytest.raises(BadInput, match="state 'bad' cannot be stored as JSON"):
        store.set_state("bad", {1, 2})


def test_arena_results(store):
    p = _pair(store, va="v1", vb="base", arena=True)
    q = _pair(store, "q2", va="base", vb="v1", arena=True)
    r = _pair(store, "q3", va="base", vb="v1", arena=True)
    s = _pair(store, "q4", va="v2", vb="v1", arena=True)
    _pair(store, "q5", va="v1", vb="base")  # not an arena pair
    store.record_vote(p, "u", "a")  # v1 wins
    store.record_vote(q, "u", "tie")
    store.record_vote(r, "u", "a")  # base wins
    store.record_vote(r, "w", "both_bad")
    store.record_vote(s, "u", "b")  # v2 loses to v1
    assert store.arena_results() == [
        {"version": "v1", "opponent": "base", "wins": 1, "losses": 1, "ties": 1,
         "both_bad": 1, "n": 4},
        {"version": "v2", "opponent": "v1", "wins": 0, "losses": 1, "ties": 0,
         "both_bad": 0, "n": 1}]


def test_foreign_keys_are_enforced(store):
    with pytest.raises(sqlite3.IntegrityError), store.write() as db:
        db.execute("insert into votes (pair_id, annotator, choice) values (5, 'a', 'a')")


def test_pairs_keep_sampled_token_ids_and_refuse_bad_ones(store):
    pid = store.add_prompt("Why?", source="user")
    p = store.record_pair(pid, "a", "b", "base", "base", {}, 0, prompt_ids=[2, 5],
                          ids_a=[7, 8, 1], ids_b=None)
    store.record_vote(p, "ann", "a")
    (row,) = store.training_pairs()
    assert (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == ((2, 5), (7, 8, 1),
                                                                            None)
    for bad in ([1, -2], ["x"], "12", [True]):
        with pytest.raises(BadInput, match="ids_a must be a list of token ids"):
            store.record_pair(pid, "a", "b", "base", "base", {}, 0, ids_a=bad)


def test_round_last_vote_is_what_the_round_read(store):
    assert store.round_last_vote(99) is None  # no such round
    rid = store.start_round({"lr": 1e-4})
    assert store.round_last_vote(rid) is None  # stopped before it read its votes
    store.finish_round(rid, "accepted", counts={"max_vote_id": 7, "train": 3})
    assert store.round_last_vote(rid) == 7
