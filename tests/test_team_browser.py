"""The Team tab in a real Chromium: agreement figures, and an admin deciding a disputed
pair, whose decision lands in SQLite and becomes its training label."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.ui_fixtures import (
    chromium_page,
    launch_app,
    real_service,
    skip_without_chromium,
    wait_for,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def team_app(tmp_path_factory, tiny_model_dir):
    skip_without_chromium()
    tmp = tmp_path_factory.mktemp("team-browser")
    svc = real_service(tmp / "data", tiny_model_dir, "--arena-fraction", "0")
    wait_for(lambda: svc.store.ready_pair_count() >= 3, timeout=120)
    pairs = [svc.store.take_pair(who)["id"] for who in ("ann", "bob")]
    svc.store.assign_pair(pairs[0], "bob")
    svc.store.record_vote(pairs[0], "ann", "a")
    svc.store.record_vote(pairs[0], "bob", "b")  # a dispute
    demo, url = launch_app(svc, tmp)
    yield svc, url, pairs[0]
    demo.close()
    svc.stop()


def test_admin_decides_a_disputed_pair(team_app):
    svc, url, disputed = team_app
    with chromium_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Team").click()
        page.get_by_text("Krippendorff's alpha").first.wait_for(timeout=60_000)
        page.locator("text=ann: A is better, bob: B is better >> visible=true").first.wait_for(
            timeout=30_000)
        page.locator("#team-pair input").fill(str(disputed))
        page.locator("#team-label").get_by_text("B is better").click()
        page.locator("#team-decide").click()
        page.locator("#team-msg").get_by_text(f"Pair {disputed} decided by").wait_for(
            timeout=30_000)
    with sqlite3.connect(Path(svc.data_dir) / "livedpo.db") as con:
        row = con.execute("select choice, admin from adjudications where pair_id = ?",
                          [disputed]).fetchone()
    assert row == ("b", "local")
    (label,) = [r for r in svc.store.training_pairs(disagreement="drop")
                if r["pair_id"] == disputed]
    assert label["chosen"] == svc.store.get_pair(disputed)["response_b"]


def test_admin_disables_a_user_who_is_refused_at_once(tmp_path, tiny_model_dir):
    from app import auth
    from tests.ui_fixtures import ADMIN, ANNOTATOR, PASSWORD, write_users

    skip_without_chromium()
    users = write_users(tmp_path / "users.json")
    svc = real_service(tmp_path / "data", tiny_model_dir)
    demo, url = launch_app(svc, tmp_path, str(users))
    try:
        with chromium_page() as bob:
            alice = bob.context.browser.new_context().new_page()  # a second session
            for page, name in ((bob, ANNOTATOR), (alice, ADMIN)):
                page.goto(url)
                page.locator("input[type='text']").first.fill(name)
                page.locator("input[type='password']").first.fill(PASSWORD)
                page.keyboard.press("Enter")
                page.locator("#ldpo-who").get_by_text(f"Logged in as {name}").wait_for(
                    timeout=60_000)
            alice.get_by_role("tab", name="Team").click()
            alice.locator("#user-name input, #user-name textarea").first.fill(ANNOTATOR)
            alice.locator("#user-disable").click()
            alice.locator("#user-msg").get_by_text(f"{ANNOTATOR} is disabled").wait_for(
                timeout=30_000)
            assert auth.list_users(users)[1] == {"name": ANNOTATOR, "role": "annotator",
                                                 "disabled": True}
            bob.keyboard.press("1")  # bob's page is still open: his vote is refused
            bob.get_by_text("is disabled: nothing was done").first.wait_for(timeout=30_000)
        assert not svc.store.query("select 1 from votes where annotator = ?", [ANNOTATOR])
        assert [e["action"] for e in svc.store.audit_log()] == ["user_disable"]
    finally:
        demo.close()
        svc.stop()
