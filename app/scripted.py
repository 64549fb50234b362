"""The scripted API: stable endpoint names for gradio_client (docs/api.md).

``next_pair`` / ``vote`` (A/B mode), ``next_rank`` / ``vote_rank`` (rank-of-N mode) and
``status`` for every logged-in user; ``train_now``, ``rollback`` and ``update_settings``
for admins only (checked on the server, in app/api.py's handlers).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.api import Handlers
from app.inputs import fail
from storage import conversation


def _json_safe(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into text."""
    import json

    return json.loads(json.dumps(value, default=str))


def register_api(h: Handlers) -> None:
    """Register the endpoints (inside a gr.Blocks context)."""

    def next_pair(request: gr.Request) -> tuple[int | None, str, str, str]:
        """The caller's next pair: (pair_id, prompt, response_a, response_b).

        pair_id is None (and the texts empty) while no pair is ready: retry in a few seconds.
        """
        pair = h.svc.next_pair(h.access.user(request))
        if not pair:
            return None, "", "", ""
        return int(pair["id"]), pair["prompt"], pair["response_a"], pair["response_b"]

    def vote(request: gr.Request, pair_id: int, choice: str, better_answer: str = "") -> dict:
        """Vote on a pair from next_pair: choice is a, b, tie or both_bad; better_answer is
        optional text stored as preferred over both. Returns the reveal (versions per side,
        implicit rewards, whether they predicted the choice)."""
        user = h.access.user(request)
        return _json_safe(h.commit_vote(user, pair_id, choice, better_answer,
                                        h.api_decide_ms(pair_id, user)))

    def next_rank(request: gr.Request) -> dict:
        """The caller's next rank set: {pair_id, prompt, messages, answers: [text, ...]}
        (messages: every turn the model was conditioned on, its system prompt included).
        pair_id is None (answers empty) while none is ready, or when the app is in A/B
        mode."""
        item = h.svc.next_rank(h.access.user(request))
        if not item:
            return {"pair_id": None, "prompt": "", "messages": [], "answers": []}
        system = (item.get("gen_config") or {}).get("system_prompt") or ""
        return {"pair_id": int(item["id"]), "prompt": item["prompt"],
                "messages": conversation.messages_of(item["prompt"], system),
                "answers": [a["text"] for a in item["answers"]]}

    def vote_rank(request: gr.Request, pair_id: int, best: int | None = None,
                  worst: int | None = None, choice: str = "rank") -> dict:
        """Vote on a rank set from next_rank: choice 'rank' with best and/or worst (0-based
        indices into its answers), or 'tie' / 'both_bad' with neither. Returns the reveal
        (each answer's version and implicit reward, the reward's own best and worst)."""
        user = h.access.user(request)
        return _json_safe(h.commit_rank_vote(user, pair_id, choice, best, worst,
                                             h.api_decide_ms(pair_id, user)))

    def status() -> dict:
        """Counts, serving version, trainer and model-loading state."""
        return _json_safe(h.svc.status())

    def undo(request: gr.Request) -> dict:
        """Take back the caller's last vote while no round has read it: {pair_id, prompt,
        response_a, response_b} (or {pair_id, prompt, answers} for a rank set), the item
        to judge again. An error says when there is nothing to undo or it is too late."""
        user = h.access.user(request)
        try:
            item = h.svc.undo(user)
        except h._user_errors as e:
            raise fail(str(e)) from e
        out = {"pair_id": int(item["id"]), "prompt": item["prompt"]}
        if item.get("answers") is not None:
            return {**out, "answers": [a["text"] for a in item["answers"]]}
        return {**out, "response_a": item["response_a"], "response_b": item["response_b"]}

    def train_now(request: gr.Request) -> str:
        """Admins: start a training round as soon as possible."""
        return h.train_now(request)

    def rollback(request: gr.Request, version: str) -> str:
        """Admins: serve an earlier version ('base' or vN)."""
        return h.rollback(version, request)

    def update_settings(request: gr.Request, changes: dict) -> dict:
        """Admins: change runtime settings, {area: {field: value}}; returns all settings."""
        admin = h.access.require_admin(request, "change settings")
        return _json_safe(h.apply_settings(admin, changes))

    for fn in (next_pair, vote, next_rank, vote_rank, undo, status, train_now, rollback,
               update_settings):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=None)
