"""Seed a fresh data directory with the default prompt set that ships with LiveDPO."""

from __future__ import annotations

from pathlib import Path

from storage.common import MAX_PROMPT_CHARS
from storage.readers import lines

DEFAULT_PROMPTS = Path(__file__).with_name("default_prompts.txt")
SEEDED_KEY = "seeded_default_prompts"


def seed_default_prompts(store, max_chars: int = MAX_PROMPT_CHARS) -> int:
    """Load the default prompts once per DB (never again, even if they are all served)."""
    if store.get_state(SEEDED_KEY, False):
        return 0
    texts = [t.strip() for t in lines(DEFAULT_PROMPTS.read_text(encoding="utf-8")) if t.strip()]
    added = store.add_prompts(texts, source="default", max_chars=max_chars)
    store.set_state(SEEDED_KEY, True)
    return added
