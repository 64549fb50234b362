"""The scripted API, driven with gradio_client against the launched app (real service on
the tiny model, an auth file with an annotator and an admin)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client

from app.auth import add_user
from tests.hostile_fixtures import run_event, session
from tests.ui_fixtures import (
    ADMIN,
    ANNOTATOR,
    PASSWORD,
    api_client,
    launch_app,
    real_service,
    wait_for,
    write_users,
)

CAROL = "carol"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    pytest.importorskip("storage.db")
    tmp = tmp_path_factory.mktemp("ui-api")
    users = write_users(tmp / "users.json")
    add_user(users, CAROL, PASSWORD, "annotator")
    svc = real_service(tmp / "data", tiny_model_dir, "--ready-pairs", "6")
    demo, url = launch_app(svc, tmp, str(users))
    wait_for(lambda: svc.store.counts().get("pairs_ready", 0) >= 4, timeout=120)
    yield svc, demo, url
    demo.close()
    svc.stop()


def client(url: str, name: str) -> Client:
    return api_client(url, auth=(name, PASSWORD))


def vote_count(svc) -> int:
    return svc.store.counts()["votes"]


def test_api_surface(served):
    _, _, url = served
    names = set(client(url, ANNOTATOR).view_api(print_info=False,
                                                return_format="dict")["named_endpoints"])
    assert names == {"/next_pair", "/vote", "/next_rank", "/vote_rank", "/undo", "/status",
                     "/train_now", "/rollback", "/update_settings"}


def test_annotator_next_pair_vote_status(served):
    svc, _, url = served
    c = client(url, ANNOTATOR)
    pair_id, prompt, a, b = c.predict(api_name="/next_pair")
    assert isinstance(pair_id, int) and prompt and (a or b)
    before = vote_count(svc)
    reveal = c.predict(pair_id, "a", "A clearly better answer.", api_name="/vote")
    assert reveal["pair_id"] == pair_id and reveal["choice"] == "a"
    assert {"version_a", "version_b", "arena", "reward_a", "reward_b", "predicted",
            "prediction_correct"} <= set(reveal)
    assert vote_count(svc) == before + 1
    row = svc.store.recent_votes(1)[0]
    assert row["annotator"] == ANNOTATOR and row["pair_id"] == pair_id
    status = c.predict(api_name="/status")
    assert status["votes"] == before + 1 and "trainer" in status


def test_bad_votes_give_errors_and_store_nothing(served):
    svc, _, url = served
    c = client(url, ANNOTATOR)
    pair_id, *_ = c.predict(api_name="/next_pair")
    before = vote_count(svc)
    with pytest.raises(Exception, match="choice 'c' is not valid: use one of a, b, tie, "
                                        "both_bad"):
        c.predict(pair_id, "c", api_name="/vote")
    with pytest.raises(Exception, match="Vote not stored: .*999999"):
        c.predict(999999, "a", api_name="/vote")
    assert vote_count(svc) == before


def test_clients_at_once_get_distinct_pairs(served):
    _, _, url = served
    clients = [client(url, name) for name in (ANNOTATOR, ADMIN, CAROL)]
    with ThreadPoolExecutor(3) as ex:
        ids = list(ex.map(lambda c: c.predict(api_name="/next_pair")[0], clients))
    assert None not in ids and len(set(ids)) == 3


def test_annotator_cannot_use_admin_endpoints(served):
    svc, demo, url = served
    c = client(url, ANNOTATOR)
    settings, serving = svc.settings(), svc.store.serving_adapter()
    for args, name in (((), "/train_now"), (("base",), "/rollback"),
                       (({"train": {"beta": 0.5}},), "/update_settings")):
        with pytest.raises(Exception, match=f"Only admins may .*'{ANNOTATOR}' is an annotator"):
            c.predict(*args, api_name=name)
    # The hidden UI callback is refused too when called over raw HTTP by fn_index.
    idx = next(i for i, fn in demo.fns.items()
               if getattr(fn.fn, "__name__", "") == "train_now" and fn.api_visibility == "private")
    msg = raw_call(url, ANNOTATOR, idx)
    assert msg["success"] is False and "Only admins" in msg["output"]["error"]
    assert svc.settings() == settings and svc.store.serving_adapter() == serving
    assert svc.trainer.state != "training"


def test_admin_can(served):
    svc, _, url = served
    c = client(url, ADMIN)
    new = c.predict({"train": {"beta": 0.2}}, api_name="/update_settings")
    assert new["train"]["beta"] == 0.2 and svc.train_cfg.beta == 0.2
    with pytest.raises(Exception, match="beta=-1.0: must be > 0"):
        c.predict({"train": {"beta": -1.0}}, api_name="/update_settings")
    with pytest.raises(Exception, match="cannot change lora_r"):
        c.predict({"train": {"lora_r": 4}}, api_name="/update_settings")
    assert svc.train_cfg.beta == 0.2
    assert "base" in c.predict("base", api_name="/rollback")
    with pytest.raises(Exception, match="Cannot roll back to 'v99'"):
        c.predict("v99", api_name="/rollback")


def raw_call(url: str, user: str, fn_index: int) -> dict:
    """Log in and call an event by fn_index over plain HTTP (what gradio_client refuses)."""
    with session(url, user, PASSWORD) as h:
        msg = run_event(h, fn_index, [])
    assert "refused" not in msg, f"the queue refused the join: {msg}"
    return msg


def test_rank_mode_next_rank_and_vote_rank(served):
    svc, _, url = served
    admin, c = client(url, ADMIN), client(url, CAROL)
    assert c.predict(api_name="/next_rank")["pair_id"] is None  # A/B mode: no rank sets
    admin.predict({"pool": {"vote_mode": "rank", "rank_size": 3}}, api_name="/update_settings")
    try:
        svc.pool.wake()
        wait_for(lambda: svc.store.ready_pair_count(kind="rank") >= 2, timeout=120)
        item = c.predict(api_name="/next_rank")
        assert isinstance(item["pair_id"], int) and len(item["answers"]) == 3
        assert item["messages"][-1] == {"role": "user", "content": item["prompt"]}
        before = vote_count(svc)
        with pytest.raises(Exception, match="best and worst are both answer 2"):
            c.predict(item["pair_id"], 1, 1, api_name="/vote_rank")
        with pytest.raises(Exception, match="is a rank set of 3 answers: vote on it with "
                                            "vote_rank"):
            c.predict(item["pair_id"], "a", api_name="/vote")
        assert vote_count(svc) == before
        reveal = c.predict(item["pair_id"], 2, 0, api_name="/vote_rank")
        assert (reveal["best"], reveal["worst"], reveal["choice"]) == (2, 0, "rank")
        assert reveal["versions"] == ["base"] * 3 and vote_count(svc) == before + 1
        vote = svc.store.recent_votes(1)[0]
        assert (vote["annotator"], vote["ranking"]) == (CAROL, "[[2], [1], [0]]")
        other = c.predict(api_name="/next_rank")
        assert c.predict(other["pair_id"], None, None, "tie",
                         api_name="/vote_rank")["choice"] == "tie"
    finally:
        admin.predict({"pool": {"vote_mode": "pair", "rank_size": 4}},
                      api_name="/update_settings")


def test_two_annotators_overlap_undo_and_kappa_through_the_real_server(served):
    """Two annotators through gradio_client: the picked pairs are judged by both, an undo
    takes a vote out of the next round's data, and the agreement figures appear."""
    from storage.common import is_overlap_pair

    svc, _, url = served
    # No round may read the votes below before the undo: an undo is refused once a round
    # has trained on the vote, and the background trainer would otherwise race the test.
    needed = svc.train_cfg.votes_per_round
    svc.update_settings({"pool": {"ready_pairs": 30}, "train": {"votes_per_round": 100_000}})
    wait_for(lambda: svc.trainer.state != "training", timeout=300)
    try:
        svc.pool.fill_once(30)
        ann, bob = client(url, ANNOTATOR), client(url, CAROL)
        for _ in range(40):
            for c in (ann, bob):
                pair_id, *_ = c.predict(api_name="/next_pair")
                if pair_id is not None:
                    c.predict(pair_id, "a" if pair_id % 3 else "b", api_name="/vote")
        judged: dict[int, set] = {}
        for r in svc.store.query("select pair_id, annotator from votes"):
            judged.setdefault(r["pair_id"], set()).add(r["annotator"])
        twice = {p for p, who in judged.items() if {ANNOTATOR, CAROL} <= who}
        assert twice and all(is_overlap_pair(p, 0.15) for p in twice)
        kappas = svc.store.agreement()["pairwise_kappa"]
        assert any(k["annotators"] == [ANNOTATOR, CAROL] and k["n"] == len(twice) for k in kappas)
        last = svc.store.query("select pair_id from votes where annotator = ? order by updated "
                               "desc, id desc limit 1", [CAROL])[0]["pair_id"]
        item = bob.predict(api_name="/undo")
        assert item["pair_id"] == last and item["response_a"] is not None
        assert not svc.store.query("select 1 from votes where pair_id = ? and annotator = ?",
                                   [last, CAROL])
        left = len(svc.store.query("select 1 from votes where pair_id = ?", [last]))
        rows = [r for r in svc.store.training_pairs(disagreement="majority")
                if r["pair_id"] == last]
        assert all(r["n_votes"] == left for r in rows)  # the next round no longer sees it
        assert (not rows) == (left == 0)
    finally:
        svc.update_settings({"train": {"votes_per_round": needed}})
