"""Answer health: the sample-based acceptance check (trainer/training/health.py) and its wiring."""

import dataclasses
import time

import pytest
import torch

from tests.svc_fixtures import vote_all, voted_service
from trainer.config import SamplingConfig, TrainConfig
from trainer.model.generate import Sample, Sampler, _length
from trainer.model.policy import BASE, TRAIN
from trainer.training import health, rounds


def test_measure_counts_finished_unfinished_and_empty():
    h = health.measure([Sample("Paris", 2), Sample("", 1), Sample("and so on", 96, False),
                        Sample("Rome", 2)])
    assert (h.healthy, h.unfinished, h.empty, h.n) == (0.5, 0.25, 0.25, 4)
    assert h.mean_chars == pytest.approx((5 + 0 + 9 + 4) / 4)
    with pytest.raises(ValueError, match="at least one sample"):
        health.measure([])


def test_health_prompts_put_held_out_first_and_cycle():
    assert health.health_prompts(["h1", "h2"], ["t1", "h1", "t2"], 4) == ["h1", "h2", "t1", "t2"]
    assert health.health_prompts(["h1"], ["t1"], 5) == ["h1", "t1", "h1", "t1", "h1"]
    assert health.health_prompts([], [], 3) == [] and health.health_prompts(["h"], [], 0) == []
    # Few decisive votes: recently voted prompts (ties too) fill in before any repeats.
    assert health.health_prompts(["h1"], ["t1"], 4, ["r1", "t1", "r2"]) == [
        "h1", "t1", "r1", "r2"]


def test_each_batch_takes_new_prompts_while_there_are_some():
    prompts = [f"p{i}" for i in range(7)]
    assert health.batch_prompts(prompts, 1, 3) == ["p0", "p1", "p2"]
    assert health.batch_prompts(prompts, 2, 3) == ["p3", "p4", "p5"]
    assert health.batch_prompts(prompts, 3, 3) == ["p6", "p0", "p1"]  # then they repeat
    assert health.batch_prompts([], 1, 3) == []


@pytest.mark.parametrize(("worse_by", "batch", "tol", "verdict"), [
    (0.40, 1, 0.15, "reject"),  # clearly worse: one batch decides
    (-0.10, 1, 0.15, "pass"),   # clearly healthier
    (0.20, 1, 0.15, "more"),    # borderline: another batch
    (0.30, 2, 0.15, "reject"),
    (0.00, 2, 0.15, "pass"),
    (0.10, 2, 0.15, "more"),
    (0.15, 3, 0.15, "pass"),    # the last batch: the tolerance itself
    (0.16, 3, 0.15, "reject"),
    (0.90, 1, 1.0, "pass"),     # tolerance 1 only measures
])
def test_step_decides_clear_batches_at_once_and_asks_for_more_when_borderline(
        worse_by, batch, tol, verdict):
    assert health.step(worse_by, batch, tol) == verdict


def test_trading_empty_answers_for_run_on_ones_is_caught():
    """Healthy 58% -> 50% (within the tolerance) but cut at the token limit 8% -> 50%."""
    serving = health.AnswerHealth(7 / 12, 1 / 12, 4 / 12, 48.5, 12)
    draft = health.AnswerHealth(6 / 12, 6 / 12, 0.0, 124.6, 12)
    assert health.drop(serving, draft) == pytest.approx(5 / 12)
    assert health.step(health.drop(serving, draft), 1, 0.15) == "reject"


def test_a_draft_that_answers_empty_is_caught_even_when_more_answers_end():
    """Keyword run 19's round 2 passed this way: 75% ended (base 50%), 21% empty."""
    base = health.AnswerHealth(12 / 24, 12 / 24, 0.0, 246.2, 24)
    draft = health.AnswerHealth(18 / 24, 1 / 24, 5 / 24, 74.8, 24)
    assert health.drop(base, draft) == pytest.approx(5 / 24)
    assert health.step(health.drop(base, draft), 3, 0.15) == "reject"
    assert health.drop(base, dataclasses.replace(draft, empty=2 / 24)) < 0.15


