import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from storage.readers import read_jsonl
from tests.svc_fixtures import tiny_service
from trainer.config import ModelConfig, PoolConfig, SamplingConfig, TrainConfig
from trainer.model.generate import Sample
from trainer.model.policy import BASE
from trainer.sim import simulate as sim
from trainer.sim.oracles import checked, keyword_oracle, load_oracle, positive, shorter
from trainer.testing import make_tiny_model_dir

EVAL = ["Tell me a story.", "What is water?", "Name a color.", "Why do cats purr?",
        "Explain rain.", "Write a poem.", "Define gravity.", "Describe a tree."]


def test_shipped_oracles():
    assert shorter("q", "short", "much longer") == "a"
    assert shorter("q", "same", "same") == "tie"
    kw = keyword_oracle("because")  # by default only the keyword decides
    assert kw("q", "yes", "yes because reasons") == "b"
    assert kw("q", "no", "a longer answer") == kw("q", "x because", "y because") == "tie"
    assert kw("q", "It is, BECAUSE.", "it is so") == "a"  # any case, next to punctuation
    by_length = load_oracle("keyword", "because", "shorter")
    assert by_length("q", "because a", "because bb") == "a"  # both mention it: the shorter
    assert by_length("q", "no", "a longer answer") == "a"
    assert by_length("q", "short", "long because") == "b"
    you = keyword_oracle("you")
    assert you("q", "a young tree", "if you can") == "b"  # whole words: not in 'young'
    thanks = keyword_oracle("thank  you")
    assert thanks("q", "Thank\nyou, friend", "thanks") == "a"  # a phrase, any spacing
    assert keyword_oracle("c++")("q", "I like c++.", "I like c") == "a"  # edges not letters
    assert keyword_oracle(".net")("q", "use asp.net", "no") == "tie"  # not inside a word
    assert positive("q", "a great and happy day", "a day") == "a"
    assert load_oracle("keyword", "x")("q", "x", "y") == "a"
    assert load_oracle("trainer.sim.oracles:shorter") is shorter
    for oracle in (shorter, kw, positive):  # saying nothing never wins
        assert oracle("q", "", "a long answer because") == "b"
        assert oracle("q", "a long answer because", "  ") == "a"
        assert oracle("q", "", " ") == "both_bad"


def test_held_out_prompts_are_spread_over_the_whole_list():
    prompts = [f"p{i}" for i in range(102)]
    held, voted = sim.split_prompts(prompts, 16)
    assert len(held) == 16 and len(voted) == 86 and not set(held) & set(voted)
    idx = [prompts.index(p) for p in held]
    assert idx[0] < 8 and idx[-1] > 94  # from the head to the tail, not the last 16
    assert max(b - a for a, b in zip(idx, idx[1:])) <= 7
    assert sim.split_prompts(["a", "b"], 1) == (["b"], ["a"])
    for bad in (0, 102, -3):
        with pytest.raises(ValueError, match=f"--eval-prompts {bad}: there are 102"):
            sim.split_prompts(prompts, bad)


def test_oracles_report_what_they_reward():
    name, fn = checked(keyword_oracle("because")).measure  # survives the checking wrapper
    assert name == "share saying 'because'" and fn("yes, because") == 1.0 and fn("no") == 0.0
    answers = [{"serving": "a great day", "base": "a day"}, {"serving": "good", "base": "x"}]
    assert sim.oracle_measure(positive, answers) == {
        "name": "positive words per answer", "serving": 1.0, "base": 0.0}
    assert sim.oracle_measure(lambda p, a, b: "a", answers) is None  # a plug-in without one


class _FakeSampler:
    """Answers whose length depends on the version: what the loop does, minus the model."""

    def sample(self, rows, version, seed):
        return [Sample(text=f"{version} says {'so ' * (i % 3)}because", n_tokens=3, end="\n")
                for i, _ in enumerate(rows)]


def _fake_service(sampler) -> SimpleNamespace:
    """What ``simulate.run`` reads of the service, with a scripted sampler."""
    return SimpleNamespace(
        train_cfg=TrainConfig(votes_per_round=4, max_length=64), pool_cfg=PoolConfig(),
        model_cfg=ModelConfig(model="fake"), sampling=SamplingConfig(),
        policy=SimpleNamespace(serving=BASE), sampler=sampler)


