"""A conversation with a system prompt in a real Chromium (playwright): the turns before
the last one and the system prompt are shown collapsed above the answers, open on a
click, and the vote lands in SQLite for that pair."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage import conversation
from storage.db import Store
from storage.seed import SEEDED_KEY
from tests.ui_fixtures import (
    chromium_page,
    launch_app,
    real_service,
    skip_without_chromium,
    wait_for,
)

pytestmark = pytest.mark.browser
TALK = [{"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another one, please?"}]


@pytest.fixture(scope="module")
def talk_app(tmp_path_factory, tiny_model_dir):
    skip_without_chromium()
    tmp = tmp_path_factory.mktemp("talk-browser")
    store = Store.open(tmp / "data")  # only the conversation: every pair answers it
    store.set_state(SEEDED_KEY, True)
    store.add_prompts([conversation.encode(TALK)])
    store.close()
    svc = real_service(tmp / "data", tiny_model_dir, "--system-prompt",
                       "You answer like a pirate.", "--arena-fraction", "0")
    demo, url = launch_app(svc, tmp)
    wait_for(lambda: svc.store.ready_pair_count() >= 2, timeout=120)
    yield svc, url
    demo.close()
    svc.stop()


def test_conversation_and_system_prompt_are_shown_and_voted_on(talk_app):
    svc, url = talk_app
    with chromium_page() as page:
        page.goto(url)
        prompt = page.locator("#ldpo-prompt")
        prompt.get_by_text("Another one, please?").wait_for(timeout=60_000)
        summary = prompt.locator("summary")
        assert summary.inner_text() == ("Conversation so far: system prompt and 2 earlier "
                                        "turns")
        pirate = prompt.get_by_text("You answer like a pirate.")
        assert not pirate.is_visible()  # collapsed until asked for
        summary.click()
        pirate.wait_for(state="visible", timeout=10_000)
        assert prompt.get_by_text("Apple.").is_visible()
        shown = int(prompt.inner_text().split("(pair ")[1].split(")")[0])
        page.click("#vote-a")
        wait_for(lambda: _vote(svc, shown), timeout=30, what="the vote in SQLite")
    assert _vote(svc, shown) == "a"
    pair = svc.store.get_pair(shown)
    assert pair["prompt"] == conversation.encode(TALK)
    assert pair["gen_config"]["system_prompt"] == "You answer like a pirate."


def _vote(svc, pair_id: int) -> str | None:
    with sqlite3.connect(Path(svc.data_dir) / "livedpo.db") as con:
        row = con.execute("select choice from votes where pair_id = ?", [pair_id]).fetchone()
    return row[0] if row else None
