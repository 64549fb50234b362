"""Helpers for tests and benchmarks that run the web app as a server on loopback: a free
port, and what a server's log says went wrong. Nothing here talks to any address but
127.0.0.1.
"""

from __future__ import annotations

import socket
from pathlib import Path

HOST = "127.0.0.1"  # the only address tests and benchmarks serve on and talk to


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (another process may take it
    before it is bound: callers retry)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def log_errors(path: Path) -> dict:
    """Tracebacks and ERROR lines the server logged; ``raised`` has each traceback's
    final line (the exception and its message), so a failure can be read from the result
    after the server's work dir is gone."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    bad = [ln for ln in lines if "Traceback" in ln or " ERROR " in ln]
    raised, in_tb = [], False
    for ln in lines:
        if ln.startswith("Traceback"):
            in_tb = True
        elif in_tb and ln and not ln.startswith((" ", "\t")):
            raised.append(ln)
            in_tb = ln.startswith(("The above exception", "During handling"))
    return {"count": len(bad), "examples": bad[:5], "raised": raised[:5]}
