"""The loss terms a round adds to its preference loss, seen inside real rounds: R-DPO's
length term, the common / content answer spans, the ending anchor, the empty-answer
guard and RPO's NLL term."""

import math

import pytest
import torch

from tests.svc_fixtures import record_sampled_vote, tiny_service, voted_service
from trainer.config import TrainConfig
from trainer.model.generate import PLAIN_STOPS
from trainer.model.policy import BASE
from trainer.model.scoring import score
from trainer.training import endings, rounds


def test_length_alpha_round_passes_each_answers_length_to_the_loss(tmp_path, tiny_model_dir,
                                                                  monkeypatch):
    svc = voted_service(tmp_path, tiny_model_dir, "--length-alpha", "0.02")
    seen = []
    real = rounds.preference_loss

    def spy(*a, **k):
        seen.append(a[7:10])
        return real(*a, **k)

    monkeypatch.setattr(rounds, "preference_loss", spy)
    out = svc.trainer.run_one("test")
    assert out.status in ("accepted", "rejected"), out.error
    alpha, chosen, rejected = seen[0]
    assert alpha == 0.02 and chosen.shape == rejected.shape and (chosen >= 1).all()


@pytest.mark.parametrize("span", ["common", "content"])
def test_common_answer_span_trains_each_pair_on_equal_lengths(tmp_path, tiny_model_dir,
                                                              monkeypatch, span):
    """--answer-span common / content: chosen and rejected are scored on the same number
    of tokens, and the cut pairs are the ones the held-out gate and reference cache see."""
    svc = voted_service(tmp_path, tiny_model_dir, "--answer-span", span, "--window", "0")
    seen = []
    real = rounds.preference_loss

    def spy(*a, **k):
        seen.append(a[8:10])
        return real(*a, **k)

    monkeypatch.setattr(rounds, "preference_loss", spy)
    out = svc.trainer.run_one("test")
    assert out.status in ("accepted", "rejected"), out.error
    for chosen, rejected in seen:  # token counts per pair (the first position is unscored)
        assert torch.equal(chosen, rejected)
    tok = svc.policy.tokenizer
    train, held, _ = rounds.load_examples(
        svc.store, svc.train_cfg, svc.sampler.format, svc.sampler.scored,
        lambda ids: tok.decode(ids, skip_special_tokens=True))
    whole, _, _ = rounds.load_examples(svc.store, TrainConfig(window=0), svc.sampler.format,
                                       svc.sampler.scored, tok.decode)
    sampled = [e for e in train + held if isinstance(e.chosen, tuple)]
    assert sampled and all(len(e.chosen) == len(e.rejected) for e in sampled)
    assert sum(len(e.chosen) for e in train) < sum(len(e.chosen) for e in whole)


def _ended_pairs_svc(tmp_path, tiny_model_dir, *flags):
    """A service with 8 voted pairs whose answers kept their ids: A ended with the plain
    template's stop string, B was cut at the token limit (the tiny random model itself
    never ends an answer)."""
    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1", *flags)
    for i in range(8):
        record_sampled_vote(svc, i, f"short answer {i}",
                            f"a much longer answer that was cut {i}", end_a=PLAIN_STOPS[0],
                            vote="b" if i % 2 else "a")
    return svc


