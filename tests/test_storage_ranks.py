"""Rank-of-N sets and votes: the pure ranking maths (storage/ranking.py) and the store
(storage/ranks.py): what a vote implies, what is refused, exports and round trips."""

from __future__ import annotations

import json

import pytest

from storage.db import Store
from storage.errors import BadChoice, BadInput
from storage.io import export, import_prefs
from storage.ranking import (
    answer_labels,
    check_tiers,
    implied_pairs,
    position,
    relation,
    tiers_of,
)
from storage.readers import read_jsonl


def _set(store: Store, texts=("w", "x", "y", "z"), versions=None, arena=False) -> int:
    pid = store.add_prompt("Why is the sky blue?")
    versions = versions or ["base"] * len(texts)
    return store.record_rank_set(
        pid, [{"text": t, "version": v, "end": "<eos>", "ids": [7, i]}
              for i, (t, v) in enumerate(zip(texts, versions))], {"rank_size": len(texts)}, 0,
        arena=arena, prompt_ids=[1, 2, 3])


# --- pure -----------------------------------------------------------------------------
def test_tiers_of_puts_the_middle_between_best_and_worst():
    assert tiers_of(2, 1, 4) == [[2], [0, 3], [1]]
    assert tiers_of(2, None, 4) == [[2], [0, 1, 3]]  # best only: the rest are equal
    assert tiers_of(None, 0, 3) == [[1, 2], [0]]


@pytest.mark.parametrize("best,worst,match", [
    (1, 1, "both answer 2"), (None, None, "mark the best or the worst"),
    (4, 0, "best=4: mark one of the 4 answers"), (True, 0, "best=True"),
    (0, -1, "worst=-1")])
def test_tiers_of_names_the_bad_mark(best, worst, match):
    with pytest.raises(BadInput, match=match):
        tiers_of(best, worst, 4)


def test_check_tiers_needs_every_answer_once():
    assert check_tiers([[1], [0, 2]], 3) == [[1], [0, 2]]
    for bad in ([[0], [0, 1, 2]], [[0], [1]], "x", [[]], [[True], [0, 2]]):
        with pytest.raises(BadInput):
            check_tiers(bad, 3)


def test_relation_and_position():
    tiers = [[2], [0, 3], [1]]
    assert [relation(tiers, 2, 1), relation(tiers, 1, 0), relation(tiers, 0, 3)] == [
        ">", "<", "="]
    assert relation(None, 0, 1) == "="
    assert position(tiers, 4) == [0.5, 1.0, 0.0, 0.5]
    assert position(None, 3) == [0.5, 0.5, 0.5]


def test_one_vote_implies_five_pairs_of_four_answers_extreme_first():
    rows = implied_pairs([[[2], [0, 3], [1]]], 4)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(2, 1), (0, 1), (2, 0), (2, 3),
                                                            (3, 1)]
    assert [r["extreme"] for r in rows] == [True, False, False, False, False]
    assert all(r["agreement"] == 1.0 for r in rows)


def test_best_only_vote_orders_best_over_the_rest():
    rows = implied_pairs([[[0], [1, 2, 3]]], 4)
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == [(0, 1), (0, 2), (0, 3)]
    assert sum(r["extreme"] for r in rows) == 1


def test_majority_over_annotators_and_ties_order_nothing():
    a, b = [[0], [1, 2], [3]], [[3], [1, 2], [0]]
    assert implied_pairs([a, b], 4) == []  # opposite rankings: every split is even
    rows = implied_pairs([a, a, b], 4)
    pair = next(r for r in rows if (r["chosen"], r["rejected"]) == (0, 3))
    assert pair["agreement"] == pytest.approx(2 / 3) and pair["extreme"]
    assert implied_pairs([None, None], 4) == []  # ties / both bad: no order


def test_answer_labels_for_kto():
    assert answer_labels([("rank", [[2], [0, 3], [1]])], 4) == [None, False, True, None]
    assert answer_labels([("tie", None)], 3) == [True, True, True]
    assert answer_labels([("both_bad", None)], 3) == [False, False, False]


# --- store ----------------------------------------------------------------------------
def test_rank_sets_and_pairs_are_handed_out_by_kind():
    s = Store(None)
    sid = _set(s)
    pid = s.record_pair(s.add_prompt("q2"), "a", "b", "base", "base", {}, 0)
    assert s.ready_pair_count(kind="rank") == 1 and s.ready_pair_count(kind="pair") == 1
    got = s.take_pair("u", kind="rank")
    assert got["id"] == sid and [a["text"] for a in got["answers"]] == ["w", "x", "y", "z"]
    assert got["answers"][3]["ids"] == (7, 3)
    assert s.take_pair("u", kind="rank") is None
    assert s.take_pair("u", kind="pair")["id"] == pid
    with pytest.raises(BadInput, match="kind 'trio'"):
        s.take_pair("v", kind="trio")


