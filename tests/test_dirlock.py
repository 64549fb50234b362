"""One model-owning process per data dir: a second is refused with a clear message."""

import subprocess
import sys
from pathlib import Path

import pytest

from storage.dirlock import DataDirBusy, lock_data_dir, unlock_data_dir

ROOT = Path(__file__).resolve().parent.parent


def test_second_lock_is_refused_and_release_frees_it(tmp_path):
    held = lock_data_dir(tmp_path / "data")
    with pytest.raises(DataDirBusy, match=r"in use by another LiveDPO process \(pid \d+\)"):
        lock_data_dir(tmp_path / "data")
    unlock_data_dir(held)
    unlock_data_dir(lock_data_dir(tmp_path / "data"))  # free again


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from pathlib import Path; from storage.dirlock import "
            "lock_data_dir; f = lock_data_dir(Path(sys.argv[1])); print('held', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "data")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(DataDirBusy, match=f"pid {proc.pid}"):
            lock_data_dir(tmp_path / "data")
    finally:
        proc.kill()
        proc.wait(30)
    unlock_data_dir(lock_data_dir(tmp_path / "data"))  # the kernel dropped it


def test_cli_refuses_a_second_trainer_on_a_served_data_dir(tmp_path, tiny_model_dir):
    held = lock_data_dir(tmp_path / "data")
    try:
        out = subprocess.run([sys.executable, "app.py", "train", "--data-dir",
                              str(tmp_path / "data"), "--model", str(tiny_model_dir)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        unlock_data_dir(held)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "is in use by another LiveDPO process" in out.stderr
    assert "pass another --data-dir" in out.stderr
