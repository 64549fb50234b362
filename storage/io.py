"""Import and export: prompts (.txt/.jsonl/.csv), preferences (TRL DPO / KTO JSONL, votes
CSV). Imports are all-or-nothing: every row is parsed and checked first, then written in
ONE transaction; a bad row fails the import with the file, line number and problem.
Exports are written atomically (temp file + rename).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from storage.errors import BadInput, ImportFailed

MAX_LINE_CHARS = 1_000_000
PROMPT_EXTS = (".txt", ".jsonl", ".csv")
VOTE_COLUMNS = ["pair_id", "prompt", "response_a", "response_b", "version_a", "version_b",
                "arena", "annotator", "choice", "better_answer", "decide_ms", "created"]
IMPORT_ANNOTATOR = "import"


def read_text(path: str | Path) -> str:
    """The file's text, refusing missing, binary and non-UTF-8 files with a clear message."""
    p = Path(path)
    if not p.is_file():
        raise ImportFailed(p.name, None, "no such file")
    data = p.read_bytes()
    if b"\x00" in data:
        raise ImportFailed(p.name, None, "binary content (NUL bytes): expected a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ImportFailed(p.name, line, f"not valid UTF-8 (byte {data[e.start]:#x}); save the "
                                         "file as UTF-8") from None
    for n, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LINE_CHARS:
            raise ImportFailed(p.name, n, f"line has {len(line)} characters (max "
                                          f"{MAX_LINE_CHARS})")
    return text


def _jsonl(name: str, text: str) -> list[tuple[int, dict]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImportFailed(name, n, f"malformed JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ImportFailed(name, n, "expected a JSON object per line")
        rows.append((n, row))
    return rows


def _csv(name: str, text: str, required: list[str]) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise ImportFailed(name, 1, f"missing column(s) {', '.join(missing)}; found "
                                    f"{', '.join(reader.fieldnames or []) or 'none'}")
    return [(reader.line_num, row) for row in reader]


def _prompt(name: str, n: int, value, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ImportFailed(name, n, "empty prompt")
    if len(value.strip()) > max_chars:
        raise ImportFailed(name, n, f"prompt has {len(value.strip())} characters (limit "
                                    f"{max_chars}; raise --max-prompt-chars)")
    return value.strip()


def read_prompts(path: str | Path, max_chars: int = 4000) -> list[str]:
    p = Path(path)
    if p.suffix.lower() not in PROMPT_EXTS:
        raise ImportFailed(p.name, None, f"unknown file type {p.suffix or '(none)'!r}; use "
                                         ".txt (one prompt per line), .jsonl or .csv")
    text = read_text(p)
    if p.suffix.lower() == ".txt":
        rows = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif p.suffix.lower() == ".jsonl":
        rows = []
        for n, r in _jsonl(p.name, text):
            if "prompt" not in r:
                raise ImportFailed(p.name, n, 'missing key "prompt"')
            rows.append((n, r["prompt"]))
    else:
        rows = [(n, r["prompt"]) for n, r in _csv(p.name, text, ["prompt"])]
    if not rows:
        raise ImportFailed(p.name, None, "no prompts found")
    return [_prompt(p.name, n, v, max_chars) for n, v in rows]


def import_prompts(store, path: str | Path, max_chars: int = 4000) -> int:
    return store.add_prompts(read_prompts(path, max_chars), source="import",
                             max_chars=max_chars)


def _message_text(value, role: str, name: str, n: int, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(str(m["content"]) for m in value if m.get("role", role) == role)
    raise ImportFailed(name, n, f'"{key}" must be a string or a list of messages')


def _parse_dpo(name: str, rows, max_chars: int) -> list[dict]:
    out = []
    for n, r in rows:
        for k in ("prompt", "chosen", "rejected"):
            if k not in r:
                raise ImportFailed(name, n, f'missing key "{k}"')
        prompt = _prompt(name, n, _message_text(r["prompt"], "user", name, n, "prompt"),
                         max_chars)
        chosen = _message_text(r["chosen"], "assistant", name, n, "chosen")
        rejected = _message_text(r["rejected"], "assistant", name, n, "rejected")
        if not chosen.strip() or not rejected.strip():
            raise ImportFailed(name, n, "empty chosen or rejected response")
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def _parse_kto(name: str, rows, max_chars: int) -> list[dict]:
    out = []
    for n, r in rows:
        if not isinstance(r.get("label"), bool):
            raise ImportFailed(name, n, '"label" must be true or false')
        completion = _message_text(r.get("completion", ""), "assistant", name, n, "completion")
        if not completion.strip():
            raise ImportFailed(name, n, "empty completion")
        out.append({"prompt": _prompt(name, n, _message_text(r.get("prompt"), "user", name, n,
                                                             "prompt"), max_chars),
                    "completion": completion, "label": r["label"]})
    return out


def import_prefs(store, path: str | Path, max_chars: int = 4000) -> dict:
    """Import TRL DPO JSONL, TRL KTO JSONL or a votes CSV (detected from keys/columns)."""
    p = Path(path)
    text = read_text(p)
    if p.suffix.lower() == ".csv":
        return _import_votes(store, p.name, _csv(p.name, text, VOTE_COLUMNS[1:9]), max_chars)
    rows = _jsonl(p.name, text)
    if not rows:
        raise ImportFailed(p.name, None, "no rows found")
    keys = set(rows[0][1])
    if {"chosen", "rejected"} <= keys:
        return _import_dpo(store, _parse_dpo(p.name, rows, max_chars))
    if {"completion", "label"} <= keys:
        return _import_kto(store, _parse_kto(p.name, rows, max_chars))
    raise ImportFailed(p.name, rows[0][0], f"unknown format (keys {sorted(keys)}): expected "
                       "prompt/chosen/rejected (DPO) or prompt/completion/label (KTO)")


def _prompt_id(store, db, text: str, source: str) -> int:
    from storage.db import now

    db.execute("insert or ignore into prompts (text, source, created, served_count) values "
               "(?, ?, ?, 0)", [text, source, now()])
    return db.execute("select id from prompts where text = ?", [text]).fetchone()[0]


def _import_dpo(store, rows: list[dict]) -> dict:
    from storage.db import now

    with store.write() as db:
        for r in rows:
            pid = _prompt_id(store, db, r["prompt"], "import")
            pair = db.execute(
                "insert into pairs (prompt_id, response_a, response_b, version_a, version_b, "
                "arena, gen_config, seed, created, status) values (?,?,?,?,?,0,'{}',0,?,'voted')",
                [pid, r["chosen"], r["rejected"], "import", "import", now()]).lastrowid
            db.execute("insert into votes (pair_id, annotator, choice, created, updated) "
                       "values (?, ?, 'a', ?, ?)", [pair, IMPORT_ANNOTATOR, now(), now()])
    return {"format": "dpo", "pairs": len(rows)}


def _import_kto(store, rows: list[dict]) -> dict:
    from storage.db import now

    with store.write() as db:
        for r in rows:
            pid = _prompt_id(store, db, r["prompt"], "import")
            db.execute("insert into labels (prompt_id, completion, label, source, created) "
                       "values (?, ?, ?, 'import', ?)", [pid, r["completion"], int(r["label"]),
                                                          now()])
    return {"format": "kto", "labels": len(rows)}


def _import_votes(store, name: str, rows, max_chars: int) -> dict:
    from storage.db import now
    from storage.votes import CHOICES

    parsed, pairs = [], {}
    for n, r in rows:
        if r["choice"] not in CHOICES:
            raise ImportFailed(name, n, f"choice {r['choice']!r} is not one of "
                                        f"{', '.join(CHOICES)}")
        if not r["annotator"].strip():
            raise ImportFailed(name, n, "empty annotator")
        if r.get("decide_ms") and not r["decide_ms"].isdigit():
            raise ImportFailed(name, n, f"decide_ms {r['decide_ms']!r} is not a number")
        _prompt(name, n, r["prompt"], max_chars)
        parsed.append(r)
    with store.write() as db:
        for r in parsed:
            key = r["pair_id"] or f"row{len(pairs)}"
            if key not in pairs:
                pid = _prompt_id(store, db, r["prompt"].strip(), "import")
                # keep the exported pair id when it is free (a fresh DB round-trips exactly)
                want = int(key) if str(key).isdigit() and not db.execute(
                    "select 1 from pairs where id = ?", [int(key)]).fetchone() else None
                pairs[key] = db.execute(
                    "insert into pairs (id, prompt_id, response_a, response_b, version_a, "
                    "version_b, arena, gen_config, seed, created, status) values "
                    "(?,?,?,?,?,?,?,'{}',0,?,'voted')",
                    [want, pid, r["response_a"], r["response_b"], r["version_a"],
                     r["version_b"], int(r["arena"] in ("1", "True", "true")),
                     now()]).lastrowid
            db.execute("insert into votes (pair_id, annotator, choice, better_answer, decide_ms,"
                       " created, updated) values (?,?,?,?,?,?,?) on conflict (pair_id, "
                       "annotator) do update set choice = excluded.choice",
                       [pairs[key], r["annotator"], r["choice"], r["better_answer"] or None,
                        int(r["decide_ms"]) if r.get("decide_ms") else None,
                        r["created"] or now(), now()])
    return {"format": "votes", "pairs": len(pairs), "votes": len(parsed)}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export(store, fmt: str, out_path: str | Path) -> int:
    """Write dpo (JSONL), kto (JSONL) or votes (CSV) atomically; returns the row count."""
    out = Path(out_path)
    if fmt == "dpo":
        rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in store.training_pairs()]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif fmt == "kto":
        rows = [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
                for r in store.kto_rows()]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif fmt == "votes":
        rows = store.query(
            "select v.pair_id, pr.text as prompt, p.response_a, p.response_b, p.version_a, "
            "p.version_b, p.arena, v.annotator, v.choice, v.better_answer, v.decide_ms, "
            "v.created from votes v join pairs p on p.id = v.pair_id join prompts pr on "
            "pr.id = p.prompt_id order by v.pair_id, v.id")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=VOTE_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if r[k] is None else r[k]) for k in VOTE_COLUMNS} for r in rows)
        text = buf.getvalue()
    else:
        raise BadInput(f"export format {fmt!r}: use dpo, kto or votes")
    _atomic_write(out, text)
    return len(rows)
