"""Files on disk, written so that a kill -9 at any moment leaves the old or the new
version, never half of one: the one atomic write of the project.

- ``atomic_write``: a file, via a temp file in the same folder, fsync, ``os.replace``,
  then fsync of the folder (so the rename itself survives a power cut).
- ``staged_dir`` + ``publish_dir``: a whole directory (an adapter version, the converted
  model), built in a temp dir beside its target and renamed into place.
- ``zip_dir``: a zip of a directory (a download), written the same way.
- ``jsonl_text``: the JSON Lines text of rows. ``ensure_ascii=False`` keeps U+2028,
  U+2029 and U+0085 raw inside strings, so JSONL is split at line ends only
  (storage/readers.py ``lines``: ``\\n``, ``\\r\\n``, ``\\r``), never with
  ``str.splitlines``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it; done once, at import
    os.umask(umask)
    return umask


_NEW_FILE_MODE = 0o666 & ~_read_umask()  # what open(path, "w") gives a new file


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *,
                 mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically.

    ``mode`` sets the file's permissions before any byte is written (e.g. 0o600 for a
    file of password hashes); by default a new file's usual mode (0o666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _NEW_FILE_MODE if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: str | os.PathLike[str], value: object, **kwargs) -> None:
    """``atomic_write`` of ``value`` as indented JSON with a final newline."""
    atomic_write(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n",
                 **kwargs)


def jsonl_text(rows: list[dict]) -> str:
    """JSON Lines: one object per line, each line ended by ``\\n``."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@contextmanager
def staged_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new temp directory in ``parent`` (same file system as its target); removed on
    exit unless ``publish_dir`` renamed it into place. A kill leaves it behind under
    ``prefix``: callers remove such leftovers at start."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, target: Path, before_rename: Callable[[], None] | None = None) -> None:
    """fsync every file of ``tmp``, rename it to ``target``, fsync the parent."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    if before_rename is not None:
        before_rename()
    os.replace(tmp, target)
    fsync_dir(target.parent)


def zip_dir(src: Path, out: Path) -> Path:
    """Zip the files of ``src`` into ``out`` (a .zip path) atomically; returns ``out``."""
    with staged_dir(out.parent, f".{out.name}.") as tmp:
        archive = shutil.make_archive(str(tmp / "archive"), "zip", root_dir=src)
        atomic_write(out, Path(archive).read_bytes())
    return out
