"""UI callbacks (app/api.py Handlers, app/access.py Access) as plain functions on the REAL service over
the tiny model: a fresh data dir per test and no background threads (pairs, votes and
rounds are made on demand), so every test is deterministic. Views: tests/test_ui_views.py;
settings: tests/test_settings_callbacks.py; rank mode: tests/test_rank_callbacks.py."""

from __future__ import annotations

import shutil

import gradio as gr
import pytest

from app import views
from app.access import Access
from app.api import Handlers, help_table, is_not_ready
from app.config import AppConfig
from storage.readers import read_jsonl
from storage.votes import MAX_BETTER_ANSWER
from tests.svc_fixtures import tiny_service
from tests.ui_fixtures import (
    ADMIN,
    ANNOTATOR,
    HOSTILE,
    add_hostile_pair,
    annotate_out,
    arena_side,
    request,
    train_v1,
    vote_count,
    write_users,
)
from trainer.service import NotReady

ZW = "\u200b"


LOCAL = AppConfig()  # no auth file: local single-user mode, the caller is 'local', an admin
ME = request(None)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tiny_model_dir):
    """A data dir after one real DPO round on 8 voted pairs (v1 serves), made once."""
    data = tmp_path_factory.mktemp("trained") / "data"
    s = tiny_service(data, tiny_model_dir, "--accept-tolerance", "1")
    train_v1(s)
    s.stop()
    s.store.close()  # the last connection checkpoints the WAL into the DB file
    return data


@pytest.fixture
def trained(trained_dir, tmp_path, tiny_model_dir):
    """A fresh service on a copy of ``trained_dir``, serving v1 (the adapter files it loads
    stay in ``trained_dir``: no test writes them)."""
    shutil.copytree(trained_dir, tmp_path / "data")
    s = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1")
    assert s.policy.serving == "v1"
    yield s
    s.stop()


@pytest.fixture
def loading(tmp_path, tiny_model_dir):
    """A real service that was built but not started: its model is still loading."""
    return tiny_service(tmp_path / "data", tiny_model_dir, start=False)


@pytest.fixture
def users(tmp_path):
    return write_users(tmp_path / "users.json")


def test_vote_commits_reveals_prediction_then_moves_on(trained):
    trained.update_settings({"pool": {"arena_fraction": 0.0}})
    ids = trained.pool.fill_once(2)
    pairs = [trained.store.get_pair(i) for i in ids]
    rewards = [(p["gen_config"]["reward_a"], p["gen_config"]["reward_b"]) for p in pairs]
    assert all(p["version_a"] == p["version_b"] == "v1" for p in pairs)
    assert all(ra is not None and ra != rb for ra, rb in rewards)  # real v1-vs-base rewards
    h = Handlers(trained, LOCAL)
    first = annotate_out(h.on_load(ME))
    assert first["state"]["id"] == ids[0]
    against = "b" if rewards[0][0] > rewards[0][1] else "a"
    out = annotate_out(h.vote(against, "  my better answer ", ids[0], first["state"], ME))
    vote = trained.store.recent_votes(1)[0]
    assert vote["pair_id"] == ids[0] and vote["annotator"] == "local"
    assert vote["choice"] == against and vote["better_answer"] == "my better answer"
    assert vote["decide_ms"] >= 0
    assert out["state"]["id"] == ids[1] and out["better"] == "" and out["shown_id"] == ids[1]
    assert "**disagrees**" in out["reveal"] and "Both answers came from `v1`" in out["reveal"]
    assert "1 votes today" in out["progress"] and "serving `v1`" in out["progress"]
    agree = "a" if rewards[1][0] > rewards[1][1] else "b"
    out = annotate_out(h.vote(agree, "", ids[1], out["state"], ME))
    assert "**agrees**" in out["reveal"] and "2 votes today" in out["progress"]
    assert out["state"] is None and out["timer"].active is True  # waits for the next pair


