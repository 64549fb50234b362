"""Versioned adapter directories: atomic save, listing, import and clean-up.

Each accepted round writes ``<data_dir>/adapters/vN/`` holding adapter_model.safetensors,
adapter_config.json and metadata.json (parent version, round, loss type, beta, data
counts, metrics). It is written into a temp dir beside it and renamed into place, so a
kill at any moment leaves either no ``vN`` or a complete one; leftover temp dirs are
removed at start. A kill after the rename but before the DB row leaves a complete ``vN``
the DB does not know; at start it is moved aside to ``.orphan-vN-<time>`` (kept for a
human to inspect), or its version number could never be used again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path

from storage.failpoints import failpoint
from storage.files import fsync_dir, publish_dir, staged_dir

REQUIRED_FILES = ("adapter_model.safetensors", "adapter_config.json")
_TMP_PREFIX = ".tmp-"
_ORPHAN_PREFIX = ".orphan-"
_VERSION_DIR = re.compile(r"v[0-9]+")


def is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in REQUIRED_FILES)


def write_version(adapters_dir: Path, version: str, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` then rename tmp_dir to adapters_dir/version atomically."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    target = adapters_dir / version
    if target.exists():
        raise FileExistsError(f"adapter directory {target} already exists; refusing to "
                              "overwrite a saved version (if the DB does not list it, a crash "
                              "left it: starting the app moves it aside)")
    with staged_dir(adapters_dir, f"{_TMP_PREFIX}{version}-") as tmp:
        write(tmp)
        if not is_complete(tmp):
            raise OSError(f"adapter write to {tmp} left it incomplete")
        # crash tests: files written, not renamed
        publish_dir(tmp, target, before_rename=lambda: failpoint("adapter.before_rename"))
    return target


def clean_temp_dirs(adapters_dir: Path) -> int:
    """Remove temp dirs left by a save that was killed part-way. Returns how many."""
    if not adapters_dir.is_dir():
        return 0
    n = 0
    for p in adapters_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    return n


def set_aside_orphans(adapters_dir: Path, known: Collection[str]) -> list[Path]:
    """Move ``vN`` dirs whose version the DB does not know (``known``) to
    ``.orphan-vN-<time>``, so the number can be saved again; returns the new paths.

    Call at start, before any round runs (like ``clean_temp_dirs``)."""
    if not adapters_dir.is_dir():
        return []
    moved = []
    for p in sorted(adapters_dir.iterdir()):
        if p.is_dir() and _VERSION_DIR.fullmatch(p.name) and p.name not in known:
            stem = f"{_ORPHAN_PREFIX}{p.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            dest, n = adapters_dir / stem, 1
            while dest.exists():
                dest, n = adapters_dir / f"{stem}-{n}", n + 1
            os.replace(p, dest)
            moved.append(dest)
    if moved:
        fsync_dir(adapters_dir)
    return moved


def read_metadata(path: Path) -> dict:
    meta = path / "metadata.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def copy_in(src: Path, adapters_dir: Path, version: str, metadata: dict) -> Path:
    """Copy an externally trained adapter (e.g. from trainer.training.offline) in as ``version``."""
    if not is_complete(src):
        missing = [f for f in REQUIRED_FILES if not (src / f).is_file()]
        raise ValueError(f"{src} is not a PEFT adapter directory: missing {', '.join(missing)}. "
                         "Point at a directory written by save_pretrained() of a LoRA model.")

    def write(tmp: Path) -> None:
        for f in REQUIRED_FILES:
            shutil.copy2(src / f, tmp / f)
        (tmp / "metadata.json").write_text(json.dumps({**read_metadata(src), **metadata},
                                                      indent=2, sort_keys=True))

    return write_version(adapters_dir, version, write)