def test_length_tells_a_stop_from_running_out():
    eos, pad = [1], 0
    assert _length(torch.tensor([5, 6, 1, 0]), eos, pad) == (3, True)   # EOS
    assert _length(torch.tensor([5, 6, 7, 0]), eos, pad) == (3, True)   # stop string, padded
    assert _length(torch.tensor([5, 6, 7, 8]), eos, pad) == (4, False)  # max_new_tokens
    assert _length(torch.tensor([5, 1, 1, 1]), eos, 1) == (2, True)     # pad is EOS


def test_every_unfinished_sample_used_its_whole_budget(tiny_policy):
    s = Sampler(tiny_policy, SamplingConfig(max_new_tokens=5, empty_retries=0))
    out = s.sample(["hello", "world"] * 8, BASE, seed=2)
    assert all(x.finished or x.n_tokens == 5 for x in out)
    assert any(not x.finished for x in out)  # a random model rarely stops within 5 tokens


def _rambling_draft(svc, monkeypatch):
    """The real sampler, except that the draft's answers all run to max_new_tokens: what a
    draft that learned to dodge its stop string writes. Records
    (version, prompts) of each call."""
    real, budget = svc.sampler.sample, svc.sampler.cfg.max_new_tokens
    asked = []

    def sample(prompts, version, seed, empty_retries=None):
        asked.append((version, list(prompts)))
        out = real(prompts, version, seed, empty_retries)
        if version != TRAIN:
            return [Sample(x.text or "ok", x.n_tokens, True) for x in out]
        return [Sample(x.text + " and so on", budget, False) for x in out]

    monkeypatch.setattr(svc.sampler, "sample", sample)
    return asked


def test_a_draft_whose_answers_stop_ending_is_rejected(tmp_path, tiny_model_dir, monkeypatch):
    svc = voted_service(tmp_path, tiny_model_dir)
    asked = _rambling_draft(svc, monkeypatch)
    out = svc.trainer.run_one("test")
    assert out.status == "rejected", out
    assert "answers stopped ending" in out.error and "0% of 12 draft answers" in out.error
    assert "100% for base" in out.error and "serving stays base" in out.error
    assert "cut at max tokens 0% -> 100%" in out.error
    assert [v for v, _ in asked] == [BASE, TRAIN]  # serving and draft, once each
    voted = {p["prompt"] for p in svc.store.training_pairs(max_vote_id=10**9)}
    assert asked[0][1] == asked[1][1] and set(asked[0][1]) <= voted  # users' texts, no
    assert not any(p.startswith("Question:") for p in asked[0][1])  # template applied twice
    assert svc.policy.serving == BASE and svc.store.list_adapters() == []
    row = svc.store.list_rounds(limit=1)[0]
    assert row["status"] == "rejected"
    assert row["metrics"]["health_after"]["unfinished"] == 1.0
    assert row["metrics"]["health_before"]["healthy"] == 1.0


def test_a_draft_that_answers_half_its_prompts_with_nothing_is_rejected(
        tmp_path, tiny_model_dir, monkeypatch):
    """Every answer the draft writes ends (healthier than serving's by that count), but
    half are empty: the round is rejected, and the message says so."""
    svc = voted_service(tmp_path, tiny_model_dir)
    real = svc.sampler.sample

    def sample(prompts, version, seed, empty_retries=None):
        out = real(prompts, version, seed, empty_retries)
        if version != TRAIN:
            return [Sample(x.text or "ok", x.n_tokens, x.finished) for x in out]
        return [Sample("" if i % 2 else "fine.", 0 if i % 2 else 2, True)
                for i, _ in enumerate(out)]

    monkeypatch.setattr(svc.sampler, "sample", sample)
    out = svc.trainer.run_one("test")
    assert out.status == "rejected", out
    assert out.error.startswith("answers came out empty") and "empty 0% -> 50%" in out.error
    assert svc.policy.serving == BASE