def test_a_rank_vote_becomes_implied_training_pairs_with_the_sampled_ids():
    s = Store(None)
    sid = _set(s)
    s.record_rank_vote(sid, "u", "rank", best=2, worst=1, decide_ms=900)
    rows = s.training_pairs()
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("y", "x"), ("w", "x"), ("y", "w"), ("y", "z"), ("z", "x")]
    first = rows[0]
    assert first["extreme"] and first["kind"] == "rank" and first["group"] == f"{sid}:rank"
    assert first["chosen_ids"] == (7, 2) and first["prompt_ids"] == (1, 2, 3)
    assert len({r["key"] for r in rows}) == 5
    vote = s.recent_votes()[0]
    assert (vote["choice"], json.loads(vote["ranking"])) == ("rank", [[2], [0, 3], [1]])
    kto = s.kto_rows()
    assert [(r["completion"], r["label"]) for r in kto] == [("x", False), ("y", True)]


def test_a_changed_rank_vote_replaces_the_old_one():
    s = Store(None)
    sid = _set(s)
    first = s.record_rank_vote(sid, "u", "rank", best=0, worst=3)
    assert s.record_rank_vote(sid, "u", "tie") == first
    assert s.training_pairs() == [] and s.votes_count() == 1


@pytest.mark.parametrize("kwargs,error,match", [
    ({"choice": "a"}, BadChoice, "not valid for a rank set"),
    ({"choice": "rank"}, BadInput, "mark the best or the worst"),
    ({"choice": "rank", "best": 5, "worst": 0}, BadInput, "best=5"),
    ({"choice": "tie", "best": 1}, BadInput, "ranks nothing"),
    ({"choice": "rank", "best": 0, "worst": 1, "decide_ms": -3}, BadInput, "decide_ms"),
])
def test_bad_rank_votes_store_nothing(kwargs, error, match):
    s = Store(None)
    sid = _set(s)
    with pytest.raises(error, match=match):
        s.record_rank_vote(sid, "u", **kwargs)
    assert s.votes_count() == 0


def test_pair_and_rank_votes_do_not_mix():
    s = Store(None)
    sid = _set(s)
    pid = s.record_pair(s.add_prompt("q2"), "a", "b", "base", "base", {}, 0)
    with pytest.raises(BadInput, match="is a rank set of 4 answers: vote on it with vote_rank"):
        s.record_vote(sid, "u", "a")
    with pytest.raises(BadInput, match="is an A/B pair, not a rank set"):
        s.record_rank_vote(pid, "u", "rank", best=0, worst=1)
    assert s.votes_count() == 0


def test_rank_set_needs_three_to_eight_answers():
    s = Store(None)
    with pytest.raises(BadInput, match="3..8 answers, got 2"):
        _set(s, texts=("a", "b"))


def test_arena_rank_sets_score_the_newer_version_per_comparison():
    s = Store(None)
    sid = _set(s, versions=["v1", "base", "v1", "base"], arena=True)
    s.record_rank_vote(sid, "u", "rank", best=0, worst=1)  # tiers [[0], [2, 3], [1]]
    board = s.arena_results()
    # v1 answers 0, 2 vs base answers 1, 3: 0>1 win, 0>3 win, 2>1 win, 2=3 tie
    assert board == [{"version": "v1", "opponent": "base", "wins": 3, "losses": 0,
                      "ties": 1, "both_bad": 0, "n": 4}]


def test_exports_write_the_implied_pairs_and_votes_round_trip(tmp_path):
    s = Store(None)
    sid = _set(s, texts=("w\u2028", "x", "y", "z"))
    s.record_rank_vote(sid, "u", "rank", best=2, worst=0)
    s.record_rank_vote(sid, "v", "rank", best=2, worst=None)
    s.record_rank_vote(sid, "w", "both_bad")
    assert export(s, "dpo", tmp_path / "d.jsonl") == len(s.training_pairs())
    rows = read_jsonl(tmp_path / "d.jsonl")
    (row,) = [r for r in rows if (r["chosen"], r["rejected"]) == ("y", "w\u2028")]
    assert row["prompt"] == "Why is the sky blue?" and row["pair_id"] == sid
    assert row["annotators"] == {"u": "chosen", "v": "chosen", "w": "both_bad"}
    assert (row["votes"], row["agreement"]) == (3, 0.6667)
    export(s, "votes", tmp_path / "v.csv")
    fresh = Store(None)
    assert import_prefs(fresh, tmp_path / "v.csv") == {"format": "votes", "pairs": 1,
                                                       "votes": 3}
    export(fresh, "votes", tmp_path / "v2.csv")
    assert (tmp_path / "v2.csv").read_bytes() == (tmp_path / "v.csv").read_bytes()
    assert fresh.training_pairs() and fresh.take_pair("w", kind="rank") is None  # imported


def test_votes_csv_import_names_a_bad_ranking(tmp_path):
    s = Store(None)
    sid = _set(s)
    s.record_rank_vote(sid, "u", "rank", best=2, worst=0)
    export(s, "votes", tmp_path / "v.csv")
    text = (tmp_path / "v.csv").read_text(encoding="utf-8")
    (tmp_path / "bad.csv").write_text(text.replace('[[2], [1, 3], [0]]', '[[2], [1], [0]]'),
                                      encoding="utf-8")
    fresh = Store(None)
    with pytest.raises(Exception, match="ranking .* must name each of the answers 0..3 once"):
        import_prefs(fresh, tmp_path / "bad.csv")
    assert fresh.votes_count() == 0