def test_end_anchor_scores_each_ended_answer_against_its_reference_ending(
        tmp_path, tiny_model_dir, monkeypatch):
    """--end-anchor: an answer that ended has its stop string's tokens marked (a cut one
    none), the reference log-prob of that ending is computed, and the hinge is in the
    loss of every micro-batch that holds one."""
    svc = _ended_pairs_svc(tmp_path, tiny_model_dir, "--end-anchor", "1", "--window", "0",
                           "--heldout-fraction", "0")
    tok = svc.policy.tokenizer
    stop = len(tok(PLAIN_STOPS[0], add_special_tokens=False)["input_ids"])
    train, _, _ = rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                       svc.sampler.scored,
                                       lambda ids: tok.decode(ids, skip_special_tokens=True))
    assert len(train) == 8
    for e in train:
        ended = e.chosen if "short" in tok.decode(e.chosen) else e.rejected
        cut = e.rejected if ended is e.chosen else e.chosen
        assert e.endings[ended] == stop and e.endings[cut] == 0
    seen = []
    real = rounds.ending_anchor

    def spy(pol, ref, has_end):
        seen.append((pol.detach().clone(), ref.clone(), has_end.clone()))
        return real(pol, ref, has_end)

    monkeypatch.setattr(rounds, "ending_anchor", spy)
    out = svc.trainer.run_one("test")
    assert out.status == "accepted", out.error
    assert seen and all(h.sum() == len(h) // 2 for _, _, h in seen)  # one ended answer a pair
    for pol, ref, has_end in seen:
        assert (pol[has_end] < 0).all() and (ref[has_end] < 0).all()
    first_pol, first_ref, has_end = seen[0]  # the draft starts as base: no gap yet
    assert torch.allclose(first_pol[has_end], first_ref[has_end], atol=1e-4)
    steps = svc.store.train_steps(out.round_id)
    assert steps and all(math.isfinite(s["metrics"]["end_anchor"]) for s in steps)


def test_empty_guard_scores_each_prompt_with_its_answers_ending_right_after_it(
        tmp_path, tiny_model_dir, monkeypatch):
    """--empty-guard (default 1): each pair's ended answer gives one row, its prompt followed at once
    by that answer's stop string; the reference value is that sequence's log-prob under
    base, and the hinge is in the loss of every step."""
    svc = _ended_pairs_svc(tmp_path, tiny_model_dir, "--window", "0",
                           "--heldout-fraction", "0", "--lr", "1e-2")
    tok = svc.policy.tokenizer
    stop = tuple(tok(PLAIN_STOPS[0], add_special_tokens=False)["input_ids"])
    train, _, _ = rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                       svc.sampler.scored,
                                       lambda ids: tok.decode(ids, skip_special_tokens=True))
    rows = endings.empty_answers(train)
    assert len(rows) == len(train) == 8 and all(end == stop for _, end in rows)
    _, ref = endings.empty_inputs(svc.policy, train[:2], BASE, svc.train_cfg.max_length)
    want, _ = score(svc.policy, [e.prompt for e in train[:2]], [stop, stop], BASE,
                    svc.train_cfg.max_length)
    assert ref.tolist() == pytest.approx(want, abs=1e-4)
    seen = []
    real = rounds.empty_guard

    def spy(pol, ref):
        seen.append((pol.detach().clone(), ref.clone()))
        return real(pol, ref)

    monkeypatch.setattr(rounds, "empty_guard", spy)
    out = svc.trainer.run_one("test")
    assert out.status == "accepted", out.error
    assert len(seen) == 8 and all(len(p) == 2 for p, _ in seen)  # 8 pairs / 2, 2 epochs
    first_pol, first_ref = seen[0]  # the draft starts as base: no gap yet
    assert torch.allclose(first_pol, first_ref, atol=1e-4)
    steps = svc.store.train_steps(out.round_id)
    assert steps and all(s["metrics"]["empty_guard"] >= 0 for s in steps)


def test_sft_weight_adds_the_chosen_answers_nll_to_each_step(tmp_path, tiny_model_dir):
    """--sft-weight: the same round with and without the NLL term starts from the same
    draft on the same batches, so the first step's losses differ by exactly alpha times
    the chosen answers' negative log-likelihood per token."""
    first = {}
    for alpha in ("0", "2"):
        svc = _ended_pairs_svc(tmp_path / alpha, tiny_model_dir, "--sft-weight", alpha,
                               "--window", "0", "--heldout-fraction", "0")
        out = svc.trainer.run_one("test")
        assert out.status == "accepted", out.error
        first[alpha] = svc.store.train_steps(out.round_id)[0]["metrics"]
    nll = first["2"]["nll/chosen"]
    assert nll > 0 and first["0"]["nll/chosen"] == pytest.approx(nll, rel=1e-4)
    assert first["2"]["loss"] - first["0"]["loss"] == pytest.approx(2 * nll, rel=1e-3)


def test_end_anchor_and_empty_guard_off_mark_nothing(tmp_path, tiny_model_dir):
    svc = _ended_pairs_svc(tmp_path, tiny_model_dir, "--empty-guard", "0", "--end-anchor", "0")
    train, _, _ = rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                       svc.sampler.scored, lambda ids: "")
    assert train and all(not e.endings for e in train)
