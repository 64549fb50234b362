"""Rank mode's Annotate-tab callbacks as plain functions on the real service (tiny model):
a set of answers shown, best / worst marks validated and stored."""

from __future__ import annotations

import gradio as gr
import pytest

from app.api import Handlers
from app.config import AppConfig
from tests.ui_fixtures import annotate_out, request, vote_count

LOCAL = AppConfig()  # no auth file: local single-user mode, the caller is 'local', an admin
ME = request(None)


def test_rank_mode_shows_sets_and_votes_with_marks(svc):
    svc.update_settings({"pool": {"vote_mode": "rank", "rank_size": 3}})
    ids = svc.pool.fill_once(3)
    h = Handlers(svc, LOCAL)
    out = annotate_out(h.on_load(ME))
    state = out["state"]
    assert state == {**state, "id": ids[0], "kind": "rank"}
    assert "mark the best and the worst of 3 answers" in out["prompt"]
    assert [out[f"answer_{k}"].visible for k in (1, 3, 4)] == [True, True, False]
    assert out["answer_2"].value.startswith("#### Answer 2")
    assert out["rank_box"].visible and not out["pair_box"].visible
    assert [c[0] for c in out["rank_best"].choices] == ["1", "2", "3"]
    before = vote_count(svc)
    with pytest.raises(gr.Error, match="Mark the best answer, the worst, or both"):
        h.vote_rank("rank", None, None, ids[0], state, ME)
    with pytest.raises(gr.Error, match="is a rank set: mark its best and worst"):
        h.vote("a", "", ids[0], state, ME)
    with pytest.raises(gr.Error, match="best and worst are both answer 2"):
        h.vote_rank("rank", "2", "2", ids[0], state, ME)
    with pytest.raises(gr.Error, match="mark 'x' is not an answer number"):
        h.vote_rank("rank", "x", None, ids[0], state, ME)
    with pytest.raises(gr.Error, match="best=7: mark one of the 3 answers"):
        h.vote_rank("rank", "8", None, ids[0], state, ME)
    assert vote_count(svc) == before
    out = annotate_out(h.vote_rank("rank", "2", None, ids[0], state, ME))
    assert "Your ranking of pair" in out["reveal"] and "best 2." in out["reveal"]
    assert svc.store.recent_votes(1)[0]["ranking"] == "[[1], [0, 2]]"
    assert out["state"]["id"] == ids[1]
    out = annotate_out(h.vote_rank("both_bad", "1", None, ids[1], out["state"], ME))  # marks ignored
    assert svc.store.recent_votes(1)[0]["choice"] == "both_bad"
    assert "Both bad" in out["reveal"]
