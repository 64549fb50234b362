"""Import and export: prompts (.txt/.jsonl/.csv), preferences (TRL DPO / KTO JSONL, votes
CSV). Files are decoded and split into rows by storage/readers.py. Imports are
all-or-nothing: every row is parsed and checked first, then written in
ONE transaction; a bad row fails the import with ImportFailed naming the file, the line
number and the problem, and the DB is left unchanged. Exports are written atomically
(storage/files.py), so a reader never sees half a file.

Round trip: export -> import into a fresh DB -> export gives a byte-identical file, for
each of dpo, kto and votes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage import conversation, trl
from storage.common import CHOICES, MAX_PROMPT_CHARS, now
from storage.errors import BadInput, ImportFailed
from storage.failpoints import failpoint
from storage.files import atomic_write, jsonl_text
from storage.ranking import MAX_RANK, MIN_RANK, RANK_CHOICES, check_tiers
from storage.readers import Rows, csv_rows, jsonl_rows, lines, read_text
from storage.votes import MAX_BETTER_ANSWER

PROMPT_EXTS = (".txt", ".jsonl", ".csv")
PREF_EXTS = (".jsonl", ".json", ".csv")
VOTE_COLUMNS = ["pair_id", "prompt", "response_a", "response_b", "version_a", "version_b",
                "arena", "annotator", "choice", "better_answer", "decide_ms", "created",
                "end_a", "end_b", "answers", "ranking"]
# end_*, answers, ranking: optional on import. answers (rank sets only): JSON list of
# {text, version, end}; ranking: JSON tiers of answer indices, best first (rank votes).
IMPORT_ANNOTATOR = "import"
IMPORT_VERSION = "import"
ARENA_VALUES = {"0": 0, "1": 1, "": 0, "false": 0, "true": 1}
_MAX_ID_DIGITS = 18  # ids and times must fit SQLite's 64-bit integers


def _conversation(name: str, n: int, messages: list) -> str:
    """The stored text of a conversation row (storage/conversation.py), or ImportFailed."""
    try:
        return conversation.encode(messages)
    except conversation.BadConversation as e:
        raise ImportFailed(name, n, str(e)) from None


def _prompt(name: str, n: int, value: Any, max_chars: int) -> str:
    """The stripped prompt of line n, or ImportFailed."""
    if not isinstance(value, str):
        raise ImportFailed(name, n, f"the prompt must be text, not {type(value).__name__}")
    if not value.strip():
        raise ImportFailed(name, n, "empty prompt")
    if len(value.strip()) > max_chars:
        raise ImportFailed(name, n, f"prompt has {len(value.strip())} characters (limit "
                                    f"{max_chars}; shorten it or raise --max-prompt-chars)")
    return value.strip()


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
            rows.append((n, _conversation(p.name, n, value) if isinstance(value, list)
                         else value))
    else:
        rows = [(n, r["prompt"]) for n, r in csv_rows(p.name, text, ["prompt"])]
    if not rows:
        raise ImportFailed(p.name, None, "no prompts found")
    return [_prompt(p.name, n, v, max_chars) for n, v in rows]


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
        prompt = _prompt(name, n, prompt, max_chars)
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
        prompt = _prompt(name, n, _message_text(r["prompt"], "user", where, "prompt"),
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
        return _import_votes(store, _parse_votes(p.name, rows, max_chars))
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


def _ids_free(db, ids: list) -> bool:
    """True when every imported pair has its own integer id and none exists yet: then the
    ids are kept (a fresh DB round-trips exactly); otherwise every pair gets a new one."""
    return (all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
            and not any(db.execute("select 1 from pairs where id = ?", [i]).fetchone()
                        for i in ids))


def _prompt_id(db, text: str) -> int:
    """The id of an (already checked) prompt, adding it as source 'import' if new."""
    db.execute("insert or ignore into prompts (text, source, created, served_count) values "
               "(?, 'import', ?, 0)", [text, now()])
    return db.execute("select id from prompts where text = ?", [text]).fetchone()[0]


def _insert_pair(db, pair_id: int | None, prompt_id: int, a: str, b: str, va: str, vb: str,
                 arena: int, end_a: str | None = None, end_b: str | None = None,
                 answers: str | None = None, gen_config: str = "{}") -> int:
    """An imported, already voted pair or rank set (never handed to annotators)."""
    return db.execute(
        "insert into pairs (id, prompt_id, response_a, response_b, version_a, version_b, "
        "arena, gen_config, seed, created, status, origin, end_a, end_b, answers) values "
        "(?,?,?,?,?,?,?,?,0,?,'voted','import',?,?,?)",
        [pair_id, prompt_id, a, b, va, vb, arena, gen_config, now(), end_a, end_b,
         answers]).lastrowid


def _import_dpo(store, rows: list[dict]) -> dict:
    """Each row -> prompt + pair (A = chosen, B = rejected) + each annotator's vote (one
    'a' vote by 'import' for rows without annotators). Pair ids are kept when every row
    has its own and none exists yet, as for the votes CSV."""
    ids = [r["pair_id"] for r in rows]
    with store.write() as db:
        keep = _ids_free(db, ids)
        for r in rows:
            pair = _insert_pair(db, r["pair_id"] if keep else None, _prompt_id(db, r["prompt"]),
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
                       [_prompt_id(db, r["prompt"]), r["completion"], int(r["label"]), now()])
        failpoint("import.before_commit")
    return {"format": "kto", "labels": len(rows)}


# --- votes CSV -------------------------------------------------------------------------------------
PAIR_FIELDS = ("prompt", "response_a", "response_b", "version_a", "version_b", "arena",
               "end_a", "end_b", "answers")


def _end_cell(end: str | None) -> str:
    """How an answer ended, in a CSV cell: empty if unknown, else a JSON string, so that
    '' (cut at the token limit) and '\\nQuestion:' survive the round trip."""
    return "" if end is None else json.dumps(end)


def _end_value(cell: str | None, column: str, bad) -> str | None:
    if not cell:
        return None
    try:
        end = json.loads(cell)
    except json.JSONDecodeError:
        end = None
    if not isinstance(end, str):
        raise bad(f"{column} {cell!r}: leave it empty, or write a JSON string such as "
                  '"<eos>" (or "" for an answer cut at the token limit)')
    return end


def _rank_cells(r: dict, bad) -> tuple[str | None, str | None]:
    """(answers, ranking) as stored, checked: a rank set's answers and its vote's tiers,
    or (None, None) for an A/B pair."""
    if not r.get("answers"):
        if r.get("ranking"):
            raise bad("ranking given without answers: a ranking needs the rank set's answers")
        return None, None
    try:
        answers = json.loads(r["answers"])
    except json.JSONDecodeError as e:
        raise bad(f"answers is not JSON ({e})") from None
    if (not isinstance(answers, list) or not MIN_RANK <= len(answers) <= MAX_RANK
            or not all(isinstance(a, dict) and isinstance(a.get("text"), str)
                       and isinstance(a.get("version"), str) and a["version"]
                       and isinstance(a.get("end"), str | None) for a in answers)):
        raise bad(f"answers: expected a JSON list of {MIN_RANK}..{MAX_RANK} objects "
                  "{text, version, end}")
    if r["choice"] not in RANK_CHOICES:
        raise bad(f"choice {r['choice']!r} on a rank set: use one of {', '.join(RANK_CHOICES)}")
    tiers = None
    if r["choice"] == "rank":
        try:
            tiers = check_tiers(json.loads(r.get("ranking") or "null"), len(answers))
        except (json.JSONDecodeError, BadInput) as e:
            raise bad(f"ranking {r.get('ranking')!r}: {e}") from None
    clean = [{"text": a["text"], "version": a["version"], "end": a.get("end"), "ids": None,
              "reward": None} for a in answers]
    return (json.dumps(clean, ensure_ascii=False),
            None if tiers is None else json.dumps(tiers))


def _vote_row(name: str, n: int, r: dict, max_chars: int) -> dict:
    """One checked votes-CSV row with typed values."""
    def bad(problem: str) -> ImportFailed:
        return ImportFailed(name, n, problem)

    answers, ranking = _rank_cells(r, bad)
    if answers is None and r["choice"] not in CHOICES:
        raise bad(f"choice {r['choice']!r} is not one of {', '.join(CHOICES)}")
    for k in ("annotator", "response_a", "response_b", "version_a", "version_b"):
        if not r[k].strip():
            raise bad(f"empty {k}")
    for k in ("pair_id", "decide_ms"):
        if r.get(k) and not (r[k].isascii() and r[k].isdigit()
                             and len(r[k]) <= _MAX_ID_DIGITS):
            raise bad(f"{k} {r[k]!r} is not a whole number of at most {_MAX_ID_DIGITS} digits")
    if r["arena"].strip().lower() not in ARENA_VALUES:
        raise bad(f"arena {r['arena']!r}: use 0 or 1")
    if len(r.get("better_answer") or "") > MAX_BETTER_ANSWER:
        raise bad(f"better_answer has more than {MAX_BETTER_ANSWER} characters")
    return {**r, "prompt": _prompt(name, n, r["prompt"], max_chars),
            "arena": ARENA_VALUES[r["arena"].strip().lower()],
            "pair_id": int(r["pair_id"]) if r.get("pair_id") else None,
            "decide_ms": int(r["decide_ms"]) if r.get("decide_ms") else None,
            "better_answer": (r.get("better_answer") or "").strip() or None,
            "created": r.get("created") or None,
            "end_a": _end_value(r.get("end_a"), "end_a", bad),
            "end_b": _end_value(r.get("end_b"), "end_b", bad),
            "answers": answers, "ranking": ranking}


def _parse_votes(name: str, rows: Rows, max_chars: int) -> list[dict]:
    """Check every row; rows of one pair_id must agree on the pair's fields."""
    if not rows:
        raise ImportFailed(name, None, "no votes found")
    parsed, first = [], {}
    for n, r in rows:
        v = _vote_row(name, n, r, max_chars)
        key = v["pair_id"] if v["pair_id"] is not None else f"line{n}"
        seen = first.setdefault(key, (n, v))
        diff = [f for f in PAIR_FIELDS if seen[1][f] != v[f]]
        if diff:
            raise ImportFailed(name, n, f"pair {key} has a different {diff[0]} than on line "
                                        f"{seen[0]}")
        parsed.append({**v, "key": key})
    return parsed


