"""app/views.py as plain functions on hand-made data: escaping of untrusted text, pair,
reveal, banner and progress Markdown, the train-tab and leaderboard frames, settings."""

from __future__ import annotations

import math

import pytest

from app import leaderboard, views
from app.api import help_table

ZW = "\u200b"


@pytest.mark.parametrize("raw, must_not, must", [
    ("<script>alert(1)</script>", "<script", "&lt;script&gt;"),
    ('<img src=x onerror="alert(1)">', "<img", "&lt;img"),
    ("[click](javascript:alert(1))", "javascript:", f"java{ZW}script:"),
    ("[click](JaVaScRiPt\\:alert(1))", "JaVaScRiPt\\:", f"JaVa{ZW}ScRiPt"),
    ("[x](&#106;avascript:alert(1))", "&#106;", "&amp;#106;"),
    ("[x](data:text/html,<b>hi</b>)", "data:text", f"d{ZW}ata:text"),
    ("![tracker](http://evil.example/p.png)", "![", "!\\[tracker]"),
    ("<a href='javascript:x'>y</a>", "<a ", "&lt;a "),
])
def test_safe_markdown_neutralises_html_and_script_links(raw, must_not, must):
    out = views.safe_markdown(raw)
    assert must_not not in out and must in out


def test_safe_markdown_keeps_code_fences_and_plain_prose():
    text = "Use this:\n```c\n#include <stdio.h>\n```\nthen <b>bold</b>\nInput data: 3"
    out = views.safe_markdown(text)
    assert "#include <stdio.h>" in out  # code blocks show text literally anyway
    assert "&lt;b&gt;bold&lt;/b&gt;" in out
    assert "Input data: 3" in out  # prose 'data:' is left alone
    # An unclosed fence runs to the end in Markdown, so everything after is code too.
    assert "<x>" in views.safe_markdown("```\n<x>")
    # A backtick fence whose info string has a backtick is not a fence: escaped.
    assert "&lt;x&gt;" in views.safe_markdown("```a`b\n<x>\n```")
    assert views.safe_markdown(None) == ""


def test_pair_markdown_waiting_and_pair():
    prompt, a, b = views.pair_markdown(None)
    assert "Generating pairs" in prompt and a == b == ""
    prompt, a, b = views.pair_markdown({"id": 7, "prompt": "<i>q</i>", "response_a": "",
                                        "response_b": "ok"})
    assert "pair 7" in prompt and "&lt;i&gt;" in prompt and a == "*(empty)*" and b == "ok"


def test_wilson_interval_known_values():
    lo, hi = leaderboard.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert leaderboard.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = leaderboard.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)


def test_leaderboard_ties_half_both_bad_excluded():
    arena = [{"version": "v2", "opponent": "base", "wins": 3, "losses": 1, "ties": 2,
              "both_bad": 4, "n": 10}]
    adapters = [{"version": "v10", "status": "ready"}, {"version": "v2", "status": "ready",
                 "metrics": {"heldout_after": {"accuracy": 0.8}}}]
    board = leaderboard.leaderboard_frame(arena, adapters)
    assert list(board["version"]) == ["v2", "v10"]  # numeric order, not text order
    row = board.iloc[0]
    assert row["win rate"] == pytest.approx(4 / 6, abs=1e-3)
    assert row["both bad"] == 4 and row["votes"] == 10 and row["held-out acc"] == 0.8
    lo, hi = leaderboard.wilson_interval(4, 6)
    assert row["95% CI"] == f"{lo:.0%} – {hi:.0%}"
    assert board.iloc[1]["win rate"] is None or math.isnan(board.iloc[1]["win rate"])
    plot = leaderboard.arena_plot_frame(board)
    assert list(plot["version"]) == ["v2"]


def test_steps_frames_run_on_across_rounds_and_skip_bad_values():
    rows = [{"round_id": 2, "step": 1, "metrics": {"loss": 0.5, "rewards/accuracies": 1.0}},
            {"round_id": 1, "step": 2, "metrics": {"loss": float("nan")}},
            {"round_id": 1, "step": 1, "metrics": {"loss": 0.7, "rewards/margins": 0.1}}]
    f = views.steps_frames(rows)
    assert list(f["loss"]["step"]) == [1, 3] and list(f["loss"]["series"]) == ["round 1",
                                                                              "round 2"]
    assert list(f["margins"]["series"]) == ["rewards/margins"]
    assert list(f["accuracy"]["value"]) == [1.0]
    assert views.steps_frames([])["loss"].empty