def test_run_writes_each_round_as_it_goes(tmp_path, monkeypatch):
    """Results are on disk after every round: a run that dies in round 1 keeps round 0."""
    svc = _fake_service(_FakeSampler())

    def dies(*args, **kwargs):
        raise TimeoutError("no round finished")

    monkeypatch.setattr(sim, "vote_until_round", dies)
    with pytest.raises(TimeoutError):
        sim.run(svc, checked(keyword_oracle("because")), rounds=2, pairs_per_round=4,
                eval_prompts=EVAL[:3], samples=2, out_dir=tmp_path)
    res = json.loads((tmp_path / "learning_curve.json").read_text())
    assert [r["round"] for r in res["rounds"]] == [0]
    assert res["rounds"][0]["oracle_measure"] == {"name": "share saying 'because'",
                                                  "serving": 1.0, "base": 1.0}
    rows = read_jsonl(tmp_path / "answers.jsonl")
    assert len(rows) == 3 * 2 and {r["round"] for r in rows} == {0}
    assert set(rows[0]) == {"round", "serving_version", "prompt", "serving", "base", "verdict"}
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*tmp*"))
    for bad in ({"rounds": -1}, {"samples": 0}):
        with pytest.raises(ValueError, match="need rounds >= 0 and the other two >= 1"):
            sim.run(svc, shorter, **{"rounds": 1, "pairs_per_round": 4, "samples": 1,
                                     "eval_prompts": EVAL, "out_dir": tmp_path / "x", **bad})


class _SeparatorSampler:
    """Answers holding U+2028, U+2029 and U+0085, which JSON leaves unescaped."""

    def sample(self, rows, version, seed):
        return [Sample(text=f"{version} one\u2028two\u2029three\u0085four", n_tokens=3,
                       end="\n") for _ in rows]


def test_answers_jsonl_keeps_line_separators_inside_answers(tmp_path, monkeypatch):
    svc = _fake_service(_SeparatorSampler())
    prompts = ["Why\u2028now?", *EVAL[:2]]
    sim.run(svc, shorter, rounds=0, pairs_per_round=4, eval_prompts=prompts, samples=1,
            out_dir=tmp_path)
    rows = read_jsonl(tmp_path / "answers.jsonl")
    assert len(rows) == 3 and rows[0]["prompt"] == "Why\u2028now?"
    assert {r["serving"] for r in rows} == {f"{BASE} one\u2028two\u2029three\u0085four"}


def test_oracle_errors_are_clear():
    with pytest.raises(ValueError, match="unknown. Use 'shorter'"):
        load_oracle("longest")
    with pytest.raises(ValueError, match="cannot import it"):
        load_oracle("no_such_module:f")
    with pytest.raises(ValueError, match="--keyword ' ' is empty"):
        load_oracle("keyword", " ")
    with pytest.raises(ValueError, match="--keyword-tiebreak 'longer': use one of"):
        load_oracle("keyword", "because", "longer")
    def odd(prompt, a, b):
        return "a"
    odd.measure = len  # not (name, fn)
    with pytest.raises(ValueError, match="'odd' has measure=<built-in function len>: it must"):
        checked(odd)
    with pytest.raises(ValueError, match="oracle returned 'A'"):
        checked(lambda p, a, b: "A")("q", "a", "b")