def test_a_stop_during_the_check_leaves_the_round_to_the_next_start(tmp_path, tiny_model_dir):
    """The service stops while the draft is checked: the round is neither accepted nor
    failed now, its votes are not marked trained, and the next start marks it
    interrupted, as after a kill."""
    from trainer.model.decode import SamplingAborted
    from trainer.training.trainloop import TRAINED_THROUGH

    svc = voted_service(tmp_path, tiny_model_dir)
    svc.sampler.stopping.set()
    with pytest.raises(SamplingAborted):
        svc.trainer.run_one("test")
    assert svc.store.list_rounds(limit=1)[0]["status"] == "running"
    assert int(svc.store.get_state(TRAINED_THROUGH, 0)) == 0
    assert svc.store.fail_interrupted_rounds() == 1 and svc.policy.serving == BASE


def test_a_slow_drift_away_from_base_is_rejected(tmp_path, tiny_model_dir, monkeypatch):
    """Each round may lose up to the tolerance against serving, but not against base:
    base 100% ended -> v1 92% (accepted) -> draft 83%, within 0.15 of v1, 17% below base.
    Both are borderline, so each takes all three batches."""
    svc = voted_service(tmp_path, tiny_model_dir)
    real, budget = svc.sampler.sample, svc.sampler.cfg.max_new_tokens
    ended = {BASE: 1.0, TRAIN: 0.9}  # the first draft becomes v1
    asked = []

    def sample(prompts, version, seed, empty_retries=None):
        asked.append(version)
        out = real(prompts, version, seed, empty_retries)
        k = round(ended.get(version, 0.0) * len(out))
        return ([Sample(x.text or "ok", x.n_tokens, True) for x in out[:k]]
                + [Sample(x.text + " and so on", budget, False) for x in out[k:]])

    monkeypatch.setattr(svc.sampler, "sample", sample)
    first = svc.trainer.run_one("test")
    assert first.status == "accepted" and first.version == "v1", first.error
    assert first.metrics["health_base"] == first.metrics["health_before"]  # base is serving
    ended.update({"v1": 0.9, TRAIN: 0.8})
    svc.pool.fill_once(8)
    vote_all(svc)
    asked.clear()
    second = svc.trainer.run_one("test")
    assert second.status == "rejected", second.error
    assert "83% of 36 draft answers ended" in second.error and "vs 100% for base" in second.error
    assert "(92% for v1: each round may lose up to the tolerance" in second.error
    assert "serving stays v1" in second.error and svc.policy.serving == "v1"
    assert asked == ["v1", TRAIN, BASE] * 3 and second.metrics["health_batches"] == 3
    assert second.metrics["health_base"]["healthy"] == 1.0


def test_health_tolerance_one_turns_the_check_off(tmp_path, tiny_model_dir, monkeypatch):
    svc = voted_service(tmp_path, tiny_model_dir, "--health-tolerance", "1")
    _rambling_draft(svc, monkeypatch)
    out = svc.trainer.run_one("test")
    assert out.status == "accepted", out.error
    assert out.metrics["health_after"]["healthy"] == 0.0


def test_health_samples_zero_skips_sampling(tmp_path, tiny_model_dir, monkeypatch):
    svc = voted_service(tmp_path, tiny_model_dir, "--health-samples", "0")
    asked = _rambling_draft(svc, monkeypatch)
    out = svc.trainer.run_one("test")
    assert out.status == "accepted" and asked == [] and "health_after" not in out.metrics


