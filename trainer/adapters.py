"""Versioned adapter directories: atomic save, listing, import and clean-up.

Each accepted round writes ``<data_dir>/adapters/vN/`` holding adapter_model.safetensors,
adapter_config.json and metadata.json (parent version, round, loss type, beta, data
counts, metrics). It is written into a temp dir beside it and renamed into place, so a
kill at any moment leaves either no ``vN`` or a complete one; leftover temp dirs are
removed at start.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

REQUIRED_FILES = ("adapter_model.safetensors", "adapter_config.json")
_TMP_PREFIX = ".tmp-"


def is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in REQUIRED_FILES)


def write_version(adapters_dir: Path, version: str, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` then rename tmp_dir to adapters_dir/version atomically."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    target = adapters_dir / version
    if target.exists():
        raise FileExistsError(f"adapter directory {target} already exists; refusing to "
                              "overwrite a saved version")
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{version}-", dir=adapters_dir))
    try:
        write(tmp)
        if not is_complete(tmp):
            raise OSError(f"adapter write to {tmp} left it incomplete")
        _fsync_dir_files(tmp)
        os.replace(tmp, target)
        _fsync(adapters_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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


def read_metadata(path: Path) -> dict:
    meta = path / "metadata.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def copy_in(src: Path, adapters_dir: Path, version: str, metadata: dict) -> Path:
    """Copy an externally trained adapter (e.g. from trainer.offline) in as ``version``."""
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


def zip_version(path: Path, out_dir: Path) -> Path:
    """A zip of one adapter version (for download), written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"livedpo-adapter-{path.name}"
    tmp = shutil.make_archive(str(base) + ".partial", "zip", root_dir=path)
    final = Path(str(base) + ".zip")
    os.replace(tmp, final)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_files(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync(path)