def test_undo_shows_the_pair_again_until_a_round_reads_the_vote(svc):
    ids = svc.pool.fill_once(8)
    h = Handlers(svc, LOCAL)
    with pytest.raises(gr.Error, match="no vote of yours to undo"):
        h.undo(None, ME)
    shown = annotate_out(h.on_load(ME))["state"]
    after = annotate_out(h.vote("a", "", ids[0], shown, ME))
    assert after["state"]["id"] == ids[1] and vote_count(svc) == 1
    back = annotate_out(h.undo(after["state"], ME))
    assert back["state"]["id"] == ids[0] and vote_count(svc) == 0
    assert f"your vote on pair {ids[0]} is removed" in back["reveal"]
    assert svc.store.take_pair("local")["id"] == ids[1]  # the pair it replaced is free again
    svc.store.skip_pair(ids[1], "local")
    state = back["state"]
    for _ in range(7):  # vote on all eight, then a round reads them
        state = annotate_out(h.vote("b", "", state["id"], state, ME))["state"] or state
    assert svc.trainer.run_one("test").status in ("accepted", "rejected")
    with pytest.raises(gr.Error, match="already used by a training round"):
        h.undo(state, ME)


def test_vote_errors_store_nothing(svc):
    ids = svc.pool.fill_once(2)
    h = Handlers(svc, LOCAL)
    with pytest.raises(gr.Error, match="No pair is shown"):
        h.vote("a", "", None, None, ME)
    shown = annotate_out(h.on_load(ME))["state"]
    second = annotate_out(h.vote("a", "", ids[0], shown, ME))["state"]
    assert second["id"] == ids[1] and vote_count(svc) == 1
    # A second click that raced the page update still carries the old pair's id.
    with pytest.raises(gr.Error, match=f"meant for pair {ids[0]}, which was already answered"):
        h.vote("b", "", ids[0], second, ME)
    with pytest.raises(gr.Error, match="choice 'c' is not valid: use one of a, b, tie"):
        h.vote("c", "", ids[1], second, ME)
    with pytest.raises(gr.Error, match="Vote not stored: no pair with id 99"):
        h.vote("a", "", None, {"id": 99, "shown": 0}, ME)
    with pytest.raises(gr.Error, match="pair id 'x' is not a number"):
        h.commit_vote("local", "x", "a", None, None)
    too_long = "x" * (MAX_BETTER_ANSWER + 1)
    with pytest.raises(gr.Error, match=f"{MAX_BETTER_ANSWER + 1} characters long: shorten it "
                                       f"to at most {MAX_BETTER_ANSWER}"):
        h.vote("a", too_long, ids[1], second, ME)
    assert vote_count(svc) == 1 and svc.store.recent_votes(1)[0]["choice"] == "a"
    h.vote("a", too_long[1:], ids[1], second, ME)  # exactly at the limit: stored
    assert len(svc.store.recent_votes(1)[0]["better_answer"]) == MAX_BETTER_ANSWER


def test_waiting_then_poll_finds_pair(svc):
    h = Handlers(svc, LOCAL)
    out = annotate_out(h.on_load(ME))
    assert out["state"] is None and "Generating pairs" in out["prompt"]
    assert out["timer"].active is True
    assert annotate_out(h.poll(None, ME))["timer"].active is True
    (pid,) = svc.pool.fill_once(1)
    out = annotate_out(h.poll(None, ME))
    assert out["state"]["id"] == pid and out["timer"].active is False
    assert out["response_a"] and out["response_b"]


def test_loading_banner_queued_pairs_and_refusals(loading):
    h = Handlers(loading, LOCAL)
    out = annotate_out(h.on_load(ME))
    assert "Loading the model" in out["banner"] and out["timer"].active is True
    loading.loading.update(4, 10, "Converting")  # what the loader reports as it converts
    pid = add_hostile_pair(loading.store)  # queued pairs can be judged meanwhile
    out = annotate_out(h.poll(None, ME))
    assert out["state"]["id"] == pid and "Converting (40%" in out["banner"]
    assert out["timer"].active is True  # keeps polling the loading progress
    out = annotate_out(h.vote("tie", "", pid, out["state"], ME))
    assert vote_count(loading) == 1 and "made no prediction" in out["reveal"]
    prompts = loading.store.counts()["prompts"]
    with pytest.raises(gr.Error, match=r"model is loading: Converting \(40%.*Try again"):
        h.ask("Why is the sky blue?", None, ME)
    assert loading.store.counts()["prompts"] == prompts  # nothing half-done
    with pytest.raises(gr.Error, match="model is loading.*Press Train now again"):
        h.train_now(ME)
    with pytest.raises(gr.Error, match="model is loading"):
        h.rollback("base", ME)
    assert is_not_ready(NotReady("x")) and not is_not_ready(ValueError("x"))


def test_failed_load_shows_in_banner(tmp_path, tiny_model_dir):
    broken = tiny_service(tmp_path / "data", tmp_path / "no-model", start=False)
    with pytest.raises(Exception, match="no such directory"):
        broken.start(background=False, pool=False, trainer=False)
    h = Handlers(broken, LOCAL)
    assert "failed to load" in h.banner() and "no such directory" in h.banner()
    with pytest.raises(gr.Error, match="model failed to load"):
        h.ask("Hi", None, ME)


