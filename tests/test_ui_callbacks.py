"""UI callbacks and views as plain functions: views on hand-made data, handlers on a fake
service (fast) and on the real service over the tiny model."""

from __future__ import annotations

import math

import gradio as gr
import pytest

from app import views
from app.api import Access, Handlers, help_table, is_not_ready
from tests.ui_fixtures import (
    ADMIN,
    ANNOTATOR,
    FakeService,
    NotReady,
    real_service,
    request,
    wait_for,
    write_users,
)
from trainer.config import AppConfig

ZW = "\u200b"


# --------------------------------------------------------------------------- views
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
    lo, hi = views.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert views.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = views.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)


def test_leaderboard_ties_half_both_bad_excluded():
    arena = [{"version": "v2", "opponent": "base", "wins": 3, "losses": 1, "ties": 2,
              "both_bad": 4, "n": 10}]
    adapters = [{"version": "v10", "status": "ready"}, {"version": "v2", "status": "ready",
                 "metrics": {"heldout_after": {"accuracy": 0.8}}}]
    board = views.leaderboard_frame(arena, adapters)
    assert list(board["version"]) == ["v2", "v10"]  # numeric order, not text order
    row = board.iloc[0]
    assert row["win rate"] == pytest.approx(4 / 6, abs=1e-3)
    assert row["both bad"] == 4 and row["votes"] == 10 and row["held-out acc"] == 0.8
    lo, hi = views.wilson_interval(4, 6)
    assert row["95% CI"] == f"{lo:.0%} – {hi:.0%}"
    assert board.iloc[1]["win rate"] is None or math.isnan(board.iloc[1]["win rate"])
    plot = views.arena_plot_frame(board)
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
              {"id": 1, "status": "accepted", "adapter_version": "v1", "counts": {"train": 5},
               "metrics": {"heldout_after": {"accuracy": 0.6}}},
              {"id": 3, "status": "failed", "metrics": {}, "error": "boom"}]
    held = views.heldout_frame(rounds)
    assert list(held["label"]) == ["v1", "r2 (rejected)"]
    table = views.rounds_frame(rounds)
    assert list(table["round"]) == [2, 1, 3] and table.iloc[2]["error"] == "boom"


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


# --------------------------------------------------------------------------- handlers (fake)
LOCAL = AppConfig()


@pytest.fixture
def fake():
    return FakeService()


@pytest.fixture
def users(tmp_path):
    return write_users(tmp_path / "users.json")


def _out(values):
    from app.api import ANNOTATE_OUTPUTS

    return dict(zip(ANNOTATE_OUTPUTS, values))


def test_vote_commits_then_moves_on(fake):
    h = Handlers(fake, LOCAL)
    first = _out(h.on_load(request(None)))
    assert first["state"]["id"] == 1 and "&lt;script&gt;" in first["prompt"]
    out = _out(h.vote("b", "  my better answer ", 1, first["state"], request(None)))
    vote = fake.store.votes[-1]
    assert vote["pair_id"] == 1 and vote["annotator"] == "local" and vote["choice"] == "b"
    assert vote["better_answer"] == "my better answer" and vote["decide_ms"] >= 0
    assert out["state"]["id"] == 2 and "**disagrees**" in out["reveal"] and out["better"] == ""
    assert "1 votes today" in out["progress"]


def test_vote_errors_store_nothing(fake):
    h = Handlers(fake, LOCAL)
    with pytest.raises(gr.Error, match="No pair is shown"):
        h.vote("a", "", None, None, request(None))
    with pytest.raises(gr.Error, match="choice 'c' is not valid: use one of a, b, tie"):
        h.vote("c", "", 1, {"id": 1, "shown": 0}, request(None))
    with pytest.raises(gr.Error, match="pair 99 does not exist"):
        h.vote("a", "", None, {"id": 99, "shown": 0}, request(None))
    with pytest.raises(gr.Error, match="meant for pair 1, which was already answered"):
        h.vote("a", "", 1, {"id": 2, "shown": 0}, request(None))
    with pytest.raises(gr.Error, match="pair id 'x' is not a number"):
        h.commit_vote("local", "x", "a", None, None)
    assert fake.store.votes == []


def test_waiting_then_poll_finds_pair(fake):
    fake.store.pairs.clear()
    h = Handlers(fake, LOCAL)
    out = _out(h.on_load(request(None)))
    assert out["state"] is None and "Generating pairs" in out["prompt"]
    assert out["timer"].active is True
    assert _out(h.poll(None, request(None)))["timer"].active is True
    fake.store.pairs[5] = {"id": 5, "prompt": "p", "response_a": "x", "response_b": "y",
                           "assigned": None}
    out = _out(h.poll(None, request(None)))
    assert out["state"]["id"] == 5 and out["timer"].active is False


def test_loading_banner_and_ask_while_loading(fake):
    fake.ready = False
    h = Handlers(fake, LOCAL)
    out = _out(h.on_load(request(None)))
    assert "Loading the model" in out["banner"] and "40%" in out["banner"]
    assert out["timer"].active is True  # keeps polling the loading progress
    with pytest.raises(gr.Error, match="model is loading"):
        h.ask("Why is the sky blue?", None, request(None))
    assert is_not_ready(NotReady("x")) and not is_not_ready(ValueError("x"))


def test_ask_validates_and_shows_pair(fake):
    h = Handlers(fake, AppConfig(max_prompt_chars=10))
    with pytest.raises(gr.Error, match="prompt is empty"):
        h.ask("   ", None, request(None))
    with pytest.raises(gr.Error, match="11 characters long: shorten it to at most 10"):
        h.ask("x" * 11, None, request(None))
    *outs, box = h.ask("Hi there", None, request(None))
    assert _out(outs)["state"]["id"] == 4 and box == ""


