"""Import and export: prompts (.txt/.jsonl/.csv), preferences (TRL DPO / KTO JSONL, votes
CSV: storage/votescsv.py), the audit log. Files are decoded and split into rows by storage/readers.py. Imports are
all-or-nothing: every row is parsed and checked first, then written in
ONE transaction; a bad row fails the import with ImportFailed naming the file, the line
number and the problem, and the DB is left unchanged. Exports are written atomically
(storage/files.py), so a reader never sees half a file.

Round trip: export -> import into a fresh DB -> export gives a byte-identical file, for
each of dpo, kto and votes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage import conversation, trl
from storage.common import MAX_PROMPT_CHARS, now
from storage.errors import BadInput, ImportFailed
from storage.failpoints import failpoint
from storage.files import atomic_write, jsonl_text
from storage.importrows import (
    IMPORT_ANNOTATOR,
    IMPORT_VERSION,
    checked_prompt,
    conversation_text,
    ids_free,
    insert_pair,
    prompt_id,
)
from storage.readers import Rows, csv_rows, jsonl_rows, lines, read_text
from storage.votescsv import VOTE_COLUMNS, csv_text, import_votes, parse_votes, vote_rows

PROMPT_EXTS = (".txt", ".jsonl", ".csv")
PREF_EXTS = (".jsonl", ".json", ".csv")


# --- prompts --------------------------------------------------------------------------------------
def read_prompts(path: str | Path, max_chars: int = MAX_PROMPT_CHARS) -> list[str]:
    """Prompts of a .txt (one per non-blank line), .jsonl ({"prompt": ...}) or .csv (a
    'prompt' column) file, stripped and checked; ImportFailed on any problem."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in PROMPT_EXTS:
        raise ImportFailed(p.name, None, f"unknown file type {p.suffix or '(none)'!r}; use "
                                         ".txt (one prompt per line), .jsonl or .csv")
    text = read_text(p)
    if ext == ".txt":
        rows = [(n, line) for n, line in enumerate(lines(text), 1) if line.strip()]
    elif ext == ".jsonl":
        rows = []
        for n, r in jsonl_rows(p.name, text):
            value = r.get("messages", r.get("prompt"))
            if value is None:
                raise ImportFailed(p.name, n, f'missing key "prompt" or "messages" (found '
                                              f"{sorted(r)})")
            rows.append((n, conversation_text(p.name, n, value) if isinstance(value, list)
                         else value))
    else:
        rows = [(n, r["prompt"]) for n, r in csv_rows(p.name, text, ["prompt"])]
    if not rows:
        raise ImportFailed(p.name, None, "no prompts found")
    return [checked_prompt(p.name, n, v, max_chars) for n, v in rows]


def import_prompts(store, path: str | Path, max_chars: int = MAX_PROMPT_CHARS) -> int:
    """Add a file's prompts (all or nothing); returns how many were new."""
    return store.add_prompts(read_prompts(path, max_chars), source="import",
                             max_chars=max_chars)


# --- preference files ------------------------------------------------------------------------------
def _content(m: dict, where: tuple[str, int]) -> str:
    """A message's text: a string, or the text parts of a multimodal content list."""
    c = m["content"]
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and isinstance(p.get("text", ""), str)
                                   for p in c):
        return "".join(p.get("text", "") for p in c)
    raise ImportFailed(*where, 'a message "content" must be a string or a list of '
                               '{"type": "text", "text": "..."} parts')


def _message_text(value: Any, role: str, where: tuple[str, int], key: str) -> str:
    """Plain text of a string, or of the ``role`` messages of a conversational list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(_content(m, where) for m in value if m.get("role", role) == role)
    raise ImportFailed(*where, f'"{key}" must be a string or a list of '
                               '{"role", "content"} messages')


def _dpo_parts(r: dict, where: tuple[str, int]) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of a TRL row; an implicit-prompt row (no "prompt", the
    conversation inside chosen and rejected) gives its shared turns as the prompt."""
    if "prompt" in r:
        return r["prompt"], r["chosen"], r["rejected"]
    c, j = r["chosen"], r["rejected"]
    if isinstance(c, list) and isinstance(j, list) and len(c) > 1 and c[:-1] == j[:-1]:
        return c[:-1], c[-1:], j[-1:]
    raise ImportFailed(*where, 'missing key "prompt"')


def _answer(value: Any, end: str | None, template: str | None, where: tuple[str, int],
            key: str) -> str:
    """The stored text of a chosen / rejected value (see storage/trl.py)."""
    text = _message_text(value, "assistant", where, key)
    if template == "plain" and isinstance(value, str):
        try:
            return trl.unframed(text, end)
        except ValueError as e:
            raise ImportFailed(*where, f'"{key}": {e}') from None
    return text


def _parse_dpo(name: str, rows: Rows, max_chars: int) -> list[dict]:
    """Check TRL DPO rows (prompt/chosen/rejected, plain or conversational, with or
    without LiveDPO's columns: storage/trl.py)."""
    out = []
    for n, r in rows:
        where = (name, n)
        for k in ("chosen", "rejected"):
            if k not in r:
                raise ImportFailed(name, n, f'missing key "{k}"')
        try:
            meta = trl.parse_meta(r)
            prompt, chosen, rejected = _dpo_parts(r, where)
            if isinstance(prompt, list):
                prompt = conversation.encode(prompt)
            elif meta["template"] == "plain" and isinstance(prompt, str):
                prompt = conversation.encode(trl.plain_messages(prompt))
        except (ValueError, conversation.BadConversation) as e:
            raise ImportFailed(name, n, str(e)) from None
        prompt = checked_prompt(name, n, prompt, max_chars)
        chosen = _answer(chosen, meta["chosen_end"], meta["template"], where, "chosen")
        rejected = _answer(rejected, meta["rejected_end"], meta["template"], where,
                           "rejected")
        if not chosen.strip() or not rejected.strip():
            raise ImportFailed(name, n, "empty chosen or rejected response")
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, **meta})
    return out


