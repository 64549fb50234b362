import math

import pytest
import torch

from storage.common import ids_of
from tests.svc_fixtures import tiny_service, vote_all, voted_service
from trainer.config import LOSS_TYPES, TrainConfig
from trainer.model.generate import PLAIN_STOPS
from trainer.model.logprobs import build_batch
from trainer.model.policy import BASE
from trainer.model.scoring import score, text_hash
from trainer.training import data, gate, rounds


def test_round_creates_v1_and_swap_changes_generation(tmp_path, tiny_model_dir):
    svc = voted_service(tmp_path, tiny_model_dir)
    before = [s.text for s in svc.sampler.sample(["hello there"] * 4, BASE, seed=5)]
    out = svc.trainer.run_one("test")
    assert out.status == "accepted" and out.version == "v1", out.error
    assert svc.policy.serving == "v1" and svc.store.serving_adapter() == "v1"
    after = [s.text for s in svc.sampler.sample(["hello there"] * 4, "v1", seed=5)]
    assert after != before
    row = svc.store.get_adapter("v1")
    assert row["parent_version"] == "base" and row["status"] == "ready"
    steps = svc.store.train_steps(out.round_id)
    assert steps and {"loss", "rewards/margins", "grad_norm", "tokens_per_s"} <= set(
        steps[0]["metrics"])
    meta = (tmp_path / "data" / "adapters" / "v1" / "metadata.json").read_text()
    assert '"parent_version": "base"' in meta and f'"loss": "{TrainConfig().loss}"' in meta
    assert all(math.isfinite(s["metrics"]["loss"]) for s in steps)


@pytest.mark.parametrize("loss", [x for x in LOSS_TYPES if x != TrainConfig().loss])
def test_every_loss_type_runs_a_round(tmp_path, tiny_model_dir, loss):
    svc = voted_service(tmp_path, tiny_model_dir, "--loss", loss, "--label-smoothing",
                       "0.1" if loss == "robust" else "0")
    out = svc.trainer.run_one("test")
    assert out.status in ("accepted", "rejected"), out.error
    assert svc.store.train_steps(out.round_id)


def test_nan_loss_keeps_serving_and_next_round_runs(tmp_path, tiny_model_dir, monkeypatch):
    svc = voted_service(tmp_path, tiny_model_dir)
    real = rounds.preference_loss

    def nan_loss(*a, **k):
        losses, c, r = real(*a, **k)
        return losses * float("nan"), c, r

    monkeypatch.setattr(rounds, "preference_loss", nan_loss)
    out = svc.trainer.run_one("test")
    assert out.status == "failed" and "non-finite loss" in out.error
    assert svc.policy.serving == BASE and svc.store.list_adapters() == []
    assert svc.store.get_round(out.round_id)["error"] == out.error
    assert svc.trainer.status()["last_error"] == out.error
    monkeypatch.setattr(rounds, "preference_loss", real)
    assert svc.trainer.run_one("test").status == "accepted"


def test_failing_adapter_write_keeps_serving(tmp_path, tiny_model_dir, monkeypatch):
    svc = voted_service(tmp_path, tiny_model_dir)

    def disk_full(out_dir, metadata):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(svc.policy, "save_train_adapter", disk_full)
    out = svc.trainer.run_one("test")
    assert out.status == "failed" and "No space left" in out.error
    assert svc.policy.serving == BASE and svc.store.list_adapters() == []
    assert [p.name for p in (tmp_path / "data" / "adapters").iterdir()] == []


def test_rejected_round_when_heldout_accuracy_drops(tmp_path, tiny_model_dir, monkeypatch):
    svc = voted_service(tmp_path, tiny_model_dir, "--accept-tolerance", "0.05")
    scores = iter([{"accuracy": 1.0, "n": 6, "margin": 0.1, "hits": [1.0] * 6},
                   {"accuracy": 1 / 6, "n": 6, "margin": -0.1, "hits": [1.0] + [0.0] * 5}])
    monkeypatch.setattr(rounds, "heldout_accuracy", lambda *a: next(scores))
    out = svc.trainer.run_one("test")
    assert out.status == "rejected" and out.version is None
    error = svc.store.get_round(out.round_id)["error"]
    assert "fell from 1.000 to 0.167 on 6 pairs: 5 got worse, 0 better (sign test p = 0.031" \
        in error
    assert svc.policy.serving == BASE


