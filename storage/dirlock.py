"""One model-owning LiveDPO process per data dir, enforced by an OS file lock.

Start-up recovery (temp dirs removed, unrecorded adapter dirs set aside, interrupted
rounds closed, held pairs released) assumes nobody else is writing adapters or handing
out pairs in the same data dir. A second ``serve`` / ``train`` / ``simulate`` on the
same dir is refused with a clear message instead. The lock is an ``flock`` on
``<data_dir>/.livedpo.lock``: the kernel drops it when the holder exits, kill -9
included, so a crash never leaves a stale lock behind. Read-only commands and imports
(plain SQLite transactions) do not take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from storage.errors import StoreError

LOCK_NAME = ".livedpo.lock"


class DataDirBusy(StoreError):
    """Another LiveDPO process owns this data dir."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data dir's lock (non-blocking); keep the returned file open to hold it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise DataDirBusy(f"data dir {data_dir} is in use by another LiveDPO process "
                          f"(pid {holder}). Stop it first, or pass another --data-dir.") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def unlock_data_dir(f: IO[str] | None) -> None:
    """Release a lock taken by ``lock_data_dir`` (closing the file drops the flock)."""
    if f is not None and not f.closed:
        f.close()