def test_skip_moves_on_without_a_vote(fake):
    h = Handlers(fake, LOCAL)
    state = _out(h.on_load(request(None)))["state"]
    out = _out(h.skip(state, request(None)))
    assert fake.store.votes == [] and out["reveal"] == "*Skipped.*"


def test_roles_checked_on_server(fake, users):
    h = Handlers(fake, AppConfig(auth_file=str(users)))
    bob, alice = request(ANNOTATOR), request(ADMIN)
    admin_calls = [lambda r: h.train_now(r), lambda r: h.rollback("v1", r),
                   lambda r: h.save_settings([], [], r), lambda r: h.export("dpo", r),
                   lambda r: h.download_adapter(r), lambda r: h.import_prompts("x.txt", r),
                   lambda r: h.train_live(r), lambda r: h.data_view(r)]
    for call in admin_calls:
        with pytest.raises(gr.Error, match=f"Only admins may .*'{ANNOTATOR}' is an annotator"):
            call(bob)
    assert fake.trained == 0 and fake.store.serving == "base"
    assert "requested by alice" in h.train_now(alice) and fake.trained == 1
    assert "`v1`" in h.rollback("v1", alice) and fake.store.serving == "v1"
    with pytest.raises(gr.Error, match="Only admins .*'mallory' is not in the users file"):
        h.train_now(request("mallory"))
    with pytest.raises(gr.Error, match="not logged in"):
        h.vote("a", "", 1, {"id": 1, "shown": 0}, request(None))
    on_load = h.on_load(bob)
    assert "bob** (annotator)" in on_load[-3] and on_load[-1].visible is False
    assert h.on_load(alice)[-1].visible is True


def test_local_mode_is_admin(fake):
    access = Access("")
    assert access.user(request(None)) == "local" and access.is_admin(request(None))
    assert "Local single-user mode" in Handlers(fake, LOCAL).banner()


def test_settings_and_rollback_errors(fake):
    h = Handlers(fake, LOCAL)
    specs = views.settings_specs(fake.settings(), help_table())
    values = [s["value"] for s in specs]
    assert h.save_settings(specs, values, request(None)) == {}
    i = next(i for i, s in enumerate(specs) if s["name"] == "beta")
    values[i] = -1.0
    with pytest.raises(gr.Error, match="Settings not saved. Invalid settings"):
        h.save_settings(specs, values, request(None))
    values[i] = 0.3
    assert h.save_settings(specs, values, request(None)) == {"train": {"beta": 0.3}}
    with pytest.raises(gr.Error, match="Cannot roll back to 'v9'"):
        h.rollback("v9", request(None))
    with pytest.raises(gr.Error, match="there is no adapter to download"):
        h.download_adapter(request(None))
    with pytest.raises(gr.Error, match="export format 'xml' is not valid"):
        h.export("xml", request(None))
    with pytest.raises(gr.Error, match="Choose a prompts file first"):
        h.import_prompts(None, request(None))


def test_dashboards_render(fake):
    h = Handlers(fake, LOCAL)
    md, bar, loss, acc, margins, held, arena, rounds = h.train_live(request(None))
    assert "Serving" in md and len(loss) == 2 and len(margins) == 6 and len(rounds) == 1
    assert held.value["data"] and arena.value["data"]
    board = h.leaderboard()
    assert board.iloc[0]["win rate"] == pytest.approx(0.7)
    counts, votes = h.data_view(request(None))
    assert "| pairs | 3 |" in counts


def test_guidelines_file(tmp_path):
    from app.ui import load_guidelines

    assert "Which answer is better" in load_guidelines("")
    f = tmp_path / "g.md"
    f.write_text("# Our rules", encoding="utf-8")
    assert load_guidelines(str(f)) == "# Our rules"
    with pytest.raises(ValueError, match="guidelines file .*missing.md cannot be read"):
        load_guidelines(str(tmp_path / "missing.md"))


def test_build_ui_api_surface(fake):
    from app.ui import build_ui

    demo = build_ui(fake, LOCAL)
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == {"next_pair", "vote", "status", "train_now", "rollback",
                      "update_settings"}
    assert all(fn.api_visibility == "private" for fn in demo.fns.values()
               if fn.api_name not in public)


# --------------------------------------------------------------------------- real service
@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir):
    pytest.importorskip("storage.db")
    s = real_service(tmp_path_factory.mktemp("ui-real"), tiny_model_dir)
    yield s
    s.stop()


def test_real_vote_roundtrip(svc):
    h = Handlers(svc, AppConfig(data_dir=str(svc.data_dir)))
    state = wait_for(lambda: _out(h.poll(None, request(None)))["state"]
                     if svc.store.counts().get("pairs_ready", 1) else None, timeout=90)
    out = _out(h.vote("a", "A better answer.", state["id"], state, request(None)))
    votes = svc.store.recent_votes(5)
    assert votes and votes[0]["pair_id"] == state["id"] and votes[0]["choice"] == "a"
    assert "Your vote on pair" in out["reveal"]


def test_real_dashboards_and_exports(svc, tmp_path):
    h = Handlers(svc, AppConfig(data_dir=str(svc.data_dir)))
    md, *_ = h.train_live(request(None))
    assert "Serving" in md
    h.leaderboard()
    h.data_view(request(None))
    path = h.export("votes", request(None))
    assert path.endswith(".csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(gr.Error, match="Nothing imported from bad.jsonl"):
        h.import_prompts(str(bad), request(None))