def _parse_kto(name: str, rows: Rows, max_chars: int) -> list[dict]:
    """Check TRL unpaired KTO rows (prompt/completion/label)."""
    out = []
    for n, r in rows:
        where = (name, n)
        for k in ("prompt", "completion", "label"):
            if k not in r:
                raise ImportFailed(name, n, f'missing key "{k}"')
        if not isinstance(r["label"], bool):
            raise ImportFailed(name, n, f'"label" must be true or false, got {r["label"]!r}')
        completion = _message_text(r["completion"], "assistant", where, "completion")
        if not completion.strip():
            raise ImportFailed(name, n, "empty completion")
        prompt = checked_prompt(name, n, _message_text(r["prompt"], "user", where, "prompt"),
                         max_chars)
        out.append({"prompt": prompt, "completion": completion, "label": r["label"]})
    return out


def import_prefs(store, path: str | Path, max_chars: int = MAX_PROMPT_CHARS) -> dict:
    """Import TRL DPO JSONL, TRL KTO JSONL or a votes CSV (as exported), detected from the
    keys of the first row / the CSV columns. Returns counts, e.g. {format, pairs}."""
    p = Path(path)
    if p.suffix.lower() not in PREF_EXTS:
        raise ImportFailed(p.name, None, f"unknown file type {p.suffix or '(none)'!r}; use "
                                         ".jsonl (TRL DPO or KTO) or .csv (votes export)")
    text = read_text(p)
    if p.suffix.lower() == ".csv":
        rows = csv_rows(p.name, text, VOTE_COLUMNS[1:9])
        return import_votes(store, parse_votes(p.name, rows, max_chars))
    rows = jsonl_rows(p.name, text)
    if not rows:
        raise ImportFailed(p.name, None, "no rows found")
    keys = set(rows[0][1])
    if {"chosen", "rejected"} <= keys:
        return _import_dpo(store, _parse_dpo(p.name, rows, max_chars))
    if {"completion", "label"} <= keys:
        return _import_kto(store, _parse_kto(p.name, rows, max_chars))
    raise ImportFailed(p.name, rows[0][0], f"unknown format (keys {sorted(keys)}): expected "
                       "prompt/chosen/rejected (TRL DPO) or prompt/completion/label (TRL KTO)")


def _import_dpo(store, rows: list[dict]) -> dict:
    """Each row -> prompt + pair (A = chosen, B = rejected) + each annotator's vote (one
    'a' vote by 'import' for rows without annotators). Pair ids are kept when every row
    has its own and none exists yet, as for the votes CSV."""
    ids = [r["pair_id"] for r in rows]
    with store.write() as db:
        keep = ids_free(db, ids)
        for r in rows:
            pair = insert_pair(db, r["pair_id"] if keep else None, prompt_id(db, r["prompt"]),
                                r["chosen"], r["rejected"], r["version_chosen"] or IMPORT_VERSION,
                                r["version_rejected"] or IMPORT_VERSION, 0, r["chosen_end"],
                                r["rejected_end"], gen_config=trl.gen_config_of(r["template"]))
            t = now()
            for who, verdict in (r["annotators"] or {IMPORT_ANNOTATOR: "chosen"}).items():
                db.execute("insert into votes (pair_id, annotator, choice, created, updated) "
                           "values (?, ?, ?, ?, ?)", [pair, who, trl.CHOICE_OF[verdict], t, t])
            if r["adjudicated_by"]:  # the admin decided this order (A = chosen)
                db.execute("insert into adjudications (pair_id, choice, admin, created) "
                           "values (?, 'a', ?, ?)", [pair, r["adjudicated_by"], t])
        failpoint("import.before_commit")  # crash tests: rows in, not committed
    return {"format": "dpo", "pairs": len(rows)}


def _import_kto(store, rows: list[dict]) -> dict:
    """Each row -> prompt + a row of the labels table."""
    with store.write() as db:
        for r in rows:
            db.execute("insert into labels (prompt_id, completion, label, source, created) "
                       "values (?, ?, ?, 'import', ?)",
                       [prompt_id(db, r["prompt"]), r["completion"], int(r["label"]), now()])
        failpoint("import.before_commit")
    return {"format": "kto", "labels": len(rows)}


# --- export ----------------------------------------------------------------------------------------
def _kto_rows(store) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
            for r in store.kto_rows()]


def _audit_rows(store) -> list[dict]:
    """The audit log, oldest first: {id, at, admin, action, detail}."""
    return list(reversed(store.audit_log()))


EXPORTS: dict[str, tuple[Callable, Callable[[list[dict]], str]]] = {
    "dpo": (trl.dpo_rows, jsonl_text), "kto": (_kto_rows, jsonl_text),
    "votes": (vote_rows, csv_text), "audit": (_audit_rows, jsonl_text)}


def export(store, fmt: str, out_path: str | Path) -> int:
    """Write dpo (TRL DPO JSONL), kto (TRL KTO JSONL), votes (CSV) or audit (the admin
    actions, JSONL) atomically; returns the number of rows."""
    if fmt not in EXPORTS:
        raise BadInput(f"export format {fmt!r}: use one of {', '.join(EXPORTS)}")
    rows_of, text_of = EXPORTS[fmt]
    rows = rows_of(store)
    atomic_write(Path(out_path), text_of(rows))
    return len(rows)
