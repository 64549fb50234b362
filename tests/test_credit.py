"""Credited words (trainer/training/credit.py) and the token-weighted log-ratio a round
trains with them (``--credit-weight``)."""

import random

import numpy as np
import pytest
import torch

from tests.svc_fixtures import record_sampled_vote, tiny_service
from trainer.model.policy import BASE
from trainer.training import credit, rounds

FILLER = ("sun rain river stone cloud paper glass music garden window bread market "
          "engine forest candle mirror").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def test_poisson_binomial_tail_by_hand():
    assert credit.poisson_binomial_tail([0.5, 0.5], 2) == pytest.approx(0.25)
    assert credit.poisson_binomial_tail([0.5, 0.5], 0) == pytest.approx(1.0)
    assert credit.poisson_binomial_tail([0.2, 0.6], 1) == pytest.approx(1 - 0.8 * 0.4)
    assert credit.poisson_binomial_tail([0.2, 0.6], 2) == pytest.approx(0.2 * 0.6)
    assert credit.poisson_binomial_tail([], 0) == 1.0


def test_a_word_on_the_chosen_side_of_every_decisive_pair_is_credited():
    rng = random.Random(0)
    pairs = [(_sentence(rng, 8) + " because " + _sentence(rng, 4), _sentence(rng, 12))
             for _ in range(12)]
    got = credit.credited_words(pairs)
    assert [c.word for c in got] == ["because"]
    assert got[0].favoured and got[0].chosen_only == 12 and got[0].rejected_only == 0
    assert got[0].p_value < 0.05 / 10


def test_a_word_on_the_rejected_side_is_credited_as_disfavoured():
    rng = random.Random(1)
    pairs = [(_sentence(rng, 10), "sorry " + _sentence(rng, 9)) for _ in range(12)]
    got = credit.credited_words(pairs)
    assert [(c.word, c.favoured) for c in got] == [("sorry", False)]


def test_length_alone_credits_nothing():
    """The chosen answers are 4x longer, so most words are on the chosen side only: the
    test expects them there (a common word is in a long answer almost surely) and credits
    none, even over 150 votes."""
    rng = random.Random(2)
    pairs = [(_sentence(rng, 40), _sentence(rng, 10)) for _ in range(150)]
    assert credit.credited_words(pairs) == []


def test_random_votes_credit_a_word_rarely():
    """Votes that ignore the words credit one in fewer than alpha of the rounds."""
    rng = random.Random(4)
    rounds_with_credit = 0
    for _ in range(200):
        pairs = [(_sentence(rng, rng.randint(3, 12)), _sentence(rng, rng.randint(3, 12)))
                 for _ in range(30)]
        rounds_with_credit += bool(credit.credited_words(pairs, alpha=0.2))
    assert rounds_with_credit / 200 < 0.2


def test_too_few_pairs_credit_nothing():
    pairs = [("yes because", "no")] * 3  # (1/3)^3: two-sided 0.07, not below 0.05
    assert credit.credited_words(pairs) == []


def test_one_text_pair_per_vote_its_two_sides():
    rows = [{"key": "1", "group": "r1", "chosen": "best", "rejected": "worst"},
            {"key": "2", "group": "r1", "chosen": "best", "rejected": "mid"},
            {"key": "3", "group": "r1", "chosen": "mid", "rejected": "worst"},
            {"key": "4", "group": "r2", "chosen": "top", "rejected": "p"},
            {"key": "5", "group": "r2", "chosen": "top", "rejected": "q"},
            {"key": "6", "group": "r3", "chosen": "u", "rejected": "low"},
            {"key": "7", "group": "r3", "chosen": "v", "rejected": "low"},
            {"key": "8", "pair_id": 7, "chosen": "mine", "rejected": "a"},
            {"key": "9", "pair_id": 7, "chosen": "mine", "rejected": "b"},
            {"key": "10", "pair_id": 8, "chosen": "x", "rejected": "y"}]
    assert credit.vote_sides(rows) == [
        ("best", "worst"),  # best and worst marked: the middle answer is on neither side
        ("top", "p\nq"),  # best alone: against every other answer of the set
        ("u\nv", "low"),  # worst alone
        ("mine", "a\nb"),  # a written answer against the two it beats
        ("x", "y")]


