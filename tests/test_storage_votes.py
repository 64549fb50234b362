"""storage/votes.py: what the votes say about prompts."""

from __future__ import annotations

import pytest

from storage.db import Store


@pytest.fixture
def store():
    return Store(None)


def _pair(store, prompt: str) -> int:
    pid = store.add_prompt(prompt, source="user")
    return store.record_pair(pid, "A.", "B.", "base", "base", {}, 7)


def test_recent_voted_prompts_are_newest_first_once_each(store):
    pairs = [_pair(store, prompt=q) for q in ("Q1", "Q2", "Q3")]
    again = _pair(store, prompt="Q1")  # the same prompt, another pair
    for p in (*pairs, again):
        store.record_vote(p, "ann", "tie")
    assert store.recent_voted_prompts(10) == ["Q1", "Q3", "Q2"]
    assert store.recent_voted_prompts(2) == ["Q1", "Q3"]
    assert store.recent_voted_prompts(10, max_vote_id=2) == ["Q2", "Q1"]
