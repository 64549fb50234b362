"""The main flow in a real Chromium (playwright): vote by click and by keyboard, both
votes land in SQLite, a new pair appears, and untrusted HTML stays inert."""

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
ARTIFACTS = Path(__file__).parent / "artifacts"
XSS_PROMPT = 'Say hi <img src=x onerror="window.__xss=1"> 1 2 s'


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir):
    pytest.importorskip("storage.db")
    skip_without_chromium()
    tmp = tmp_path_factory.mktemp("ui-browser")
    svc = real_service(tmp / "data", tiny_model_dir)
    demo, url = launch_app(svc, tmp)
    wait_for(lambda: svc.store.counts().get("pairs_ready", 0) >= 2, timeout=120)
    yield svc, url
    demo.close()
    svc.stop()


@pytest.fixture(scope="module")
def page():
    with chromium_page() as pg:
        yield pg


def db_votes(svc) -> list[tuple]:
    """(pair_id, annotator, choice) of every vote, read from the SQLite file itself."""
    files = [f for f in Path(svc.data_dir).glob("*") if f.suffix in (".db", ".sqlite")]
    assert files, f"no SQLite file in {svc.data_dir}"
    with sqlite3.connect(files[0]) as con:
        return con.execute("SELECT pair_id, annotator, choice FROM votes ORDER BY id").fetchall()


def shown_pair(page) -> str:
    text = page.locator("#ldpo-prompt").inner_text(timeout=60_000)
    return text.split("(pair ")[1].split(")")[0] if "(pair " in text else ""


def test_vote_by_click_and_key(app_url, page):
    svc, url = app_url
    page.goto(url)
    page.wait_for_selector("#ldpo-prompt >> text=(pair", timeout=60_000)
    first = shown_pair(page)
    page.click("#vote-a")
    page.wait_for_function(f"!document.querySelector('#ldpo-prompt').innerText"
                           f".includes('(pair {first})')", timeout=60_000)
    second = shown_pair(page)
    assert second and second != first
    page.locator("#ldpo-reveal").get_by_text(f"Your vote on pair {first}").wait_for()
    page.keyboard.press("2")
    page.locator("#ldpo-reveal").get_by_text(f"Your vote on pair {second}").wait_for(
        timeout=60_000)
    votes = db_votes(svc)
    assert (int(first), "local", "a") in votes and (int(second), "local", "b") in votes
    assert "(pair" in page.locator("#ldpo-prompt").inner_text()  # a new pair is shown
    assert shown_pair(page) not in (first, second)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "annotate.png"), full_page=True)


def test_typing_does_not_vote_and_html_is_inert(app_url, page):
    svc, url = app_url
    before = len(db_votes(svc))
    box = page.locator("#ldpo-ask textarea, #ldpo-ask input").first
    box.click()
    box.type(XSS_PROMPT)  # contains 1, 2 and s: shortcuts must not fire while typing
    page.get_by_role("button", name="Generate a pair").click()
    page.locator("#ldpo-prompt").get_by_text("Say hi <img", exact=False).wait_for(
        timeout=60_000)
    assert len(db_votes(svc)) == before
    assert page.evaluate("window.__xss") is None
    assert page.locator("#ldpo-prompt img").count() == 0
    page.screenshot(path=str(ARTIFACTS / "annotate-own-prompt.png"), full_page=True)


def test_undo_by_key_shows_the_pair_again(app_url, page):
    svc, url = app_url
    page.goto(url)
    page.wait_for_selector("#ldpo-prompt >> text=(pair", timeout=60_000)
    first = shown_pair(page)
    page.keyboard.press("1")
    page.locator("#ldpo-reveal").get_by_text(f"Your vote on pair {first}").wait_for(
        timeout=60_000)
    assert (int(first), "local", "a") in db_votes(svc)
    assert page.get_by_text("Undo my last vote").is_visible()
    page.keyboard.press("u")
    page.locator("#ldpo-reveal").get_by_text(f"your vote on pair {first} is removed").wait_for(
        timeout=60_000)
    assert shown_pair(page) == first
    assert not [v for v in db_votes(svc) if v[0] == int(first)]
    page.keyboard.press("2")  # judged again; the text differs from the undo note's
    page.locator("#ldpo-reveal").get_by_text(f"Your vote on pair {first}: B is better").wait_for(
        timeout=60_000)  # (matching is case-blind: "your vote on pair N is removed" would do)
    assert (int(first), "local", "b") in db_votes(svc)