def test_a_rank_vote_is_stronger_evidence_than_an_ab_vote():
    """The word in the best of four answers and in none of the other three: its chance
    by luck is about 1/4, not 1/2, so fewer votes credit it."""
    filler = "the answer is here and it says what it says about the thing"
    def rank_vote(i):
        return [{"key": f"{i}:{j}", "group": f"r{i}", "chosen": f"because {filler} {i}",
                 "rejected": f"{filler} {i} {j}"} for j in range(3)]
    def ab_vote(i):
        return [{"key": f"{i}", "pair_id": i, "chosen": f"because {filler} {i}",
                 "rejected": f"{filler} {i} 0"}]
    rank = [r for i in range(5) for r in rank_vote(i)]
    ab = [r for i in range(5) for r in ab_vote(i)]
    assert [c.word for c in credit.credited_words(credit.vote_sides(rank))] == ["because"]
    assert credit.credited_words(credit.vote_sides(ab)) == []


def test_token_mask_marks_every_token_of_a_credited_word():
    pieces = {1: "It", 2: " rains", 3: " be", 4: "cause", 5: " clouds", 6: "."}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    assert credit.token_mask((1, 2, 3, 4, 5, 6), {"because"}, decode) == (
        0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
    assert credit.token_mask((1, 2, 3, 4, 5, 6), {"rains", "clouds"}, decode) == (
        0.0, 1.0, 0.0, 0.0, 1.0, 0.0)
    assert credit.token_mask((1, 2), set(), decode) == (0.0, 0.0)
    assert credit.token_mask((), {"because"}, decode) == ()


def test_credit_weights_sit_on_the_response_positions_of_the_marked_tokens():
    """Row 0's response starts at position 2; row 1's was cut by max_length to 2 of its
    4 tokens and keeps the marks of those two."""
    from trainer.training.data import Example

    response = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    e = Example(key="k", pair_id=1, prompt=(1,), chosen=(5, 6, 7), rejected=(8, 9, 10, 11))
    e.credit = {(5, 6, 7): (0.0, 1.0, 0.0), (8, 9, 10, 11): (1.0, 0.0, 1.0, 1.0)}
    got = credit.credit_weights(response, [e], [e.chosen, e.rejected])
    assert got.tolist() == [[0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]]


def _keyword_pairs_svc(tmp_path, tiny_model_dir, *flags):
    """A service with 12 voted pairs whose answers kept their ids; the chosen answer says
    'because', the rejected one does not."""
    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1",
                       "--window", "0", "--heldout-fraction", "0", *flags)
    rng = random.Random(3)
    for i in range(12):
        record_sampled_vote(svc, i, f"{_sentence(rng, 3)} because {_sentence(rng, 2)}",
                            _sentence(rng, 6))
    return svc


def _decode(svc):
    tok = svc.policy.tokenizer
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def test_a_round_credits_the_voted_word_and_marks_its_tokens(tmp_path, tiny_model_dir):
    svc = _keyword_pairs_svc(tmp_path, tiny_model_dir, "--credit-weight", "4")
    train, _, counts = rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                            svc.sampler.scored, _decode(svc))
    assert [c["word"] for c in counts["credited"]] == ["because"]
    assert counts["credited"][0]["favoured"] and counts["credited"][0]["chosen_only"] == 12
    tok = svc.policy.tokenizer
    for e in train:
        marked = [t for t, m in zip(e.chosen, e.credit[e.chosen]) if m]
        assert marked and "because" in tok.decode(marked)
        assert not any(e.credit[e.rejected])
    out = svc.trainer.run_one("test")
    assert out.status == "accepted", out.error
    steps = svc.store.train_steps(out.round_id)
    assert steps and all(s["metrics"]["credited_tokens"] > 0 for s in steps)
    assert svc.store.get_round(out.round_id)["counts"]["credited"][0]["word"] == "because"


def test_the_credit_test_reads_the_votes_older_than_the_window(tmp_path, tiny_model_dir):
    """A round trains on the latest 3 pairs (``--window 3``), but the word's evidence is
    all 12 training-side votes so far: a rare preference's votes keep counting."""
    svc = _keyword_pairs_svc(tmp_path, tiny_model_dir, "--credit-weight", "4", "--window", "3")
    train, _, counts = rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                            svc.sampler.scored, _decode(svc))
    assert len(train) == 3
    assert [c["word"] for c in counts["credited"]] == ["because"]
    assert counts["credited"][0]["chosen_only"] == 12
    assert all(any(e.credit[e.chosen]) for e in train)