@pytest.mark.parametrize("before, after, tol, rejected", [
    ([1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], 0.05, False),  # one pair of six: p = 0.5
    ([1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], 0.05, False),  # two: p = 0.25, noise
    ([1] * 5 + [0], [0] * 6, 0.05, True),                   # five of five: p = 1/32
    ([1] * 5 + [0], [0] * 5 + [1], 0.05, False),            # 5 worse, 1 better: p = 7/64
    ([1] * 40 + [0] * 10, [1] * 32 + [0] * 18, 0.05, True),  # 8 of 8 worse: p = 1/256
    ([1] * 40 + [0] * 10, [1] * 32 + [0] * 18, 0.2, False),  # within the tolerance
    ([1] * 6, [0.5] * 6, 1.0, False),                        # gate opened
])
def test_acceptance_gate_rejects_only_a_significant_drop(before, after, tol, rejected):
    assert gate.compare(before, after, tol, alpha=0.05).got_worse is rejected


def test_sign_test_matches_hand_computed_values():
    assert gate.sign_test_p(0, 0) == 1.0
    assert gate.sign_test_p(1, 0) == 0.5
    assert gate.sign_test_p(5, 0) == 1 / 32
    assert gate.sign_test_p(5, 1) == 7 / 64  # (C(6,5) + C(6,6)) / 2^6
    assert gate.sign_test_p(0, 3) == 1.0
    with pytest.raises(ValueError, match="scorings of 2 and 3 pairs"):
        gate.compare([1, 0], [1, 0, 1], 0.05, 0.05)


def test_held_out_votes_accumulate_across_rounds(tmp_path, tiny_model_dir):
    """--window keeps the latest training pairs; the gate sees every held-out vote."""
    svc = voted_service(tmp_path, tiny_model_dir, "--window", "2", "--heldout-fraction", "0.3")
    fmt, frame = svc.sampler.format, svc.sampler.scored
    decode = lambda ids: svc.policy.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    train, held, counts = rounds.load_examples(svc.store, svc.train_cfg, fmt, frame, decode)
    every = svc.store.training_pairs()
    assert len(train) == 2 and counts["pairs"] == len(every) and len(held) > 2
    not_held = [r["key"] for r in every if not data.is_heldout(r["key"], 0.3)]
    assert [e.key for e in train] == not_held[-2:]  # the latest training pairs
    assert {e.key for e in held} == {r["key"] for r in every
                                     if data.is_heldout(r["key"], 0.3)}


def test_rollback_and_branching(tmp_path, tiny_model_dir):
    svc = voted_service(tmp_path, tiny_model_dir)
    assert svc.trainer.run_one("test").version == "v1"
    svc.pool.fill_once(8)
    vote_all(svc, "bob")
    assert svc.trainer.run_one("test").version == "v2"
    assert svc.store.get_adapter("v2")["parent_version"] == "v1"
    assert svc.rollback("v1") == "v1" and svc.policy.serving == "v1"
    assert svc.store.serving_adapter() == "v1"
    with pytest.raises(ValueError, match="Cannot roll back to 'v7'.*base.*v1, v2"):
        svc.rollback("v7")
    svc.pool.fill_once(4)
    vote_all(svc, "carol")
    out = svc.trainer.run_one("test")
    assert out.version == "v3" and svc.store.get_adapter("v3")["parent_version"] == "v1"
    svc.rollback("base")
    assert svc.policy.serving == BASE


