"""storage/files.py: atomic writes of files, directories and zips."""

from __future__ import annotations

import os
import stat
import zipfile

import pytest

from storage.files import (
    atomic_write,
    atomic_write_json,
    jsonl_text,
    publish_dir,
    staged_dir,
    zip_dir,
)
from storage.readers import read_jsonl


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    f = tmp_path / "sub" / "x.json"
    atomic_write_json(f, {"a": 1})
    atomic_write(f, b"\x00bytes")
    assert f.read_bytes() == b"\x00bytes"
    assert [p.name for p in f.parent.iterdir()] == ["x.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(f) == 0o666 & ~umask  # like open(path, "w")
    atomic_write(tmp_path / "secret", "s", mode=0o600)
    assert _mode(tmp_path / "secret") == 0o600


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    f = tmp_path / "x.txt"
    atomic_write(f, "old")

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(f, "new")
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_jsonl_keeps_line_separators_inside_texts(tmp_path):
    rows = [{"t": "a\u2028b\u2029c\u0085d"}, {"t": "e"}]
    atomic_write(tmp_path / "r.jsonl", jsonl_text(rows))
    assert read_jsonl(tmp_path / "r.jsonl") == rows


def test_staged_dir_is_published_whole_or_not_at_all(tmp_path):
    with staged_dir(tmp_path, ".v1.") as tmp:
        (tmp / "a").write_text("1")
        publish_dir(tmp, tmp_path / "v1")
    assert (tmp_path / "v1" / "a").read_text() == "1"
    with pytest.raises(RuntimeError), staged_dir(tmp_path, ".v2.") as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed before publishing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]  # no v2, no temp dir
    z = zip_dir(tmp_path / "v1", tmp_path / "out" / "v1.zip")
    with zipfile.ZipFile(z) as archive:
        assert archive.read("a") == b"1"
