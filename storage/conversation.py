"""Prompts that are conversations: a system turn, earlier turns, and the user's last turn.

A prompt is either plain text (one user turn, the common case) or a conversation, stored
in ``prompts.text`` as canonical JSON, ``{"messages":[{"role":..,"content":..},...]}``,
so the prompts table, its uniqueness and every place that carries a prompt's text work
unchanged, and two conversations that differ only in an earlier turn stay two prompts.
A conversation holds an optional first ``system`` turn, then ``user`` and ``assistant``
turns alternating, and ends with a ``user`` turn: the one the model answers.

All functions here are pure. Rendering for a model lives in trainer/model/generate.py;
``plain_text`` is the documented rendering for a base model without a chat template.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant")
_PREFIX = '{"messages":'


class BadConversation(ValueError):
    """A message list that is not a conversation LiveDPO can answer; says what to fix."""


def check(messages: Any) -> list[dict[str, str]]:
    """The messages as [{role, content}] (contents stripped), or BadConversation naming
    the first problem."""
    if not isinstance(messages, list) or not messages:
        raise BadConversation('"messages" must be a non-empty list of {"role", "content"} '
                              "objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadConversation(f'message {i + 1} must be an object with "role" and '
                                  f'"content", got {json.dumps(m, ensure_ascii=False)[:80]}')
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise BadConversation(f"message {i + 1} has role {role!r}: use one of "
                                  f"{', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise BadConversation(f"message {i + 1} ({role}) must have non-empty text "
                                  "content")
        out.append({"role": role, "content": content.strip()})
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            where = out.index(m) + 1
            raise BadConversation(f"message {where} is {m['role']!r} where {want!r} belongs: "
                                  "after an optional first system message, user and "
                                  "assistant turns alternate, starting with user")
    if not turns or turns[-1]["role"] != "user":
        raise BadConversation("a conversation must end with a user message (the turn the "
                              "model answers)")
    return out


def encode(messages: list[dict[str, str]]) -> str:
    """The stored text of a conversation; one user turn alone stays its plain text."""
    msgs = check(messages)
    if len(msgs) == 1:
        return msgs[0]["content"]
    return _PREFIX + json.dumps(msgs, ensure_ascii=False, separators=(",", ":")) + "}"


def is_conversation(text: str) -> bool:
    return text.startswith(_PREFIX)


def messages_of(text: str, system_prompt: str = "") -> list[dict[str, str]]:
    """A stored prompt as messages; ``system_prompt`` (the project's) is put first when
    the prompt has no system turn of its own."""
    if is_conversation(text):
        msgs = json.loads(text)["messages"]
    else:
        msgs = [{"role": "user", "content": text.strip()}]
    if system_prompt.strip() and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt.strip()}, *msgs]
    return msgs


def last_user(text: str) -> str:
    """The turn the model answers: the prompt as an annotator reads it first."""
    return messages_of(text)[-1]["content"]


def context(text: str, system_prompt: str = "") -> list[dict[str, str]]:
    """What comes before the last user turn: the system turn and the earlier turns."""
    return messages_of(text, system_prompt)[:-1]


def plain_text(messages: list[dict[str, str]]) -> str:
    """A conversation for a model without a chat template, in the plain template's form:

        <system text>                       (if any, then a blank line)
        Question: <user turn>
        Answer: <assistant turn>
        ...
        Question: <last user turn>
        Answer:

    One user turn alone is exactly the plain template, ``Question: ...\\nAnswer:``.
    """
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append(f"Question: {m['content']}\nAnswer:")
        else:
            parts.append(f" {m['content']}\n")
    return "".join(parts)
