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


def _log_in(page, url: str, name: str) -> None:
    from tests.ui_fixtures import PASSWORD

    page.goto(url)
    page.locator("input[type='text']").first.fill(name)
    page.locator("input[type='password']").first.fill(PASSWORD)
    page.keyboard.press("Enter")
    page.locator("#ldpo-who").get_by_text(f"Logged in as {name}").wait_for(timeout=60_000)


def _shown_pair(page) -> int:
    page.wait_for_selector("#ldpo-prompt >> text=(pair", timeout=60_000)
    return int(page.locator("#ldpo-prompt").inner_text().split("(pair ")[1].split(")")[0])


def test_two_annotators_vote_in_chromium_then_kappa_shows_and_a_dispute_is_decided(
        tmp_path, tiny_model_dir):
    """Two annotators judge overlapped pairs by keyboard in their own sessions; the admin
    sees their Cohen's kappa on the Team tab, decides a pair they disputed, and the DPO
    export carries the admin's label."""
    from app.auth import add_user
    from storage.trl import dpo_rows
    from tests.ui_fixtures import ADMIN, ANNOTATOR, PASSWORD, write_users

    skip_without_chromium()
    carol = "carol"
    users = write_users(tmp_path / "users.json")
    add_user(users, carol, PASSWORD, "annotator")
    svc = real_service(tmp_path / "data", tiny_model_dir, "--arena-fraction", "0",
                       "--overlap-fraction", "1", "--ready-pairs", "12")
    wait_for(lambda: svc.store.ready_pair_count() >= 8, timeout=120)
    demo, url = launch_app(svc, tmp_path, str(users))
    try:
        with chromium_page() as bob:
            browser = bob.context.browser
            pages = {ANNOTATOR: bob, carol: browser.new_context().new_page()}
            keys = {ANNOTATOR: "1", carol: "2"}  # bob always says A, carol always B
            for name, page in pages.items():
                _log_in(page, url, name)
            for _ in range(4):
                for name, page in pages.items():
                    shown = _shown_pair(page)
                    page.keyboard.press(keys[name])
                    page.locator("#ldpo-reveal").get_by_text(
                        f"Your vote on pair {shown}").wait_for(timeout=60_000)
            judged: dict[int, set] = {}
            for r in svc.store.query("select pair_id, annotator from votes"):
                judged.setdefault(r["pair_id"], set()).add(r["annotator"])
            shared = sorted(p for p, who in judged.items() if who == {ANNOTATOR, carol})
            assert shared, judged  # overlap 1: both annotators judged some pairs

            admin = browser.new_context().new_page()
            _log_in(admin, url, ADMIN)
            admin.get_by_role("tab", name="Team").click()
            admin.get_by_text("Krippendorff's alpha").first.wait_for(timeout=60_000)
            table = admin.locator("#team-pairs")  # Gradio also keeps hidden copies
            table.get_by_text(f"{ANNOTATOR} & {carol}").first.wait_for(
                state="attached", timeout=30_000)
            lines = [x.strip() for x in table.inner_text().split("\n") if x.strip()]
            at = lines.index(f"{ANNOTATOR} & {carol}")
            kappa, ci, n = lines[at + 1:at + 4]  # the row as a person sees it
            (expected,) = svc.store.agreement()["pairwise_kappa"]
            assert float(kappa) == round(expected["kappa"], 2) == 0.0  # they never agreed
            assert " – " in ci and int(n) == len(shared)
            disputed = shared[0]
            admin.locator(f"text={ANNOTATOR}: A is better, {carol}: B is better "
                          ">> visible=true").first.wait_for(timeout=30_000)
            admin.locator("#team-pair input").fill(str(disputed))
            admin.locator("#team-label").get_by_text("B is better").click()
            admin.locator("#team-decide").click()
            admin.locator("#team-msg").get_by_text(f"Pair {disputed} decided by").wait_for(
                timeout=30_000)
        (row,) = [r for r in dpo_rows(svc.store) if r["pair_id"] == disputed]
        assert row["adjudicated_by"] == ADMIN
        assert svc.store.get_pair(disputed)["response_b"] in str(row["chosen"])
        assert [e["action"] for e in svc.store.audit_log()] == ["adjudicate"]
    finally:
        demo.close()
        svc.stop()