def test_heldout_and_rounds_frames():
    rounds = [{"id": 2, "status": "rejected", "metrics": {"heldout_before": {"accuracy": 0.6},
                                                          "heldout_after": {"accuracy": 0.4}},
               "error": "fell"},
              {"id": 4, "status": "rejected", "error": "answers stopped ending",
               "metrics": {"health_before": {"healthy": 0.9}, "health_after": {"healthy": 0.1}}},
              {"id": 1, "status": "accepted", "adapter_version": "v1",
               "counts": {"train": 5, "credited": [
                   {"word": "because", "favoured": True, "chosen_only": 9, "rejected_only": 0},
                   {"word": "sorry", "favoured": False, "chosen_only": 0, "rejected_only": 6}]},
               "metrics": {"heldout_after": {"accuracy": 0.6}}},
              {"id": 3, "status": "failed", "metrics": {}, "error": "boom"}]
    held = views.heldout_frame(rounds)
    assert list(held["label"]) == ["v1", "r2 (rejected)"]
    table = views.rounds_frame(rounds)
    assert list(table["round"]) == [2, 4, 1, 3] and table.iloc[3]["error"] == "boom"
    assert (table.iloc[1]["ended before"], table.iloc[1]["ended after"]) == (0.9, 0.1)
    assert table.iloc[0][["ended before", "ended after"]].isna().all()  # no check recorded
    assert table.iloc[2]["credited words"] == "because (9:0), -sorry (0:6)"
    assert table.iloc[0]["credited words"] == ""


def test_reveal_markdown_cases():
    base = {"pair_id": 4, "choice": "a", "version_a": "v2", "version_b": "base", "arena": True,
            "reward_a": None, "reward_b": None, "predicted": None, "prediction_correct": None}
    md = views.reveal_markdown(base)
    assert "A was `v2`" in md and "B was `base`" in md and "no prediction" in md
    md = views.reveal_markdown({**base, "arena": False, "version_b": "v2", "reward_a": 0.3,
                                "reward_b": -0.1, "predicted": "a",
                                "prediction_correct": True})
    assert "Both answers came from `v2`" in md and "**agrees**" in md and "+0.300" in md
    md = views.reveal_markdown({**base, "choice": "tie", "arena": False, "reward_a": 0.1,
                                "reward_b": 0.2, "predicted": "b"})
    assert "not scored" in md


def test_banner_progress_and_bar():
    loading = {"ready": False, "loading": {"desc": "Converting <gguf>", "fraction": 0.5,
                                           "elapsed_s": 3}, "load_error": None}
    md = views.banner_markdown(loading, local_mode=True)
    assert "Local single-user mode" in md and "50%" in md and "&lt;gguf&gt;" in md
    assert views.banner_markdown({"ready": True}, local_mode=False) == ""
    assert "failed to load" in views.banner_markdown({"load_error": "OSError: x"}, False)
    bar = views.progress_bar_html(1.7, "<b>")
    assert 'width:100.0%' in bar and "&lt;b&gt;" in bar
    md = views.progress_markdown("bob", {"today": 2, "total": 5, "agreement": 0.75,
                                         "agreement_n": 4}, "v3")
    assert "2 votes today" in md and "5 in total" in md and "75% of 4" in md and "v3" in md


def test_trainer_markdown():
    md, frac, label = views.trainer_markdown({"serving_adapter": "v1", "trainer": {
        "state": "training", "progress": {"done": 3, "total": 6, "desc": "Round 2: training",
                                          "fraction": 0.5}, "last_error": "x<y"}})
    assert "`v1`" in md and "training" in md and "x&lt;y" in md
    assert frac == 0.5 and label == "Round 2: training: 3/6"
    md, _, _ = views.trainer_markdown({"settings": {"pool": {"vote_mode": "rank",
                                                             "rank_size": 4},
                                                    "train": {"method": "dno"}}})
    assert "**voting**: rank-of-4 (best / worst), **method**: dno" in md


def test_settings_specs_and_changes():
    current = {"train": {"loss": "sigmoid", "beta": 0.1, "epochs": 2}}
    specs = views.settings_specs(current, help_table())
    kinds = {s["name"]: s["kind"] for s in specs}
    assert kinds == {"loss": "choice", "beta": "float", "epochs": "int"}
    assert "ipo" in specs[0]["choices"] and specs[1]["help"]
    changes, problems = views.settings_changes(specs, ["ipo", 0.1, 3.0], current)
    assert changes == {"train": {"loss": "ipo", "epochs": 3}} and not problems
    changes, problems = views.settings_changes(specs, ["sigmoid", None, 2.5], current)
    assert any("train.beta is empty" in p for p in problems)
    assert any("train.epochs=2.5" in p for p in problems)


def test_version_choices_and_counts():
    adapters = [{"version": "v1", "status": "ready"}, {"version": "v3", "status": "ready"},
                {"version": "v2", "status": "failed"}]
    assert views.version_choices(adapters) == ["base", "v3", "v1"]
    assert "| votes | 3 |" in views.counts_markdown({"votes": 3})
    df = views.votes_frame([{"id": 1, "better_answer": "x" * 100, "meta": {"a": 1}}])
    assert list(df.columns) == ["id", "better_answer"] and df.iloc[0, 1].endswith("…")
