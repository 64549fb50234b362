"""Rank-of-N mode in a real Chromium (playwright): N answers are shown, the best and the
worst are marked by keyboard and by click, the ranking lands in SQLite, and the next set
appears."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def rank_app(tmp_path_factory, tiny_model_dir):
    skip_without_chromium()
    tmp = tmp_path_factory.mktemp("rank-browser")
    svc = real_service(tmp / "data", tiny_model_dir, "--vote-mode", "rank", "--rank-size", "4",
                       "--arena-fraction", "0")
    demo, url = launch_app(svc, tmp)
    wait_for(lambda: svc.store.ready_pair_count(kind="rank") >= 3, timeout=120)
    yield svc, url
    demo.close()
    svc.stop()


def db_votes(svc) -> dict[int, tuple]:
    """{pair_id: (choice, ranking)} read from the SQLite file itself."""
    with sqlite3.connect(Path(svc.data_dir) / "livedpo.db") as con:
        rows = con.execute("SELECT pair_id, choice, ranking FROM votes").fetchall()
    return {p: (c, json.loads(r) if r else None) for p, c, r in rows}


def shown_id(page) -> int:
    text = page.locator("#ldpo-prompt").inner_text(timeout=60_000)
    return int(text.split("(pair ")[1].split(":")[0])


def wait_next(page, old: int) -> int:
    page.wait_for_function(f"!document.querySelector('#ldpo-prompt').innerText"
                           f".includes('(pair {old}:')", timeout=60_000)
    return shown_id(page)


def test_rank_by_keyboard_and_by_click(rank_app):
    svc, url = rank_app
    with chromium_page() as page:
        page.goto(url)
        page.wait_for_selector("#ldpo-prompt >> text=mark the best and the worst",
                               timeout=60_000)
        assert page.locator("#ldpo-rank").is_visible()
        assert not page.locator("#vote-a").is_visible()  # the A/B buttons are hidden
        first = shown_id(page)
        n = len(svc.store.get_pair(first)["answers"])
        assert all(page.locator(f"#ldpo-answer-{k + 1}").is_visible() for k in range(n))
        assert page.get_by_text("Shift+1-N").first.is_visible()  # the keys are on the page
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "rank.png"), full_page=True)
        # keyboard: 3 = best, Shift+1 = worst, Enter submits
        page.keyboard.press("3")
        page.keyboard.press("Shift+1")
        page.wait_for_function("document.querySelector('#rank-worst input[value=\"1\"]')"
                               ".checked", timeout=10_000)
        page.keyboard.press("Enter")
        second = wait_next(page, first)
        page.locator("#ldpo-reveal").get_by_text(f"Your ranking of pair {first}: best 3, "
                                                 "worst 1").wait_for(timeout=60_000)
        middle = [i for i in range(n) if i not in (2, 0)]
        assert db_votes(svc)[first] == ("rank", [[2], middle, [0]])
        # click: best 2 only, then Submit
        page.click("#rank-best label:has-text('2')")
        page.click("#rank-submit")
        third = wait_next(page, second)
        assert db_votes(svc)[second][1][0] == [1] and len(db_votes(svc)[second][1]) == 2
        # T: all equally good
        page.keyboard.press("t")
        wait_next(page, third)
        assert db_votes(svc)[third] == ("tie", None)
