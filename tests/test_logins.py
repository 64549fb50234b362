"""Logins: throttled after repeated failures, hashed off the event loop, old hashes
upgraded at the next successful login."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time

import httpx
import pytest

from app import auth
from app.logins import (
    ADDRESS_FAILS_BEFORE_WAIT,
    BASE_WAIT_S,
    FAILS_BEFORE_WAIT,
    HASH_NICE,
    MAX_WAIT_S,
    Throttle,
    TooManyAttempts,
    lower_thread_priority,
    wait_after,
)
from tests.svc_fixtures import tiny_service
from tests.ui_fixtures import ADMIN, ANNOTATOR, PASSWORD, launch_app, write_users


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_wait_doubles_after_the_free_failures_up_to_a_cap():
    assert [wait_after(n, 5) for n in (0, 4, 5, 6, 7)] == [0, 0, BASE_WAIT_S, 2 * BASE_WAIT_S,
                                                           4 * BASE_WAIT_S]
    assert wait_after(40, 5) == MAX_WAIT_S


def test_a_user_waits_after_repeated_failures_and_a_success_clears_it():
    clock = Clock()
    t = Throttle(clock=clock)
    for _ in range(FAILS_BEFORE_WAIT):
        t.check("bob", "10.0.0.1")
        t.record("bob", "10.0.0.1", ok=False)
    with pytest.raises(TooManyAttempts, match=r"for user 'bob': retry in 30 s"):
        t.check("bob", "10.0.0.2")  # another address does not help
    t.check("alice", "10.0.0.2")  # other users are not affected
    clock.t += BASE_WAIT_S + 1
    t.check("bob", "10.0.0.1")
    t.record("bob", "10.0.0.1", ok=False)  # one more failure: twice the wait
    with pytest.raises(TooManyAttempts, match=r"retry in 60 s"):
        t.check("bob", "10.0.0.1")
    clock.t += 2 * BASE_WAIT_S + 1
    t.record("bob", "10.0.0.1", ok=True)
    t.record("bob", "10.0.0.1", ok=False)
    t.check("bob", "10.0.0.9")  # the count started again


def test_an_address_waits_after_failures_across_many_names():
    t = Throttle(clock=Clock())
    for i in range(ADDRESS_FAILS_BEFORE_WAIT):
        t.record(f"user{i}", "10.0.0.7", ok=False)
    with pytest.raises(TooManyAttempts, match=r"for address 10\.0\.0\.7: retry in"):
        t.check("somebody-new", "10.0.0.7")
    t.check("somebody-new", "10.0.0.8")


def test_an_older_hash_is_upgraded_at_the_next_successful_login(tmp_path):
    path = tmp_path / "users.json"
    auth.add_user(path, "carol", PASSWORD, "annotator")
    users = json.loads(path.read_text())
    users["users"]["carol"].update(auth.hash_password(PASSWORD, n=2**14))  # an old record
    path.write_text(json.dumps(users))
    assert not auth.verify_and_upgrade(path, "carol", "wrong-password-1")
    assert json.loads(path.read_text())["users"]["carol"]["n"] == 2**14  # not on a failure
    assert auth.verify_and_upgrade(path, "carol", PASSWORD)
    record = json.loads(path.read_text())["users"]["carol"]
    assert (record["n"], record["r"], record["p"]) == (auth.SCRYPT_N, 8, 1)
    assert record["role"] == "annotator" and auth.verify(path, "carol", PASSWORD)


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux's")
def test_hashing_thread_runs_below_the_server_threads():
    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice_of_this_thread()
    with concurrent.futures.ThreadPoolExecutor(1, initializer=lower_thread_priority) as pool:
        hashing = pool.submit(nice_of_this_thread).result()
    assert hashing == min(before + HASH_NICE, 19)
    assert nice_of_this_thread() == before  # only the hashing thread was lowered


@pytest.mark.slow
def test_real_server_throttles_and_keeps_serving_during_logins(tmp_path, tiny_model_dir,
                                                               monkeypatch):
    import app.logins

    real = app.logins.verify_and_upgrade

    def slow(*a):  # a hash that takes a full second, to see whether it blocks the loop
        time.sleep(1.0)
        return real(*a)

    monkeypatch.setattr(app.logins, "verify_and_upgrade", slow)
    users = write_users(tmp_path / "users.json")
    svc = tiny_service(tmp_path / "data", tiny_model_dir)
    demo, url = launch_app(svc, tmp_path, str(users))
    try:
        with httpx.Client(base_url=url, timeout=60) as h:
            for _ in range(FAILS_BEFORE_WAIT):
                r = h.post("login", data={"username": ANNOTATOR, "password": "wrong-pass-1"})
                assert r.status_code == 400
            r = h.post("login", data={"username": ANNOTATOR, "password": PASSWORD})
            assert r.status_code == 429 and "retry in" in r.json()["detail"]
            assert int(r.headers["Retry-After"]) > 0
            assert h.post("login", data={"username": ADMIN, "password": PASSWORD}
                          ).status_code == 200
            # While 8 logins hash (4 s of hashing, two at a time), the server answers other
            # requests: the hashing runs off the event loop. On the loop, this request
            # would wait for at least one whole hash.
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                logins = [pool.submit(httpx.post, f"{url}login", timeout=60,
                                      data={"username": ADMIN, "password": PASSWORD})
                          for _ in range(8)]
                time.sleep(0.3)
                t0 = time.perf_counter()
                assert h.get("gradio_api/info").status_code == 200
                answered = time.perf_counter() - t0
                assert all(f.result().status_code == 200 for f in logins)
            assert answered < 0.9, answered
    finally:
        demo.close()
        svc.stop()


@pytest.mark.parametrize("host, no_auth, refused", [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False),
    ("0.0.0.0", False, True), ("192.168.1.20", False, True), ("0.0.0.0", True, False),
])
def test_serving_other_machines_needs_logins(host, no_auth, refused, capsys):
    from app.commands import check_exposure
    from app.config import AppConfig

    cfg = AppConfig(host=host, no_auth=no_auth)
    if refused:
        with pytest.raises(ValueError, match=r"(?s)without --auth-file everyone.*add-user NAME "
                                             r"--role admin --auth-file users\.json.*--no-auth"):
            check_exposure(cfg)
    else:
        check_exposure(cfg)
        assert ("WARNING" in capsys.readouterr().err) == no_auth


def test_serve_refuses_before_loading_anything(tmp_path, capsys):
    from app.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")]) == 2
    assert "--host 0.0.0.0 serves the app to other machines" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # no data dir, no model: refused first
    assert main(["serve", "--host", "0.0.0.0", "--auth-file", str(tmp_path / "u.json"),
                 "--data-dir", str(tmp_path / "d")]) == 2
    assert "create the first admin with `python app.py add-user NAME --role admin " \
           f"--auth-file {tmp_path / 'u.json'}`" in capsys.readouterr().err