def test_credit_weight_scores_other_tokens_of_a_credited_pair_less(tmp_path, tiny_model_dir,
                                                                    monkeypatch):
    """The same first step with weight 0 and 4 (the draft starts as base): every pair holds
    the credited word, so with weight 4 the rejected answers (no credited token) score
    1/5 of their log-probs, and the chosen ones their credited tokens in full plus 1/5 of
    the rest: the credited part (5 * weighted - full) / 4 is the same under the policy
    and the reference, non-zero, and a small part of the answer."""
    first = {}
    real = rounds.preference_loss
    for weight in ("0", "4"):
        svc = _keyword_pairs_svc(tmp_path / weight, tiny_model_dir, "--credit-weight", weight)
        seen = []

        def spy(*a, seen=seen, **k):
            seen.append([x.detach().clone() for x in a[1:5]])
            return real(*a, **k)

        monkeypatch.setattr(rounds, "preference_loss", spy)
        out = svc.trainer.run_one("test")
        assert out.status == "accepted", out.error
        first[weight] = seen[0]
    pc0, pr0, rc0, rr0 = first["0"]
    pc4, pr4, rc4, rr4 = first["4"]
    assert pr4.tolist() == pytest.approx((pr0 / 5).tolist(), abs=1e-4)
    assert rr4.tolist() == pytest.approx((rr0 / 5).tolist(), abs=1e-4)
    credited_policy, credited_ref = (5 * pc4 - pc0) / 4, (5 * rc4 - rc0) / 4
    assert credited_policy.tolist() == pytest.approx(credited_ref.tolist(), abs=1e-3)
    assert (credited_policy < -1e-3).all() and (credited_policy > pc0 / 2).all()


def test_focused_scores_only_pairs_holding_a_credited_token():
    weights = torch.tensor([[0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float32)
    has = credit.pair_has_credit(weights)  # rows 0, 1 chosen; 2, 3 rejected
    assert has.tolist() == [True, False, True, False]
    total = torch.tensor([-10.0, -10.0, -8.0, -8.0])
    cred = torch.tensor([-2.0, 0.0, 0.0, 0.0])
    assert credit.focused(total, cred, has, 3.0).tolist() == [-4.0, -10.0, -2.0, -8.0]


def test_credit_weight_off_credits_nothing(tmp_path, tiny_model_dir):
    svc = _keyword_pairs_svc(tmp_path, tiny_model_dir, "--credit-weight", "0")
    train, _, counts = rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                            svc.sampler.scored, _decode(svc))
    assert counts["credited"] == [] and all(not e.credit for e in train)


def test_dno_credits_from_every_answer_of_a_rank_vote(tmp_path, tiny_model_dir):
    """Five rank-of-4 votes mark only their best answer, the one saying 'because'. DNO
    trains on one pair per vote, but the test reads each vote's best against its three
    other answers (chance about 1/4 a vote): five votes credit the word, where five A/B
    votes could not (``test_a_rank_vote_is_stronger_evidence_than_an_ab_vote``)."""
    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1",
                       "--window", "0", "--heldout-fraction", "0", "--method", "dno",
                       "--vote-mode", "rank", "--credit-weight", "4")
    tok = svc.policy.tokenizer
    rng = random.Random(5)
    for i in range(5):
        pid = svc.store.add_prompt(f"question number {i}")
        texts = [f"{_sentence(rng, 3)} because {_sentence(rng, 2)}"] + [
            _sentence(rng, 6) for _ in range(3)]
        answers = [{"text": t, "version": BASE, "end": "",
                    "ids": tok(" " + t, add_special_tokens=False)["input_ids"]} for t in texts]
        sid = svc.store.record_rank_set(pid, answers, {"rank_size": 4}, i,
                                        prompt_ids=tok(svc.sampler.format(f"q {i}"))["input_ids"])
        svc.store.record_rank_vote(sid, "alice", "rank", best=0, worst=None)
    train, _, counts = rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                            svc.sampler.scored, _decode(svc))
    assert len(train) == 5  # one (best, other) pair per vote
    assert [c["word"] for c in counts["credited"]] == ["because"]
    assert counts["credited"][0]["chosen_only"] == 5


