import zipfile

import pytest

from storage.files import zip_dir
from trainer.model import adapters


def _write_ok(d):
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    (d / "adapter_config.json").write_text("{}")


def test_write_version_is_atomic_and_complete(tmp_path):
    path = adapters.write_version(tmp_path, "v1", _write_ok)
    assert path == tmp_path / "v1" and adapters.is_complete(path)
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]  # no temp dirs left
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        adapters.write_version(tmp_path, "v1", _write_ok)


def test_failed_write_leaves_nothing(tmp_path):
    def boom(d):
        (d / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        adapters.write_version(tmp_path, "v2", boom)
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(OSError, match="incomplete"):
        adapters.write_version(tmp_path, "v2", lambda d: None)
    assert list(tmp_path.iterdir()) == []


def test_clean_temp_dirs_removes_leftovers_of_a_kill(tmp_path):
    (tmp_path / ".tmp-v3-abc").mkdir()
    adapters.write_version(tmp_path, "v1", _write_ok)
    assert adapters.clean_temp_dirs(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_copy_in_checks_the_directory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(ValueError, match="missing adapter_model.safetensors"):
        adapters.copy_in(src, tmp_path / "adapters", "v1", {})
    _write_ok(src)
    out = adapters.copy_in(src, tmp_path / "adapters", "v1", {"source": "x"})
    assert adapters.read_metadata(out) == {"source": "x"}
    z = zip_dir(out, tmp_path / "dl" / "livedpo-adapter-v1.zip")
    with zipfile.ZipFile(z) as archive:
        assert set(archive.namelist()) >= {"adapter_model.safetensors", "adapter_config.json"}
    assert [f.name for f in z.parent.iterdir()] == [z.name]  # no temp file left
