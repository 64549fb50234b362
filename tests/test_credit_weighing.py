"""A round that credits words: the pairs without a credited word (``--uncredited-weight``,
trainer/training/credit.py ``weigh_uncredited``), and the gate's focused reward."""

import dataclasses
import random

import pytest

from tests.svc_fixtures import record_sampled_vote, tiny_service
from trainer.model.policy import BASE
from trainer.model.scoring import score
from trainer.training import credit, rounds
from trainer.training.data import Example, attach_reference
from trainer.training.heldout import heldout_accuracy

FILLER = "sun rain river stone cloud paper glass music garden window bread market".split()


def _example(key: str, apart: set[str]) -> Example:
    return Example(key, None, (1,), (2,), (3,), apart=frozenset(apart))


def test_pairs_without_a_credited_word_sit_out_at_weight_0():
    train = [_example("a", {"because"}), _example("b", set()), _example("c", {"because"})]
    held = [_example("h1", set()), _example("h2", {"because"})]
    kept, judged, plain = credit.focus_round(train, held, 0.0, least=2)
    assert [e.key for e in kept] == ["a", "c"] and [e.key for e in judged] == ["h2"]
    assert plain == 1 and all(e.weight == 1.0 for e in kept)


def test_pairs_without_a_credited_word_get_the_weight():
    train = [_example("a", {"because"}), _example("b", set()), _example("c", set())]
    held = [_example("h1", set())]
    kept, judged, plain = credit.focus_round(train, held, 0.25, least=1)
    assert [(e.key, e.weight) for e in kept] == [("a", 1.0), ("b", 0.25), ("c", 0.25)]
    assert judged == held and plain == 2


def test_too_few_credited_pairs_leave_the_round_as_it_is():
    """One credited training pair of three (least 2): nothing is weighed or left out, on
    either side, even though a held-out pair holds the word."""
    train = [_example("a", {"because"}), _example("b", set()), _example("c", set())]
    held = [_example("h1", set()), _example("h2", {"because"})]
    kept, judged, plain = credit.focus_round(train, held, 0.0, least=2)
    assert kept == train and judged == held and plain == 0
    assert all(e.weight == 1.0 for e in kept)


def _mixed_svc(tmp_path, tiny_model_dir, *flags, credited: int = 12):
    """``credited`` voted pairs whose chosen answer says 'because' and the rejected one
    not, then 8 voted pairs that differ in no such word (filler on both sides)."""
    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1",
                       "--window", "0", "--heldout-fraction", "0", "--credit-weight", "4",
                       *flags)
    rng = random.Random(5)

    def text(n: int) -> str:
        return " ".join(rng.choice(FILLER) for _ in range(n))

    for i in range(credited + 8):
        a, b = (f"{text(3)} because {text(2)}", text(6)) if i < credited else (
            text(5), text(5))
        record_sampled_vote(svc, i, a, b)
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


def test_a_left_out_pair_takes_no_place_in_the_window(tmp_path, tiny_model_dir):
    """The 8 pairs without the word are the latest; ``--window 5`` keeps the latest 5
    pairs the round trains on: credited ones."""
    svc = _mixed_svc(tmp_path, tiny_model_dir, "--window", "5")
    train, _, counts = _load(svc)
    assert len(train) == 5 and all(e.apart for e in train) and counts["uncredited"] == 8
    assert [e.question for e in train] == [f"question number {i}" for i in range(7, 12)]


def test_the_gate_is_left_the_pairs_the_round_trains_on(tmp_path, tiny_model_dir):
    """Half the votes held out: at weight 0 the held-out pairs without the word are left
    out of the gate too; at weight 1 they stay."""
    held = {}
    for w in ("0", "1"):
        svc = _mixed_svc(tmp_path / w, tiny_model_dir, "--heldout-fraction", "0.5",
                         "--uncredited-weight", w, credited=30)
        held[w] = _load(svc)[1]
    assert held["0"] and all(e.apart for e in held["0"])
    assert len(held["1"]) > len(held["0"]) and any(not e.apart for e in held["1"])


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
    """Held-out accuracy's margin of each pair is the reward the round trains, rebuilt from
    plain ``score`` calls on the answers and their prefixes: for a pair holding the
    credited word (on the chosen side, or on the rejected side once swapped), beta times
    the credited tokens' log-ratio plus 1/(1 + weight) of the rest; for a pair without
    it, the whole answers' log-ratio."""
    svc = _mixed_svc(tmp_path, tiny_model_dir, "--uncredited-weight", "1")
    out = svc.trainer.run_one("test")  # a draft that differs from base
    assert out.status == "accepted", out.error
    cfg = svc.train_cfg
    train = _load(svc)[0]
    marked = train[:2]
    swapped = dataclasses.replace(marked[1], chosen=marked[1].rejected,
                                  rejected=marked[1].chosen)
    pairs = [marked[0], swapped, train[-1]]  # chosen side, rejected side, no credited word
    attach_reference(pairs, svc.policy, svc.store, BASE, cfg.max_length, 4)
    focus = 1 / (1 + cfg.credit_weight)

    def logp(e, ids, version):
        return score(svc.policy, [e.prompt], [tuple(ids)], version, cfg.max_length)[0][0]

    def reward(e, ids, version):  # the answer's focused log-prob
        marks = e.credit.get(ids, ())
        whole = logp(e, ids, version)
        if not any(marks) and not any(any(m) for m in e.credit.values()):
            return whole
        on = [i for i, m in enumerate(marks) if m]
        if not on:
            return whole * focus
        cred = logp(e, ids[:on[-1] + 1], version) - logp(e, ids[:on[0]], version)
        return cred + (whole - cred) * focus

    for e in pairs:
        want = cfg.beta * sum(sign * (reward(e, ids, out.version) - reward(e, ids, BASE))
                              for sign, ids in ((1, e.chosen), (-1, e.rejected)))
        got = heldout_accuracy(svc.policy, [e], out.version, cfg, BASE)
        assert got["margin"] == pytest.approx(want, rel=1e-3, abs=1e-5)
        assert got["hits"] == [1.0 if want > 0 else 0.0]
    whole = heldout_accuracy(svc.policy, pairs, out.version, dataclasses.replace(
        cfg, credit_weight=0.0), BASE)
    assert heldout_accuracy(svc.policy, pairs, out.version, cfg, BASE)["margin"] != \
        pytest.approx(whole["margin"], abs=1e-4)


def test_the_reference_itself_ties_every_held_out_pair(tmp_path, tiny_model_dir):
    svc = _mixed_svc(tmp_path, tiny_model_dir)
    pairs = _load(svc)[0][:3]
    got = heldout_accuracy(svc.policy, pairs, BASE, svc.train_cfg, BASE)
    assert got["hits"] == [0.5] * 3 and got["accuracy"] == 0.5 and got["margin"] == 0.0