def test_credited_pairs_are_marked_only_on_words_one_answer_holds():
    pieces = {1: " it", 2: " rains", 3: " because", 4: " clouds", 5: " sun"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    from trainer.training.data import Example

    both = Example(key="1", pair_id=1, prompt=(9,), chosen=(1, 3, 4), rejected=(1, 3, 5))
    one = Example(key="2", pair_id=2, prompt=(9,), chosen=(1, 3, 4), rejected=(1, 2, 5))
    credit.mark_credit([both, one], {"because"}, decode)
    assert not any(both.credit[both.chosen]) and not any(both.credit[both.rejected])
    assert one.credit[one.chosen] == (0.0, 1.0, 0.0) and not any(one.credit[one.rejected])


def test_vote_sides_skip_equal_texts_and_leave_the_ab_winner_of_a_written_answer_out():
    rows = [{"key": "1:ab", "pair_id": 1, "chosen": "a", "rejected": "b"},
            {"key": "1:better:u:a", "pair_id": 1, "chosen": "W", "rejected": "a"},
            {"key": "1:better:u:b", "pair_id": 1, "chosen": "W", "rejected": "b"},
            {"key": "2:0", "group": "r2", "chosen": "Sydney", "rejected": "Sydney"}]
    assert credit.vote_sides(rows) == [("W", "b")]


def test_the_credit_test_never_reads_held_out_rows(tmp_path, tiny_model_dir, monkeypatch):
    """A written better answer gives a pair three rows whose keys are split one by one:
    the rows the test reads are all on the training side."""
    from trainer.training.data import is_heldout

    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--heldout-fraction", "0.5",
                       "--credit-weight", "4")
    rng = random.Random(2)
    for i in range(12):
        pid = svc.store.add_prompt(f"question number {i}")
        pair = svc.store.record_pair(pid, _sentence(rng, 4), _sentence(rng, 4), BASE, BASE,
                                     {}, seed=i)
        svc.store.record_vote(pair, "alice", "a",
                              better_answer=f"{_sentence(rng, 3)} because {_sentence(rng, 2)}")
    seen = []
    real = credit.vote_sides
    monkeypatch.setattr(credit, "vote_sides", lambda rows: seen.extend(rows) or real(rows))
    rounds.load_examples(svc.store, svc.train_cfg, svc.sampler.format, svc.sampler.scored,
                         _decode(svc))
    every = svc.store.training_pairs()
    assert any(is_heldout(r["key"], 0.5) for r in every)  # some rows are held out
    assert seen and not any(is_heldout(r.get("group") or r["key"], 0.5) for r in seen)


def test_presence_rates_by_hand():
    """One length n: 1 - (1 - f)^n = share, so f = 1 - (1 - share)^(1/n)."""
    got = credit.presence_rates(np.array([0.5, 0.1]), np.array([10.0, 10.0]))
    assert got == pytest.approx([1 - 0.5 ** 0.1, 1 - 0.9 ** 0.1], rel=1e-6)
    mixed = credit.presence_rates(np.array([0.3]), np.array([5.0, 50.0]))[0]
    assert np.mean([1 - (1 - mixed) ** 5, 1 - (1 - mixed) ** 50]) == pytest.approx(0.3)


