"""A round that credits words: the pairs without a credited word (``--uncredited-weight``,
trainer/training/credit.py ``weigh_uncredited``), and the gate's focused reward."""

import random

import pytest

from tests.svc_fixtures import tiny_service
from trainer.model.policy import BASE
from trainer.model.scoring import score
from trainer.training import credit, rounds
from trainer.training.data import Example, attach_reference
from trainer.training.heldout import heldout_accuracy

FILLER = "sun rain river stone cloud paper glass music garden window bread market".split()


def _example(key: str, apart: set[str]) -> Example:
    return Example(key, None, (1,), (2,), (3,), apart=frozenset(apart))


def test_pairs_without_a_credited_word_sit_out_at_weight_0():
    pairs = [_example("a", {"because"}), _example("b", set()), _example("c", {"because"})]
    kept, weighed = credit.weigh_uncredited(pairs, 0.0, least=2)
    assert [e.key for e in kept] == ["a", "c"] and weighed == 1
    assert all(e.weight == 1.0 for e in kept)


def test_pairs_without_a_credited_word_get_the_weight():
    pairs = [_example("a", {"because"}), _example("b", set()), _example("c", set())]
    kept, weighed = credit.weigh_uncredited(pairs, 0.25, least=1)
    assert [(e.key, e.weight) for e in kept] == [("a", 1.0), ("b", 0.25), ("c", 0.25)]
    assert weighed == 2


def test_too_few_credited_pairs_leave_the_round_as_it_is():
    pairs = [_example("a", {"because"}), _example("b", set()), _example("c", set())]
    kept, weighed = credit.weigh_uncredited(pairs, 0.0, least=2)
    assert kept == pairs and weighed == 0 and all(e.weight == 1.0 for e in kept)
    kept, weighed = credit.weigh_uncredited([_example("b", set())], 0.0, least=1)
    assert len(kept) == 1 and weighed == 0


def _mixed_svc(tmp_path, tiny_model_dir, *flags):
    """12 voted pairs whose chosen answer says 'because' and the rejected one not, then
    8 voted pairs that differ in no such word (filler on both sides)."""
    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1",
                       "--window", "0", "--heldout-fraction", "0", "--credit-weight", "4",
                       *flags)
    tok = svc.policy.tokenizer
    rng = random.Random(5)

    def text(n: int) -> str:
        return " ".join(rng.choice(FILLER) for _ in range(n))

    for i in range(20):
        pid = svc.store.add_prompt(f"question number {i}")
        a, b = (f"{text(3)} because {text(2)}", text(6)) if i < 12 else (text(5), text(5))
        ids_a, ids_b = (tok(" " + t, add_special_tokens=False)["input_ids"] for t in (a, b))
        p_ids = tok(svc.sampler.format(f"question number {i}"))["input_ids"]
        pair = svc.store.record_pair(pid, a, b, BASE, BASE, {}, seed=i, end_a="", end_b="",
                                     prompt_ids=p_ids, ids_a=ids_a, ids_b=ids_b)
        svc.store.record_vote(pair, "alice", "a")
    return svc


def _load(svc):
    tok = svc.policy.tokenizer
    return rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                svc.sampler.scored,
                                lambda ids: tok.decode(ids, skip_special_tokens=True))


def test_a_credited_round_leaves_the_other_pairs_out_by_default(tmp_path, tiny_model_dir):
    svc = _mixed_svc(tmp_path, tiny_model_dir)
    train, _, counts = _load(svc)
    assert [c["word"] for c in counts["credited"]] == ["because"]
    assert len(train) == 12 and counts["train"] == 12 and counts["uncredited"] == 8
    assert all(e.apart == {"because"} for e in train)


def test_uncredited_weight_1_keeps_every_pair(tmp_path, tiny_model_dir):
    svc = _mixed_svc(tmp_path, tiny_model_dir, "--uncredited-weight", "1")
    train, _, counts = _load(svc)
    assert len(train) == 20 and counts["uncredited"] == 8
    assert all(e.weight == 1.0 for e in train)


def test_the_weight_scales_each_pairs_loss(tmp_path, tiny_model_dir, monkeypatch):
    """Every pair's preference loss set to 1 (other terms off): each step's loss is then
    the mean weight of its pairs, and over a pass 12 pairs at 1 and 8 at 0.5 average
    (12 + 4) / 20."""
    svc = _mixed_svc(tmp_path, tiny_model_dir, "--uncredited-weight", "0.5", "--epochs", "1",
                     "--end-anchor", "0", "--empty-guard", "0")
    real = rounds.preference_loss

    def ones(*a, **k):
        losses, cr, rr = real(*a, **k)
        return losses * 0 + 1, cr, rr

    monkeypatch.setattr(rounds, "preference_loss", ones)
    out = svc.trainer.run_one("test")
    assert out.status == "accepted", out.error
    steps = [s["metrics"]["loss"] for s in svc.store.train_steps(out.round_id)]
    assert len(steps) == 5
    assert sum(steps) / len(steps) == pytest.approx(0.8, abs=1e-6)
    assert svc.store.get_round(out.round_id)["counts"]["uncredited"] == 8


def test_the_gate_judges_a_credited_pair_on_its_credited_tokens(tmp_path, tiny_model_dir):
    """Held-out accuracy's margin of a pair holding the credited word is the focused one:
    beta * (the credited tokens' log-ratio + 1/(1 + weight) of the rest of the log-ratio
    difference), here rebuilt from plain ``score`` calls on the answers' prefixes."""
    svc = _mixed_svc(tmp_path, tiny_model_dir)
    out = svc.trainer.run_one("test")  # a draft that differs from base
    assert out.status == "accepted", out.error
    cfg = svc.train_cfg
    pairs = _load(svc)[0][:3]
    attach_reference(pairs, svc.policy, svc.store, BASE, cfg.max_length, 4)

    def logp(e, ids, version):
        return score(svc.policy, [e.prompt], [tuple(ids)], version, cfg.max_length)[0][0]

    want = []
    for e in pairs:
        marked = [i for i, m in enumerate(e.credit[e.chosen]) if m]
        assert marked and not any(e.credit[e.rejected])
        lo, hi = marked[0], marked[-1] + 1
        ratio = {}
        for v in (out.version, BASE):
            whole_c, whole_r = logp(e, e.chosen, v), logp(e, e.rejected, v)
            cred = logp(e, e.chosen[:hi], v) - logp(e, e.chosen[:lo], v)
            ratio[v] = (cred + (whole_c - cred) / (1 + cfg.credit_weight),
                        whole_r / (1 + cfg.credit_weight))
        want.append(cfg.beta * ((ratio[out.version][0] - ratio[BASE][0])
                                - (ratio[out.version][1] - ratio[BASE][1])))
    got = heldout_accuracy(svc.policy, pairs, out.version, cfg, BASE)
    plain = heldout_accuracy(svc.policy, pairs, out.version, cfg)
    assert got["margin"] == pytest.approx(sum(want) / len(want), rel=1e-3, abs=1e-5)
    assert abs(got["margin"] - plain["margin"]) > 1e-3