def test_hostile_texts_are_shown_inert(svc):
    pid = add_hostile_pair(svc.store)
    h = Handlers(svc, LOCAL)
    out = annotate_out(h.on_load(ME))
    assert out["state"]["id"] == pid
    assert "<script" not in out["prompt"] and "&lt;script&gt;" in out["prompt"]
    assert "<img" not in out["response_a"] and "&lt;img" in out["response_a"]
    assert "javascript:" not in out["response_b"] and f"java{ZW}script:" in out["response_b"]
    assert svc.store.get_pair(pid)["response_a"] == HOSTILE["response_a"]  # stored as typed
    out = annotate_out(h.ask("<img src=x onerror=alert(2)> hi", None, ME)[:-1])
    assert "<img" not in out["prompt"] and "&lt;img" in out["prompt"]


def test_ask_validates_and_shows_own_pair(svc):
    h = Handlers(svc, AppConfig(max_prompt_chars=10))
    with pytest.raises(gr.Error, match="prompt is empty"):
        h.ask("   ", None, ME)
    with pytest.raises(gr.Error, match="11 characters long: shorten it to at most 10"):
        h.ask("x" * 11, None, ME)
    *outs, box = h.ask("Hi there", None, ME)
    pair = svc.store.get_pair(annotate_out(outs)["state"]["id"])
    assert pair["prompt"] == "Hi there" and box == "" and pair["response_a"]
    assert svc.store.get_prompt(pair["prompt_id"])["source"] == "user"
    assert svc.next_pair("carol") is None  # handed to the asker only


def test_skip_moves_on_without_a_vote(svc):
    ids = svc.pool.fill_once(2)
    h = Handlers(svc, LOCAL)
    state = annotate_out(h.on_load(ME))["state"]
    out = annotate_out(h.skip(state, ME))
    assert vote_count(svc) == 0 and out["reveal"] == "*Skipped.*"
    assert (state["id"], out["state"]["id"]) == tuple(ids)


def test_roles_checked_on_server(trained, users, tmp_path):
    h = Handlers(trained, AppConfig(auth_file=str(users)))
    bob, alice = request(ANNOTATOR), request(ADMIN)
    prompts = tmp_path / "p.txt"
    prompts.write_text("A brand new prompt\n", encoding="utf-8")
    specs = views.settings_specs(trained.settings(), help_table())
    values = [0.5 if s["name"] == "beta" else s["value"] for s in specs]
    admin_calls = [lambda r: h.train_now(r), lambda r: h.rollback("base", r),
                   lambda r: h.save_settings(specs, values, r), lambda r: h.export("dpo", r),
                   lambda r: h.download_adapter(r), lambda r: h.download_merged(r),
                   lambda r: h.import_prompts(str(prompts), r),
                   lambda r: h.train_live(r), lambda r: h.data_view(r),
                   lambda r: h.team_view(r),
                   lambda r: h.train_forms(specs, r)]
    counts, settings = trained.store.counts(), trained.settings()
    for call in admin_calls:
        with pytest.raises(gr.Error, match=f"Only admins may .*'{ANNOTATOR}' is an annotator"):
            call(bob)
    assert trained.store.counts() == counts and trained.settings() == settings
    assert trained.store.serving_adapter() == trained.policy.serving == "v1"
    assert not trained.trainer._asked.is_set()  # the flag the trainer thread waits on
    assert "requested by alice" in h.train_now(alice) and trained.trainer._asked.is_set()
    assert "`base`" in h.rollback("base", alice)
    assert trained.store.serving_adapter() == trained.policy.serving == "base"
    with pytest.raises(gr.Error, match="account 'mallory' is not in the users file: nothing"):
        h.train_now(request("mallory"))
    with pytest.raises(gr.Error, match="not logged in"):
        h.vote("a", "", 1, {"id": 1, "shown": 0}, request(None))
    on_load = h.on_load(bob)
    assert "bob** (annotator)" in on_load[-4] and on_load[-1].visible is False
    assert all(tab.visible for tab in h.on_load(alice)[-3:])  # Train, Data and Team


def test_local_mode_is_admin(svc):
    access = Access("")
    assert access.user(ME) == "local" and access.is_admin(ME)
    assert "Local single-user mode" in Handlers(svc, LOCAL).banner()
    assert "Local single-user mode" not in Handlers(svc, AppConfig(auth_file="u.json")).banner()