def test_word_groups_join_words_with_close_vectors():
    ws = ["good", "great", "river", "stone"]
    vectors = np.array([[1.0, 0.1, 0.0], [0.9, 0.0, 0.1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert credit.word_groups(ws, vectors, 0.5) == [frozenset({"good", "great"})]
    assert credit.word_groups(ws, vectors, 0.99) == []


POSITIVE = ["good", "great", "lovely", "happy", "glad", "kind"]


def _kind_vectors(ws):
    """The POSITIVE words close together, every other word on its own axis."""
    out = np.zeros((len(ws), len(ws) + 1))
    for i, w in enumerate(ws):
        out[i, 0 if w in POSITIVE else i + 1] = 1.0
    return out


def test_a_preference_spread_over_a_kind_of_word_is_credited_as_a_group():
    """Twelve votes, each chosen answer with one of six positive words (two votes each):
    no word alone passes, the group does, and each of its words is credited with it."""
    rng = random.Random(5)
    pairs = [(f"{_sentence(rng, 5)} {POSITIVE[i % 6]} {_sentence(rng, 5)}",
              _sentence(rng, 11)) for i in range(12)]
    assert credit.credited_words(pairs) == []
    got = credit.credited_words(pairs, vectors=_kind_vectors, similarity=0.5)
    assert sorted(c.word for c in got) == sorted(POSITIVE)
    assert all(c.favoured and set(c.group) == set(POSITIVE) for c in got)
    assert credit.credited_words(pairs, vectors=_kind_vectors, similarity=0.0) == []


def test_a_group_credits_only_the_words_that_lean_its_way():
    """'kind' is in the group but on the rejected side whenever it is on one side."""
    rng = random.Random(6)
    pairs = [(f"{_sentence(rng, 5)} {POSITIVE[i % 5]} {_sentence(rng, 5)}",
              _sentence(rng, 10) + (" kind" if i % 6 == 0 else "")) for i in range(24)]
    got = credit.credited_words(pairs, vectors=_kind_vectors, similarity=0.5)
    assert sorted(c.word for c in got) == sorted(POSITIVE[:5])


def test_a_word_that_comes_in_clumps_is_not_credited_for_where_it_is_missing():
    """The longer answer always loses; half of those are lists that say 'step' ten times,
    half are prose without it, and a third of the short winners say it once. Its rate is
    fitted to the share of answers holding it, so a long answer without it is no
    surprise and nothing is credited (a rate from its count, 200 of about 2,000 words,
    expects it in every long answer and credits it as favoured)."""
    for seed in range(5):
        rng = random.Random(seed)
        def steps(rng=rng):
            return " ".join(f"step {_sentence(rng, 3)}" for _ in range(10))
        pairs = [(_sentence(rng, 9) + (" step" if i % 3 == 0 else " " + _sentence(rng, 1)),
                  steps() if i % 2 else _sentence(rng, 40)) for i in range(40)]
        assert credit.credited_words(pairs) == []


def test_words_and_groups_each_get_half_the_error_rate_when_groups_outnumber_words():
    from trainer.training.credit import family_levels

    word_tests = [(frozenset([f"w{i}"]), []) for i in range(4)]
    group_tests = [(frozenset([f"g{i}", f"h{i}"]), []) for i in range(16)]
    both = word_tests + group_tests
    assert family_levels(both, 0.05, split=True) == (0.05 / 2 / 4, 0.05 / 2 / 16)
    assert family_levels(both, 0.05, split=False) == (0.05 / 20, 0.05 / 20)
    assert family_levels(word_tests, 0.05, split=True) == (0.05 / 4, 0.05 / 4)  # no groups
    assert family_levels(group_tests, 0.05, split=True) == (0.05 / 16, 0.05 / 16)
    assert family_levels([], 0.05, split=True) == (0.05, 0.05)
    few_groups = word_tests * 4 + group_tests[:4]  # 16 words, 4 groups: no split
    assert family_levels(few_groups, 0.05, split=True) == (0.05 / 20, 0.05 / 20)


def test_each_family_is_judged_at_its_own_level(monkeypatch):
    """A group passes at the groups' level, a word at the words' level, never the other's."""
    rng = random.Random(5)
    kind = [(f"{_sentence(rng, 5)} {POSITIVE[i % 6]} {_sentence(rng, 5)}", _sentence(rng, 11))
            for i in range(12)]
    word = [(f"{_sentence(rng, 5)} because", _sentence(rng, 6)) for _ in range(14)]
    pairs = kind + word
    both = {c.word for c in credit.credited_words(pairs, vectors=_kind_vectors,
                                                  similarity=0.5)}
    assert both == {*POSITIVE, "because"}
    real = credit.family_levels
    monkeypatch.setattr(credit, "family_levels", lambda *a: (real(*a)[0], 0.0))
    assert {c.word for c in credit.credited_words(
        pairs, vectors=_kind_vectors, similarity=0.5)} == {"because"}
    monkeypatch.setattr(credit, "family_levels", lambda *a: (0.0, real(*a)[1]))
    assert {c.word for c in credit.credited_words(
        pairs, vectors=_kind_vectors, similarity=0.5)} == set(POSITIVE)
