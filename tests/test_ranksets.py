"""Rank-of-N mode on the tiny model: the pool samples sets in one batched decode, votes
rank them, and a DNO round trains on each vote's (best, worst) pair against the
previous iterate (trainer/ranksets.py, trainer/pool.py, trainer/training/rounds.py)."""

from __future__ import annotations

import pytest

from tests.svc_fixtures import tiny_service
from trainer.model.generate import Sample
from trainer.ranksets import distinct, sample_sets
from trainer.training.data import method_rows
from trainer.training.rounds import reference_version


def _rank_all(svc, annotator: str = "alice") -> int:
    """Vote on every rank set: the shortest answer best, the longest worst."""
    n = 0
    while (item := svc.next_rank(annotator)) is not None:
        lengths = [len(a["text"]) for a in item["answers"]]
        best, worst = lengths.index(min(lengths)), lengths.index(max(lengths))
        if best == worst:
            svc.vote_rank(annotator, item["id"], "tie", decide_ms=5)
        else:
            svc.vote_rank(annotator, item["id"], "rank", best, worst, decide_ms=5)
        n += 1
    return n


@pytest.fixture
def rank_svc(tmp_path, tiny_model_dir):
    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--vote-mode", "rank",
                       "--rank-size", "4", "--method", "dno", "--arena-fraction", "0")
    svc.store.add_prompts([f"Question number {i}?" for i in range(8)])
    yield svc
    svc.stop()


def test_distinct_keeps_the_first_of_equal_answers():
    s = [Sample(t, 1) for t in ("x", "y", "x", "z", "w")]
    assert [x.text for x, _ in distinct([(x, "base") for x in s], 3)] == ["x", "y", "z"]


def test_sets_with_too_few_different_answers_are_resampled_then_skipped():
    class Same:
        calls = 0

        def sample(self, prompts, version, seed):
            Same.calls += 1
            return [Sample("same", 1) for _ in prompts]

    import random

    out = sample_sets(Same(), ["q"], [False], "base", None, 4, 0, random.Random(0))
    assert out == [None] and Same.calls == 3  # first try + 2 retries


def test_pool_makes_rank_sets_and_only_rank_mode_hands_them_out(rank_svc):
    ids = rank_svc.pool.fill_once(4)
    assert ids and rank_svc.store.ready_pair_count(kind="rank") == len(ids)
    assert rank_svc.next_pair("bob") is None  # A/B clients get no rank sets
    item = rank_svc.next_item("bob")
    answers = item["answers"]
    assert 3 <= len(answers) <= 4 and len({a["text"] for a in answers}) == len(answers)
    assert all(a["version"] == "base" and a["ids"] for a in answers)
    assert item["gen_config"]["rank_size"] == 4 and item["prompt_ids"]


def test_rank_votes_train_a_dno_round_on_best_worst_pairs(rank_svc):
    rank_svc.pool.fill_once(8)
    assert _rank_all(rank_svc) >= 6
    rows = rank_svc.store.training_pairs()
    dno = method_rows(rows, "dno")
    assert len(dno) < len(rows) and all(r["extreme"] for r in dno)
    assert len({r["pair_id"] for r in dno}) == len(dno)  # one pair per voted set
    assert reference_version(rank_svc.train_cfg, "v3") == "v3"  # the previous iterate
    outcome = rank_svc.trainer.run_one("test")
    assert outcome.status in ("accepted", "rejected"), outcome.error
    assert outcome.metrics["steps"] >= 1
    round_cfg = rank_svc.store.list_rounds(1)[0]["config"]
    assert round_cfg["method"] == "dno"


def test_vote_rank_reveals_versions_and_the_reward_prediction(rank_svc):
    rank_svc.pool.fill_once(2)
    item = rank_svc.next_rank("carol")
    reveal = rank_svc.vote_rank("carol", item["id"], "rank", 0, 1)
    assert reveal["versions"] == ["base"] * len(item["answers"])
    assert reveal["arena"] is False
    # serving is base = its own reference: no reward, no prediction
    assert reveal["predicted_best"] is None and reveal["prediction_correct"] is None


def test_ask_in_rank_mode_makes_a_rank_set_for_the_annotator(rank_svc):
    item = rank_svc.ask("dave", "What is a good name for a cat?")
    assert item["answers"] and len(item["answers"]) >= 3


def test_arena_sets_mix_serving_and_opponent_answers_half_each():
    import random

    class Numbered:
        def sample(self, prompts, version, seed):
            return [Sample(f"{version}-{seed}-{i}", 1) for i in range(len(prompts))]

    out = sample_sets(Numbered(), ["q1", "q2"], [True, False], "v2", "base", 4, 0,
                      random.Random(0))
    arena, regular = out
    assert sorted(v for _, v in arena) == ["base", "base", "v2", "v2"]
    assert [v for _, v in regular] == ["v2"] * 4