def _arena_votes(svc, h: Handlers, plan: list[str]) -> None:
    """Vote on fresh arena pairs (v1 vs base) through the UI: v1's side for 'win', base's
    for 'loss', else the choice itself."""
    svc.update_settings({"pool": {"arena_fraction": 1.0}})
    ids = svc.pool.fill_once(len(plan) + 2)  # arena sides are not resampled: spares
    assert len(ids) >= len(plan)
    state = annotate_out(h.on_load(ME))["state"]
    for pid, what in zip(ids, plan):
        pair = svc.store.get_pair(pid)
        assert state["id"] == pid and pair["arena"] and {pair["version_a"],
                                                         pair["version_b"]} == {"v1", "base"}
        mine = arena_side(pair, "v1")
        choice = {"win": mine, "loss": "b" if mine == "a" else "a"}.get(what, what)
        out = annotate_out(h.vote(choice, "", pid, state, ME))
        assert f"**{mine.upper()} was `v1`**" in out["reveal"]
        state = out["state"]


def test_dashboards_from_a_real_round_and_arena(trained):
    h = Handlers(trained, LOCAL)
    _arena_votes(trained, h, ["win", "win", "loss", "tie", "both_bad"])
    md, bar, loss, acc, margins, held, arena, rounds = h.train_live(ME)
    steps = trained.store.train_steps()
    assert "**Serving**: `v1`" in md and "start the next round" in md
    assert steps and len(loss) == len(acc) == len(steps) and len(margins) == 3 * len(steps)
    assert list(rounds["status"]) == ["accepted"] and list(rounds["version"]) == ["v1"]
    after = trained.store.get_round(1)["metrics"]["heldout_after"]["accuracy"]
    assert held.value["data"][0][:2] == ["v1", pytest.approx(after)]
    assert arena.value["data"][0][:2] == ["v1", 0.625]  # (2 wins + ½ tie) / 4
    row = h.leaderboard().iloc[0]
    assert (row["version"], row["win rate"], row["both bad"], row["votes"]) == ("v1", 0.625,
                                                                                 1, 5)
    counts, votes = h.data_view(ME)
    assert f"| votes | {vote_count(trained)} |" in counts and len(votes) == vote_count(trained) == 13


def test_downloads_exports_and_imports(trained, tmp_path):
    import zipfile

    h = Handlers(trained, LOCAL)
    with zipfile.ZipFile(h.download_adapter(ME)) as z:
        assert "metadata.json" in z.namelist() and "adapter_config.json" in z.namelist()
    with zipfile.ZipFile(h.download_merged(ME, progress=lambda *a, **k: None)) as z:
        names = z.namelist()
        assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(names)
        assert "adapter_config.json" not in names  # merged: no adapter left
        assert "v1 <- base" in z.read("README.md").decode()
    dpo = h.export("dpo", ME)
    rows = read_jsonl(dpo)
    assert dpo.endswith(".jsonl") and len(rows) == len(trained.store.training_pairs()) > 0
    assert h.export("votes", ME).endswith(".csv")
    good = tmp_path / "p.txt"
    good.write_text("First new prompt\nSecond new prompt\n", encoding="utf-8")
    before = trained.store.counts()["prompts"]
    assert h.import_prompts(str(good), ME) == "Imported 2 new prompt(s) from p.txt."
    assert trained.store.counts()["prompts"] == before + 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(gr.Error, match="Nothing imported from bad.jsonl"):
        h.import_prompts(str(bad), ME)
    assert trained.store.counts()["prompts"] == before + 2


def test_build_ui_api_surface(loading):
    from app.ui import build_ui

    demo = build_ui(loading, LOCAL)
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == {"next_pair", "vote", "next_rank", "vote_rank", "undo", "status",
                      "train_now", "rollback", "update_settings"}
    assert all(fn.api_visibility == "private" for fn in demo.fns.values()
               if fn.api_name not in public)


def test_guidelines_file(tmp_path):
    from app.ui import load_guidelines

    assert "Which answer is better" in load_guidelines("")
    f = tmp_path / "g.md"
    f.write_text("# Our rules", encoding="utf-8")
    assert load_guidelines(str(f)) == "# Our rules"
    with pytest.raises(ValueError, match="guidelines file .*missing.md cannot be read"):
        load_guidelines(str(tmp_path / "missing.md"))