def test_sdpo_reference_is_the_previous_version(tmp_path, tiny_model_dir):
    svc = voted_service(tmp_path, tiny_model_dir, "--reference", "previous")
    assert svc.trainer.run_one("test").version == "v1"  # first round: previous == base
    svc.pool.fill_once(8)
    vote_all(svc, "bob")
    out = svc.trainer.run_one("test")
    assert out.version == "v2"
    refs = svc.store.query("select distinct ref_version from ref_logps")
    assert {r["ref_version"] for r in refs} == {"base", "v1"}
    # the cached v1 log-probs are v1's, not base's
    row = svc.store.one("select pair_id, text_hash, logp from ref_logps where ref_version='v1'")
    base_row = svc.store.one("select logp from ref_logps where ref_version='base' and "
                             "pair_id=? and text_hash=?", [row["pair_id"], row["text_hash"]])
    assert base_row is None or base_row["logp"] != pytest.approx(row["logp"])


def test_reference_logps_are_cached_between_rounds(tmp_path, tiny_model_dir):
    svc = voted_service(tmp_path, tiny_model_dir)
    out1 = svc.trainer.run_one("test")
    svc.pool.fill_once(2)
    vote_all(svc, "bob")
    out2 = svc.trainer.run_one("test")
    c1 = svc.store.get_round(out1.round_id)["counts"]["ref_computed"]
    c2 = svc.store.get_round(out2.round_id)["counts"]["ref_computed"]
    assert c1 > 0 and c2 < c1  # only the new pairs' reference passes were computed


def test_qlora_4bit_round_on_cpu(tmp_path, tiny_model_dir):
    svc = voted_service(tmp_path, tiny_model_dir, "--quantize", "4bit")
    assert svc.policy.placement.quantize == "4bit"
    out = svc.trainer.run_one("test")
    assert out.status == "accepted", out.error
    assert svc.sampler.sample(["hi"], "v1", seed=0)[0].n_tokens >= 1


def test_too_few_votes_is_a_clear_failure(tmp_path, tiny_model_dir):
    svc = tiny_service(tmp_path / "data", tiny_model_dir)
    out = svc.trainer.run_one("test")
    assert out.status == "failed" and "collect more A/B votes" in out.error


def test_out_of_memory_message_suggests_smaller_micro_batch():
    msg = rounds._explain(torch.OutOfMemoryError("CUDA out of memory"))
    assert "--micro-batch" in msg


def test_reference_logps_are_of_the_tokens_that_were_sampled(tmp_path, tiny_model_dir):
    """Live pairs keep the token ids the model saw and sampled; rounds score exactly those:
    every cached reference log-prob is keyed by, and equal to, the sampled tokens'."""
    svc = voted_service(tmp_path, tiny_model_dir)
    assert svc.trainer.run_one("test").status == "accepted"
    rows = svc.store.query(
        "select r.text_hash, r.logp, r.n_tokens, p.prompt_ids, p.ids_a, p.ids_b, "
        "p.response_a, p.response_b from ref_logps r join pairs p on p.id = r.pair_id")
    assert rows
    tok = svc.policy.tokenizer
    for r in rows[:4]:
        prompt, a, b = (ids_of(r[k]) for k in ("prompt_ids", "ids_a", "ids_b"))
        sampled = {text_hash(prompt, a): a, text_hash(prompt, b): b}
        assert r["text_hash"] in sampled
        ids = sampled[r["text_hash"]]
        text = r["response_a"] if ids == a else r["response_b"]
        assert text in tok.decode(list(ids), skip_special_tokens=True)  # the stored text
        (logp,), (n,) = score(svc.policy, [prompt], [ids], BASE, svc.train_cfg.max_length)
        assert (logp, n) == (pytest.approx(r["logp"], abs=1e-4), r["n_tokens"])


