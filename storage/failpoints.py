"""Failpoints: named places where a crash test can freeze the process and SIGKILL it there.

``failpoint(name)`` is a no-op (one environment lookup) unless ``LIVEDPO_FAILPOINTS`` names
a directory. Then, if a file called ``name`` exists in it (the failpoint is *armed*), the
call atomically renames it to ``name.hit`` (so it fires once, in one thread, even across a
restart), writes the process id into it and blocks while ``name.hit`` exists. The test
waits for ``name.hit``, kills the process (``kill -9``) at exactly that point, and deletes
the file; deleting it without a kill lets the process go on. A forgotten failpoint gives up
blocking after ``MAX_BLOCK_S``.

The places (keep this list in step with the calls):

- ``round.step``: trainer/training/rounds.py, between two optimizer steps of a round (model lock
  released, so generation and votes go on while it blocks).
- ``adapter.before_rename``: trainer/model/adapters.py, the new version's files are written
  into the temp dir but it is not yet renamed into place.
- ``adapter.before_record``: trainer/training/rounds.py, the version dir is in place but the DB
  has no row for it yet.
- ``import.before_commit``: storage/io.py, every row of an import is inserted inside the
  write transaction (which holds the DB's write lock), before COMMIT.

It lives in storage/ so that both storage/ and trainer/ can import it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

ENV = "LIVEDPO_FAILPOINTS"
MAX_BLOCK_S = 600.0
POLL_S = 0.05
log = logging.getLogger(__name__)


def failpoint(name: str) -> None:
    """Block here if the test armed ``name`` (see the module docstring); else do nothing."""
    where = os.environ.get(ENV)
    if where:
        _fire(Path(where), name)


def _fire(where: Path, name: str) -> None:
    hit = where / f"{name}.hit"
    try:
        os.replace(where / name, hit)  # one-shot: only the first caller gets here
    except FileNotFoundError:
        return  # not armed (or another thread took it)
    hit.write_text(str(os.getpid()))
    log.warning("failpoint %s hit (pid %d): blocking for a kill", name, os.getpid())
    deadline = time.monotonic() + MAX_BLOCK_S
    while hit.exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)


def arm(where: Path, name: str) -> Path:
    """Arm ``name`` in the failpoint directory ``where``; returns the hit marker's path."""
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_text("armed")
    return where / f"{name}.hit"