def test_run_refuses_rounds_that_would_overlap_the_voting(tmp_path, tiny_model_dir):
    """A round must start at exactly pairs_per_round votes, else thread timing decides
    which votes it sees, and the learning curve measures thread timing."""
    svc = tiny_service(tmp_path / "data", tiny_model_dir, start=False)  # votes_per_round 16
    with pytest.raises(ValueError, match="votes_per_round=16 votes: set both"):
        sim.run(svc, shorter, rounds=1, pairs_per_round=48, eval_prompts=EVAL, samples=1,
                out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def learnable_tiny_dir(tmp_path_factory):
    """The tiny model with random weights of std 0.1 instead of 0.02.

    At 0.02 its next-token distribution is uniform (entropy 5.98 of a possible 5.99 nats):
    no adapter moves it more than ~0.03 nats of KL per token, and learning curves on it
    were a random walk (best rounds 0.60-0.96 over 25 runs). At 0.1 the KL grows round by
    round, as on a real model.
    """
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-learnable"), init_std=0.1)


class _Recorder:
    """A progress sink that keeps every update."""

    def __init__(self) -> None:
        self.updates: list[tuple[float, float, str]] = []

    def update(self, done: float, total: float, desc: str) -> None:
        self.updates.append((done, total, desc))


def learning_run(tmp_path: Path, model_dir: Path, seed: int, progress=None) -> dict:
    """One simulate run: 4 rounds of 48 'shorter' votes, 8 held-out prompts x 16."""
    svc = tiny_service(tmp_path / "data", model_dir, "--max-new-tokens", "24",
                       "--accept-tolerance", "1", "--epochs", "2", "--ready-pairs", "8",
                       "--lr", "2e-2", "--votes-per-round", "48", "--seed", str(seed),
                       start=False)
    svc.start(background=False)
    try:
        return sim.run(svc, shorter, rounds=4, pairs_per_round=48, eval_prompts=EVAL,
                       samples=16, out_dir=tmp_path / "out", seed=seed, timeout_s=600,
                       progress=progress)
    finally:
        svc.stop()


@pytest.mark.slow
def test_tiny_learning_curve_rises_above_chance(tmp_path, learnable_tiny_dir):
    """The real loop (pool + trainer threads, DB, hot-swap) with the 'shorter' oracle.

    Measured over 26 runs of these settings (seeds 0-18 and six other model seeds):
    base vs base 0.39-0.59 (128 comparisons); the best round 0.65-0.94 in 23 runs and
    0.57-0.63 in 3: on a random model some runs learn late or go the wrong way first.
    So another seed runs only while the best round stays under 0.65 (all three seeds:
    about 1 in 650 runs).
    The pool and trainer are threads, so no run is bit-for-bit repeatable.
    """
    attempts = []
    for seed in (0, 1, 2):
        bar = _Recorder()
        res = learning_run(tmp_path / f"seed{seed}", learnable_tiny_dir, seed, bar)
        rates = [r["win_rate"] for r in res["rounds"]]
        attempts.append(rates)
        if max(rates[1:]) >= 0.65:
            break
    assert max(rates[1:]) >= 0.65, attempts
    assert res["rounds"][-1]["serving"] != "base"
    assert all(r["kl_per_token"] > 0 for r in res["rounds"][1:])
    assert all(0.0 <= r["ended"] <= 1.0 for r in res["rounds"])
    assert [r["answers_read"] for r in res["rounds"]] == [0, 96, 192, 288, 384]
    assert len({r["ended_base"] for r in res["rounds"]}) == 1  # base is measured once
    assert (48, 48, f"round 4/4: votes cast (last win rate {rates[3]:.0%})") in bar.updates
    out = tmp_path / f"seed{seed}" / "out"
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert (out / "learning_curve.json").is_file()
    rows = read_jsonl(out / "answers.jsonl")
    assert len(rows) == 5 * 8 * 16 and {r["round"] for r in rows} == {0, 1, 2, 3, 4}
    last = [r for r in rows if r["round"] == 4]
    assert sum(len(r["serving"]) for r in last) / len(last) == pytest.approx(
        res["rounds"][-1]["oracle_measure"]["serving"], abs=1e-3)  # mean answer chars



@pytest.mark.parametrize("answers,expected", [
    (["x because", "y", "z", "w"], ("rank", 0, None)),  # one decides: best only
    (["x because", "y because", "z", "w"], ("rank", 0, 3)),  # two levels: one of each
    (["x", "y", "z", "w"], ("tie", None, None)),
    (["", " ", "", ""], ("both_bad", None, None)),
])
def test_rank_vote_marks_what_the_oracle_can_tell(answers, expected):
    from trainer.sim.oracles import rank_vote

    assert rank_vote(checked(keyword_oracle("because")), "q", answers) == expected


def test_rank_vote_with_a_full_order_marks_best_and_worst():
    from trainer.sim.oracles import rank_vote

    assert rank_vote(shorter, "q", ["xxx", "y", "zz", "wwww"]) == ("rank", 1, 3)


def test_resume_needs_a_stopped_run_with_the_same_settings(tmp_path):
    svc = _fake_service(_FakeSampler())
    args = {"rounds": 1, "pairs_per_round": 4, "eval_prompts": EVAL[:2], "samples": 1,
            "out_dir": tmp_path}
    with pytest.raises(ValueError, match="--resume: .*learning_curve.json does not exist"):
        sim.run(svc, shorter, resume=True, **args)
    sim.run(svc, shorter, labels={"oracle": "shorter"}, **{**args, "rounds": 0})
    with pytest.raises(ValueError, match=r"made with oracle='shorter' \(now 'positive'\), "
                                         r"samples_per_prompt=1 \(now 2\); give the same"):
        sim.run(svc, shorter, labels={"oracle": "positive"}, resume=True,
                **{**args, "samples": 2})
    svc.sampling = SamplingConfig(top_p=0.8)  # every setting counts, not a chosen few
    with pytest.raises(ValueError, match=r"made with top_p=0.95 \(now 0.8\); give the same"):
        sim.run(svc, shorter, labels={"oracle": "shorter"}, resume=True, **args)


def test_resume_continues_a_stopped_run(tmp_path, tiny_model_dir):
    """A run stopped after round 1 with 2 of round 2's 4 votes cast: the restarted run
    keeps rounds 0-1, casts the 2 missing votes, counts all 4 in round 2's cost, and
    runs round 3 as usual."""
    def service():
        svc = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1",
                           "--votes-per-round", "4", "--health-samples", "0", start=False)
        svc.start(background=False)
        return svc

    run = {"pairs_per_round": 4, "eval_prompts": EVAL[:2], "samples": 1,
           "out_dir": tmp_path / "out", "timeout_s": 300, "labels": {"oracle": "shorter"}}
    svc = service()
    try:
        first = sim.run(svc, shorter, rounds=1, **run)
        svc.trainer.stop()  # the stop: 2 more votes, no round for them
        for _ in range(2):
            deadline = time.time() + 60
            while (item := svc.next_item(sim.ANNOTATOR)) is None and time.time() < deadline:
                time.sleep(0.1)
            sim.cast_vote(svc, shorter, item)
    finally:
        svc.stop()
    svc = service()
    try:
        res = sim.run(svc, shorter, rounds=3, resume=True, **run)
    finally:
        svc.stop()
    assert res["rounds"][:2] == first["rounds"]
    assert [r["round"] for r in res["rounds"]] == [0, 1, 2, 3]
    assert [r["answers_read"] for r in res["rounds"]] == [0, 8, 16, 24]
    assert [r["round_id"] for r in res["rounds"][1:]] == [1, 2, 3]
    assert res["settings"]["oracle"] == "shorter"
    assert svc.store.usable_votes_since(0) == 12
    rows = read_jsonl(tmp_path / "out" / "answers.jsonl")
    assert [r["round"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_round_a_stop_cut_short_is_not_the_round_a_resumed_run_waits_for():
    from storage.runs import INTERRUPTED

    rounds = [{"id": 3, "status": "failed", "error": INTERRUPTED},
              {"id": 4, "status": "running", "error": None},
              {"id": 2, "status": "accepted", "error": None}]
    store = SimpleNamespace(list_rounds=lambda limit: rounds, get_state=lambda k, d: 32,
                            usable_votes_since=lambda vote_id: 16 if vote_id == 32 else 0)
    svc = SimpleNamespace(store=store)
    assert sim.finished_rounds(svc, 2) == []
    assert sim.votes_left(svc, 2, 16) == 0  # its votes are cast: round 4 trains on them
    rounds[1] = {"id": 4, "status": "rejected", "error": "answers stopped ending"}
    assert [r["id"] for r in sim.finished_rounds(svc, 2)] == [4]
    assert [r["id"] for r in sim.finished_rounds(svc, 1)] == [2, 4]