def test_pairs_without_token_ids_are_scored_as_framed_text(tmp_path, tiny_model_dir):
    """Imported pairs (and pairs stored before the ids were kept) are scored as
    ' ' + answer + the end generation produced (plain template: usually '\\nQuestion:'),
    none for an answer cut at the token limit."""
    svc = voted_service(tmp_path, tiny_model_dir)
    with svc.store.write() as db:
        db.execute("update pairs set prompt_ids = null, ids_a = null, ids_b = null")
    assert svc.trainer.run_one("test").status == "accepted"
    rows = svc.store.query(
        "select r.text_hash, r.logp, r.n_tokens, p.response_a, p.response_b, p.end_a, "
        "p.end_b, t.text "
        "from ref_logps r join pairs p on p.id = r.pair_id join prompts t on t.id = p.prompt_id")
    assert rows
    s = svc.sampler
    for r in rows[:4]:
        prompt = s.format(r["text"])
        framed = {text_hash(prompt, s.scored(a, e)): (s.scored(a, e), e)
                  for a, e in ((r["response_a"], r["end_a"]), (r["response_b"], r["end_b"]))}
        assert r["text_hash"] in framed
        text, end = framed[r["text_hash"]]
        assert text.startswith(" ") and text.endswith(end)
        assert end in ("", "<eos>", *PLAIN_STOPS)
        (logp,), (n,) = score(svc.policy, [prompt], [text], BASE, svc.train_cfg.max_length)
        assert (logp, n) == (pytest.approx(r["logp"], abs=1e-4), r["n_tokens"])


def test_an_answer_that_retokenises_differently_is_trained_on_its_sampled_tokens(
        tmp_path, tiny_model_dir):
    """A model may sample ' the' as four one-character tokens; its text re-tokenises to
    the one token ' the'. The round must score the four tokens the model wrote."""
    from trainer.training.data import paired_examples

    svc = tiny_service(tmp_path / "data", tiny_model_dir)
    tok, s = svc.policy.tokenizer, svc.sampler
    text = " Paris is the capital"
    canonical = tuple(tok(text, add_special_tokens=False)["input_ids"])
    sampled = tuple(i for ch in text for i in tok(ch, add_special_tokens=False)["input_ids"])
    assert tok.decode(list(sampled)) == text and sampled != canonical
    prompt_ids = tuple(tok(s.format("Capital of France?"))["input_ids"])
    pid = svc.store.add_prompt("Capital of France?", source="user")
    pair = svc.store.record_pair(pid, text.strip(), "Lyon", "base", "base", {}, 0,
                                 end_a="", end_b="", prompt_ids=prompt_ids,
                                 ids_a=sampled, ids_b=tuple(tok(" Lyon")["input_ids"][1:]))
    svc.store.record_vote(pair, "ann", "a")
    (row,) = svc.store.training_pairs()
    (ex,) = paired_examples([row], s.format, s.scored)
    assert ex.prompt == prompt_ids and ex.chosen == sampled
    batch = build_batch(tok, [ex.prompt], [ex.chosen], 320, tok.pad_token_id)
    assert tuple(batch["input_ids"][0][batch["response_mask"][0]].tolist()) == sampled
    (exact,), (n_exact,) = score(svc.policy, [ex.prompt], [ex.chosen], BASE, 320)
    (retok,), (n_retok,) = score(svc.policy, [ex.prompt], [s.scored(text.strip(), "")], BASE,
                                 320)
    assert (n_exact, n_retok) == (len(sampled), len(canonical))
    assert exact != pytest.approx(retok, abs=1e-3)  # different sequences, different logp


@pytest.mark.parametrize("per_pass, epochs, min_steps, expected", [
    (2, 2, 0, 2),    # off: the epochs
    (2, 2, 16, 8),   # 2 steps a pass: 8 passes reach 16 steps
    (3, 2, 16, 6),   # ceil(16 / 3)
    (20, 2, 16, 2),  # plenty of votes: the epochs already take 40 steps
])
def test_passes_reach_the_step_budget(per_pass, epochs, min_steps, expected):
    assert rounds.passes(per_pass, epochs, min_steps) == expected


def test_a_round_takes_at_least_min_steps(tmp_path, tiny_model_dir):
    svc = voted_service(tmp_path, tiny_model_dir, "--min-steps", "7")
    out = svc.trainer.run_one("test")
    assert out.status == "accepted" and out.metrics["steps"] >= 7
    assert len(svc.store.query("select * from train_steps")) == out.metrics["steps"]
