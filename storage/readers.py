"""Untrusted import files -> rows: decoding, line splitting, JSONL and CSV parsing.

Every problem is an ``ImportFailed`` naming the file, the line and the fix: missing,
binary, UTF-16 or non-UTF-8 files, over-long lines, malformed or too deeply nested JSON,
lone surrogate escapes, missing or doubled CSV columns, ragged CSV rows.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from storage.errors import ImportFailed

MAX_LINE_CHARS = 1_000_000
Rows = list[tuple[int, dict]]
_NEWLINE = re.compile(r"\r\n|\r|\n")


def lines(text: str) -> list[str]:
    """The lines of ``text``, split at \\n, \\r\\n and \\r only. (str.splitlines also splits at
    U+2028, U+0085, form feeds...: characters that prompts and JSON strings hold as text.)"""
    out = _NEWLINE.split(text)
    return out[:-1] if out[-1] == "" else out


def read_text(path: str | Path) -> str:
    """The file's text, refusing missing, binary, non-UTF-8 files and over-long lines."""
    p = Path(path)
    if not p.is_file():
        raise ImportFailed(p.name, None, f"no such file ({p})")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImportFailed(p.name, None, f"cannot read it ({e.strerror or e})") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ImportFailed(p.name, 1, "UTF-16/UTF-32 text; save the file as UTF-8")
    if b"\x00" in data:
        raise ImportFailed(p.name, data[:data.index(b"\x00")].count(b"\n") + 1,
                           "binary content (NUL bytes): expected a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ImportFailed(p.name, line, f"not valid UTF-8 (byte {data[e.start]:#x}); save the "
                                         "file as UTF-8") from None
    for n, line in enumerate(lines(text), 1):
        if len(line) > MAX_LINE_CHARS:
            raise ImportFailed(p.name, n, f"line has {len(line)} characters (max "
                                          f"{MAX_LINE_CHARS})")
    return text


def read_jsonl(path: str | Path) -> list[dict]:
    """Every object of a JSONL file (blank lines skipped), split at ``\n`` only."""
    p = Path(path)
    return [row for _, row in jsonl_rows(p.name, read_text(p))]


def jsonl_rows(name: str, text: str) -> Rows:
    """(line number, object) per non-blank line."""
    rows = []
    for n, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            json.dumps(row, ensure_ascii=False).encode("utf-8")  # lone \\ud800 escapes
        except UnicodeEncodeError:
            raise ImportFailed(name, n, "a \\ud800-\\udfff escape outside a surrogate pair is "
                                        "not valid text; remove it") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError, huge ints, deep nesting
            why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else (
                "nested too deeply" if isinstance(e, RecursionError) else str(e))
            raise ImportFailed(name, n, f"malformed JSON ({why}); each line must be one JSON "
                                        "object") from None
        if not isinstance(row, dict):
            raise ImportFailed(name, n, f"expected a JSON object per line, got "
                                        f"{type(row).__name__}")
        rows.append((n, row))
    return rows


def csv_rows(name: str, text: str, required: list[str]) -> Rows:
    """(line number, row) per CSV record, after checking the header has ``required``."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise ImportFailed(name, 1, f"column(s) {', '.join(twice)} appear twice in the "
                                        "header; keep one of each")
        if missing:
            raise ImportFailed(name, 1, f"missing column(s) {', '.join(missing)}; found "
                                        f"{', '.join(header) or 'none'}")
        rows = []
        for row in reader:
            if None in row or None in row.values():
                raise ImportFailed(name, reader.line_num, f"expected {len(header)} fields "
                                                          "(as in the header)")
            rows.append((reader.line_num, row))
        return rows
    except csv.Error as e:
        raise ImportFailed(name, reader.line_num, f"malformed CSV ({e})") from None