def _import_votes(store, rows: list[dict]) -> dict:
    """Votes CSV -> pairs + votes. Pair ids are kept when every row has one and none of
    them exists yet (a fresh DB round-trips exactly); otherwise every pair gets a new id."""
    keys = list(dict.fromkeys(r["key"] for r in rows))  # a pair id, or its line if none
    pairs: dict = {}
    with store.write() as db:
        taken = not _ids_free(db, keys)
        for r in rows:
            if r["key"] not in pairs:
                keep = r["key"] if not taken else None
                pairs[r["key"]] = _insert_pair(
                    db, keep, _prompt_id(db, r["prompt"]), r["response_a"], r["response_b"],
                    r["version_a"], r["version_b"], r["arena"], r["end_a"], r["end_b"],
                    r["answers"])
            t = now()
            db.execute("insert into votes (pair_id, annotator, choice, better_answer, decide_ms,"
                       " created, updated, ranking) values (?,?,?,?,?,?,?,?) on conflict "
                       "(pair_id, annotator) do update set choice = excluded.choice, "
                       "better_answer = excluded.better_answer, decide_ms = "
                       "excluded.decide_ms, ranking = excluded.ranking",
                       [pairs[r["key"]], r["annotator"], r["choice"], r["better_answer"],
                        r["decide_ms"], r["created"] or t, t, r["ranking"]])
        failpoint("import.before_commit")
    return {"format": "votes", "pairs": len(pairs), "votes": len(rows)}


