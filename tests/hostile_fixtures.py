"""Helpers for the hostile-input, role and fault tests: texts that try to run script or
garble the page, a whole-DB snapshot for "nothing changed" checks, raw Gradio HTTP calls
(log in, upload a file, run one event by fn_index) and a Service over a store alone."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

# Each payload sets a window flag starting with "xss" (and most open a dialog) if it runs.
# Camel-case flags: no "_" or "*" that Markdown could read as emphasis.
TAG_PAYLOADS = (  # raw HTML: must be shown literally, as text
    '<script>window.xssScript=1;alert("script")</script>',
    '<img src=x onerror="window.xssImg=1;alert(1)">',
    '<svg onload="window.xssSvg=1;alert(2)"><circle r=5></circle></svg>',
    '<svg><animate onbegin="window.xssAnim=1" attributeName=x dur=1s></animate></svg>',
    '<iframe srcdoc="<script>parent.xssIframe=1</script>"></iframe>',
    '<details open ontoggle="window.xssDetails=1">details</details>',
    '<a href="javascript:window.xssHref=1">html link</a>',
    '<math><mi xlink:href="javascript:window.xssMath=1">m</mi></math>',
    '<style>body{display:none}</style>',
)
LINK_PAYLOADS = (  # Markdown links and images: may render, but never as a script link
    '[click me](javascript:window.xssLink=1)',
    '[case](JaVaScRiPt:window.xssCase=1)',
    '[entity](&#106;avascript:window.xssEntity=1)',
    '[data](data:text/html;base64,PHNjcmlwdD5wYXJlbnQueHNzRGF0YT0xPC9zY3JpcHQ+)',
    '![pic](x" onerror="window.xssMdImg=1)',
    '![pic2](javascript:window.xssMdImg2=1)',
    '<javascript:window.xssAuto=1>',
    '```html\n<script>window.xssFence=1</script>\n```',
    '$$\\href{javascript:window.xssKatex=1}{x}$$',
)
CONTROL = ("ctrl: bell\x07 esc\x1b[31mred\x1b[0m back\x08 vt\x0b ff\x0c del\x7f nul\x00 "
           "nel\x85 ls\u2028 ps\u2029 zwj\u200d bom\ufeff end-of-control")
RTL = "file \u202egnp.exe and \u202dforced\u202c \u2067isolated\u2069 end-of-rtl"
HUGE_CHARS = 1_000_000


def huge_text(n: int = HUGE_CHARS) -> str:
    """``n`` characters of Markdown-heavy lines (headings, lists, math, HTML)."""
    line = "# h {i}\n- <b>bold</b> *em* `code` $$x$$ [l](http://x) {i}\n"
    out, i = [], 0
    while sum(map(len, out)) < n:
        out.append("".join(line.format(i=i + k) for k in range(1000)))
        i += 1000
    return "".join(out)[:n]


def db_snapshot(store) -> dict[str, list]:
    """Every row of the tables an import or a vote could touch (for equality checks)."""
    tables = ("prompts", "pairs", "votes", "labels", "adapters", "rounds", "state",
              "pair_assignments")
    return {t: [tuple(r.values()) for r in store.query(f"select * from {t} order by rowid")]
            for t in tables}


def db_file(data_dir: Path) -> Path:
    """The SQLite file of a data dir."""
    return Path(data_dir) / "livedpo.db"


def sqlite_value(data_dir: Path, sql: str, params: tuple = ()) -> Any:
    """One value read straight from the SQLite file (not through the Store)."""
    with sqlite3.connect(db_file(data_dir)) as con:
        row = con.execute(sql, params).fetchone()
    return row[0] if row else None


def store_service(store, data_dir: Path):
    """The real Service over ``store``, model never loaded (votes and settings only)."""
    from trainer import config as C
    from trainer.service import Service

    return Service(store, Path(data_dir), C.ModelConfig(), C.SamplingConfig(), C.PoolConfig(),
                   C.TrainConfig(), terminal_progress=False)


# --------------------------------------------------------------------------- raw Gradio HTTP
def fn_indices(demo, name: str, visibility: str | None = None) -> list[int]:
    """fn_index of every event whose Python function is called ``name``."""
    return [i for i, fn in demo.fns.items() if getattr(fn.fn, "__name__", "") == name
            and (visibility is None or fn.api_visibility == visibility)]


@contextmanager
def session(url: str, user: str | None = None, password: str = "") -> Iterator[httpx.Client]:
    """An HTTP client on the app, logged in as ``user`` (None: not logged in)."""
    with httpx.Client(base_url=url, timeout=60) as h:
        if user is not None:
            r = h.post("login", data={"username": user, "password": password})
            assert r.status_code == 200, f"login of {user} failed: {r.status_code} {r.text}"
        yield h


def run_event(h: httpx.Client, fn_index: int, data: list) -> dict:
    """Join the queue for one event and return its process_completed message.

    Returns {"refused": status, "text": body} if the server refuses the join itself."""
    sess = uuid.uuid4().hex
    r = h.post("gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                              "session_hash": sess, "event_data": None,
                                              "trigger_id": None})
    if r.status_code != 200:
        return {"refused": r.status_code, "text": r.text}
    with h.stream("GET", "gradio_api/queue/data", params={"session_hash": sess}) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError(f"no process_completed message for fn_index {fn_index}")


def error_of(msg: dict) -> str:
    """The error text of a finished event ('' if it succeeded)."""
    if msg.get("success"):
        return ""
    return str((msg.get("output") or {}).get("error") or msg.get("title") or "error")


def upload(h: httpx.Client, name: str, data: bytes) -> str:
    """Upload one file the way the page does; returns the server-side path."""
    r = h.post("gradio_api/upload", files={"files": (name, data, "application/octet-stream")})
    r.raise_for_status()
    return r.json()[0]


def file_data(path: str, orig_name: str | None = None) -> dict:
    """The payload of a gr.File input for an uploaded ``path``."""
    return {"path": path, "orig_name": orig_name or Path(path).name,
            "meta": {"_type": "gradio.FileData"}}
