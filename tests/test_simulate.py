import pytest

from tests.svc_fixtures import tiny_service
from trainer import simulate as sim
from trainer.oracles import checked, keyword_oracle, load_oracle, positive, shorter

EVAL = ["Tell me a story.", "What is water?", "Name a color.", "Why do cats purr?",
        "Explain rain.", "Write a poem.", "Define gravity.", "Describe a tree."]


def test_shipped_oracles():
    assert shorter("q", "short", "much longer") == "a"
    assert shorter("q", "same", "same") == "tie"
    kw = keyword_oracle("because")
    assert kw("q", "yes", "yes because reasons") == "b"
    assert kw("q", "because a", "because bb") == "a"  # both mention it: the shorter
    assert positive("q", "a great and happy day", "a day") == "a"
    assert load_oracle("keyword", "x")("q", "x", "y") == "a"
    assert load_oracle("trainer.oracles:shorter") is shorter
    for oracle in (shorter, kw, positive):  # saying nothing never wins
        assert oracle("q", "", "a long answer because") == "b"
        assert oracle("q", "a long answer because", "  ") == "a"
        assert oracle("q", "", " ") == "both_bad"


def test_oracle_errors_are_clear():
    with pytest.raises(ValueError, match="unknown. Use 'shorter'"):
        load_oracle("longest")
    with pytest.raises(ValueError, match="cannot import it"):
        load_oracle("no_such_module:f")
    with pytest.raises(ValueError, match="oracle returned 'A'"):
        checked(lambda p, a, b: "A")("q", "a", "b")


@pytest.mark.slow
def test_tiny_learning_curve_rises_above_chance(tmp_path, tiny_model_dir):
    """The real loop (pool + trainer threads, DB, hot-swap) with the 'shorter' oracle."""
    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--max-new-tokens", "24",
                       "--accept-tolerance", "1", "--epochs", "2", "--ready-pairs", "8",
                       "--lr", "5e-3", start=False)
    svc.start(background=False)
    try:
        res = sim.run(svc, shorter, rounds=4, pairs_per_round=48, eval_prompts=EVAL,
                      samples=16, out_dir=tmp_path / "out", timeout_s=600)
    finally:
        svc.stop()
    rates = [r["win_rate"] for r in res["rounds"]]
    assert res["rounds"][-1]["serving"] != "base"
    # base vs base measures ~0.5 (128 comparisons). Runs peak between 0.66 and 0.88, but
    # later rounds can fall back (0.77 -> 0.51 seen): iterated DPO against the base
    # reference is not yet stable on this model, so only the rise itself is asserted.
    assert max(rates[1:]) >= 0.65, rates
    assert all(r["kl_per_token"] > 0 for r in res["rounds"][1:])
    assert all(0.0 <= r["ended"] <= 1.0 for r in res["rounds"])
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 1000
    assert (tmp_path / "out" / "learning_curve.json").is_file()