# --- export ----------------------------------------------------------------------------------------
def _kto_rows(store) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
            for r in store.kto_rows()]


def _audit_rows(store) -> list[dict]:
    """The audit log, oldest first: {id, at, admin, action, detail}."""
    return list(reversed(store.audit_log()))


def _vote_rows(store) -> list[dict]:
    rows = store.query(
        "select v.pair_id, pr.text as prompt, p.response_a, p.response_b, p.version_a, "
        "p.version_b, p.arena, v.annotator, v.choice, v.better_answer, v.decide_ms, "
        "v.created, p.end_a, p.end_b, p.answers, v.ranking from votes v join pairs p on "
        "p.id = v.pair_id join prompts pr on pr.id = p.prompt_id order by v.pair_id, v.id")
    return [{**r, "end_a": _end_cell(r["end_a"]), "end_b": _end_cell(r["end_b"]),
             "answers": _answers_cell(r["answers"])} for r in rows]


def _answers_cell(answers: str | None) -> str | None:
    """A rank set's answers for the CSV: text, version and end of each (no token ids)."""
    if answers is None:
        return None
    return json.dumps([{k: a.get(k) for k in ("text", "version", "end")}
                       for a in json.loads(answers)], ensure_ascii=False)


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=VOTE_COLUMNS, lineterminator="\r\n")  # quotes \r too
    w.writeheader()
    w.writerows({k: ("" if r[k] is None else r[k]) for k in VOTE_COLUMNS} for r in rows)
    return buf.getvalue()


EXPORTS: dict[str, tuple[Callable, Callable[[list[dict]], str]]] = {
    "dpo": (trl.dpo_rows, jsonl_text), "kto": (_kto_rows, jsonl_text),
    "votes": (_vote_rows, _csv_text), "audit": (_audit_rows, jsonl_text)}


def export(store, fmt: str, out_path: str | Path) -> int:
    """Write dpo (TRL DPO JSONL), kto (TRL KTO JSONL), votes (CSV) or audit (the admin
    actions, JSONL) atomically; returns the number of rows."""
    if fmt not in EXPORTS:
        raise BadInput(f"export format {fmt!r}: use one of {', '.join(EXPORTS)}")
    rows_of, text_of = EXPORTS[fmt]
    rows = rows_of(store)
    atomic_write(Path(out_path), text_of(rows))
    return len(rows)
