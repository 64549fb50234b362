"""Checks on untrusted input from clients (the page, gradio_client, raw HTTP): every
problem becomes a user-facing ``gr.Error`` that says what to change, never a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from storage import votes
from storage.errors import BadInput


def fail(message: str) -> gr.Error:
    """A user-facing error (shown in the page / returned to API clients; no traceback)."""
    return gr.Error(message, print_exception=False)


def check_text(text: str, what: str) -> str:
    """``text`` if it can be stored as UTF-8 (storage's check); a lone surrogate (e.g. a
    JSON "\\ud800" escape from an API client) is refused with a clear message."""
    try:
        return votes.check_text(text, what)
    except BadInput:
        raise fail(f"{what} contains a lone surrogate character (\\ud800-\\udfff), which is "
                   "not valid text: remove it.") from None


def parse_pair_id(value: Any) -> int:
    """A pair id from a client, as storage parses it: an int, an integral float or a string
    of digits; never a bool, a fraction (1.7 must not vote on pair 1) or a number too big
    for SQLite."""
    try:
        return votes.parse_pair_id(value)
    except BadInput:  # UnknownPair too: out of SQLite's range
        raise fail(f"pair id {value!r} is not a number of a pair: pass the whole number "
                   "that next_pair returned.") from None


def upload_path(path: str) -> Path:
    """``path`` if it is a regular file where uploads land (Gradio's upload folder or the
    temp dir). Gradio already refuses other paths; this refuses them again here, so a
    typed or ``../`` path, or a link pointing out, never reaches the importer."""
    from gradio.utils import get_upload_folder

    real = Path(path).resolve()
    roots = (Path(get_upload_folder()).resolve(), Path(tempfile.gettempdir()).resolve())
    if not real.is_file() or not any(real.is_relative_to(r) for r in roots):
        raise fail(f"Nothing imported from {Path(path).name}: not an uploaded file. Choose the "
                   "file with the prompts file box and upload it.")
    return real
