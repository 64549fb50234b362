"""What every import shares: checked prompts and conversations, and imported pairs written
inside the caller's transaction (never handed to annotators), keeping their ids when
they are free."""

from __future__ import annotations

from typing import Any

from storage import conversation
from storage.common import now
from storage.errors import ImportFailed

IMPORT_ANNOTATOR = "import"
IMPORT_VERSION = "import"


def conversation_text(name: str, n: int, messages: list) -> str:
    """The stored text of a conversation row (storage/conversation.py), or ImportFailed."""
    try:
        return conversation.encode(messages)
    except conversation.BadConversation as e:
        raise ImportFailed(name, n, str(e)) from None


def checked_prompt(name: str, n: int, value: Any, max_chars: int) -> str:
    """The stripped prompt of line n, or ImportFailed."""
    if not isinstance(value, str):
        raise ImportFailed(name, n, f"the prompt must be text, not {type(value).__name__}")
    if not value.strip():
        raise ImportFailed(name, n, "empty prompt")
    if len(value.strip()) > max_chars:
        raise ImportFailed(name, n, f"prompt has {len(value.strip())} characters (limit "
                                    f"{max_chars}; shorten it or raise --max-prompt-chars)")
    return value.strip()


def ids_free(db, ids: list) -> bool:
    """True when every imported pair has its own integer id and none exists yet: then the
    ids are kept (a fresh DB round-trips exactly); otherwise every pair gets a new one."""
    return (all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
            and not any(db.execute("select 1 from pairs where id = ?", [i]).fetchone()
                        for i in ids))


def prompt_id(db, text: str) -> int:
    """The id of an (already checked) prompt, adding it as source 'import' if new."""
    db.execute("insert or ignore into prompts (text, source, created, served_count) values "
               "(?, 'import', ?, 0)", [text, now()])
    return db.execute("select id from prompts where text = ?", [text]).fetchone()[0]


def insert_pair(db, pair_id: int | None, prompt_id: int, a: str, b: str, va: str, vb: str,
                 arena: int, end_a: str | None = None, end_b: str | None = None,
                 answers: str | None = None, gen_config: str = "{}") -> int:
    """An imported, already voted pair or rank set (never handed to annotators)."""
    return db.execute(
        "insert into pairs (id, prompt_id, response_a, response_b, version_a, version_b, "
        "arena, gen_config, seed, created, status, origin, end_a, end_b, answers) values "
        "(?,?,?,?,?,?,?,?,0,?,'voted','import',?,?,?)",
        [pair_id, prompt_id, a, b, va, vb, arena, gen_config, now(), end_a, end_b,
         answers]).lastrowid