def test_real_round_records_both_versions_health(tmp_path, tiny_model_dir):
    svc = voted_service(tmp_path, tiny_model_dir, "--health-samples", "6")
    out = svc.trainer.run_one("test")
    assert out.status == "accepted", out.error
    before, after = out.metrics["health_before"], out.metrics["health_after"]
    batches = out.metrics["health_batches"]
    assert before["n"] == after["n"] == 6 * batches and out.metrics["health_seconds"] > 0
    # What was recorded for serving (base) is base's health on those prompts and seed.
    rows = svc.store.training_pairs(max_vote_id=10**9)
    train, held = rounds.split(rounds.paired_examples(rows, svc.sampler.format,
                                                      svc.sampler.scored), 0.2)
    n = 6 * health.MAX_BATCHES  # enough prompts for every batch to take new ones
    prompts = health.health_prompts([e.question for e in held],
                                    [e.question for e in train], n,
                                    svc.store.recent_voted_prompts(n))
    again = health.measure([s for b in range(batches) for s in svc.sampler.sample(
        health.batch_prompts(prompts, b + 1, 6), BASE, out.round_id + 7919 * b,
        empty_retries=0)])
    assert before == dataclasses.asdict(again)


def test_serving_changed_during_the_round_is_not_served(tmp_path, tiny_model_dir, monkeypatch):
    svc = voted_service(tmp_path, tiny_model_dir)
    real = rounds.train_draft

    def train_then_rollback(policy, *a, **k):
        fit = real(policy, *a, **k)
        policy.serving = "v9"  # as if an admin rolled back while the round trained
        return fit

    monkeypatch.setattr(rounds, "train_draft", train_then_rollback)
    out = svc.trainer.run_one("test")
    assert out.status == "rejected" and "serving changed from base to v9" in out.error
    assert svc.store.list_adapters() == []


def test_a_rollback_after_the_check_is_not_overridden_by_the_hot_swap(
        tmp_path, tiny_model_dir, monkeypatch):
    """An admin rolls back v1 -> base after the draft's last check batch, before its swap:
    base keeps serving (model and database agree) and the draft is recorded as rejected."""
    svc = voted_service(tmp_path, tiny_model_dir, "--health-tolerance", "1")
    assert svc.trainer.run_one("test").version == "v1"
    svc.pool.fill_once(8)
    vote_all(svc)
    real = health.draft_problem

    def check_then_rollback(*a, **k):
        reason = real(*a, **k)
        svc.rollback("base")
        return reason

    monkeypatch.setattr(health, "draft_problem", check_then_rollback)
    out = svc.trainer.run_one("test")
    assert out.status == "rejected" and "serving changed from v1 to base" in out.error
    assert svc.policy.serving == BASE and svc.store.serving_adapter() == BASE
    assert {a["version"]: a["status"] for a in svc.store.list_adapters()} == {
        "v1": "ready", "v2": "rejected"}
    assert svc.store.get_round(out.round_id)["status"] == "rejected"


@pytest.mark.parametrize(("flag", "value", "msg"), [
    ("health_samples", -1, "health_samples=-1: must be in 0..64"),
    ("health_samples", 65, "health_samples=65: must be in 0..64 (0 = off)"),
    ("health_tolerance", 1.5, "health_tolerance=1.5: must be in [0, 1]"),
])
def test_bad_health_settings_are_named(flag, value, msg):
    assert any(msg in p for p in TrainConfig(**{flag: value}).problems())


def test_the_pool_gets_the_model_between_the_checks_batches(tmp_path, tiny_model_dir,
                                                            monkeypatch):
    """Generation goes first: a pool batch that asks for the model while the draft is
    checked runs before the check's next version's batch, not after the whole check."""
    import threading

    svc = voted_service(tmp_path, tiny_model_dir)
    real, order, threads = svc.sampler.sample, [], []

    def pool_batch():
        with svc.policy.lock.hold(priority=True):
            order.append("pool")

    def sample(prompts, version, seed, empty_retries=None):
        if not threads:  # the first version's batch: a pool batch now queues for the lock
            threads.append(threading.Thread(target=pool_batch))
            threads[0].start()
            deadline = time.monotonic() + 5
            while not svc.policy.lock.high_priority_waiting and time.monotonic() < deadline:
                time.sleep(0.01)
        order.append(version)
        return real(prompts, version, seed, empty_retries)

    monkeypatch.setattr(svc.sampler, "sample", sample)
    out = svc.trainer.run_one("test")
    threads[0].join(5)
    assert "health_after" in out.metrics, out.error
    assert order[:3] == [BASE, "pool", TRAIN], order
