"""Trainer faults injected into the real background trainer thread (tiny model): a NaN
loss, an exception in the middle of training, and a full disk while the adapter is
written (on the final rename, and part-way through the files). Each round fails and:
serving stays on the previous adapter (same version, same files, same samples), the
error is recorded on the round, in service.status() and on the Train tab, nothing is
left half-written on disk, the thread lives on, and the next round runs and is accepted."""

from __future__ import annotations

import errno
import hashlib
import html
import os
from pathlib import Path

import pytest

from app import views
from app.api import Handlers
from app.config import AppConfig
from tests.svc_fixtures import tiny_service, vote_all
from tests.ui_fixtures import wait_for
from trainer.model import adapters
from trainer.training import rounds

PROBE = ["hello there", "Question: What is the sea?\nAnswer:"]
HOSTILE_ERROR = "injected fault <img src=x onerror=alert(1)> in step 2"


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_dir):
    """v1 serving, and the trainer thread running (it trains only when asked)."""
    s = tiny_service(tmp_path_factory.mktemp("faults") / "data", tiny_model_dir,
                     "--accept-tolerance", "1", "--votes-per-round", "1000")
    s.pool.fill_once(8)
    vote_all(s, "ann")
    assert s.trainer.run_one("setup").version == "v1"
    s.trainer.start()
    yield s
    s.stop()


def round_via_thread(svc) -> rounds.RoundOutcome:
    """Ask the background thread for a round (as Train now does) and wait for its end."""
    prev = svc.trainer.last_outcome.round_id
    svc.train_now()
    return wait_for(lambda: (o := svc.trainer.last_outcome) and o.round_id != prev
                    and svc.trainer.last_error == o.error and o, timeout=300, every=0.5)


def serving_snapshot(svc) -> dict:
    """The serving version, its adapter files and what it samples with a fixed seed."""
    version = svc.store.serving_adapter()
    path = Path(svc.store.get_adapter(version)["path"])
    return {"version": (version, svc.policy.serving),
            "files": {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                      for f in sorted(path.iterdir())},
            "samples": [s.text for s in svc.sampler.sample(PROBE, version, seed=7)],
            "adapters": [(a["version"], a["status"]) for a in svc.store.list_adapters()],
            "dirs": sorted(p.name for p in svc.adapters_dir.iterdir())}


def check_failed_round(svc, outcome, before: dict, expect: str) -> None:
    """The round failed cleanly: serving untouched, error recorded and shown."""
    assert outcome.status == "failed" and expect in outcome.error, outcome
    assert serving_snapshot(svc) == before  # no vN dir, no temp dir, same weights
    row = svc.store.get_round(outcome.round_id)
    assert row["status"] == "failed" and row["error"] == outcome.error
    status = svc.status()["trainer"]
    assert status["last_error"] == outcome.error and status["running"]
    assert status["last_round"] == {"id": outcome.round_id, "status": "failed",
                                    "version": None}
    md, *_ = views.trainer_markdown(svc.status())
    assert f"**Last error**: {html.escape(outcome.error)}" in md
    live = Handlers(svc, AppConfig()).train_live(None)  # the Train tab, as an admin sees it
    assert html.escape(outcome.error) in live[0]
    table = live[-1]
    assert table.loc[table["round"] == outcome.round_id, "error"].item() == outcome.error


def check_next_round_accepted(svc, before: dict) -> None:
    n = len(before["adapters"])
    outcome = round_via_thread(svc)
    assert outcome.status == "accepted" and outcome.version == f"v{n + 1}", outcome.error
    assert svc.store.serving_adapter() == svc.policy.serving == outcome.version
    assert svc.status()["trainer"]["last_error"] is None
    assert "Last error" not in views.trainer_markdown(svc.status())[0]


def test_nan_loss(svc, monkeypatch):
    before = serving_snapshot(svc)
    real = rounds.preference_loss

    def nan_loss(*args, **kwargs):
        losses, chosen, rejected = real(*args, **kwargs)
        return losses * float("nan"), chosen, rejected

    monkeypatch.setattr(rounds, "preference_loss", nan_loss)
    check_failed_round(svc, round_via_thread(svc), before, "non-finite loss (nan)")
    monkeypatch.undo()
    check_next_round_accepted(svc, before)


def test_exception_in_the_middle_of_training(svc, monkeypatch):
    before = serving_snapshot(svc)
    real, calls = rounds._micro_step, []

    def fails_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError(HOSTILE_ERROR)
        return real(*args, **kwargs)

    monkeypatch.setattr(rounds, "_micro_step", fails_second_time)
    outcome = round_via_thread(svc)
    check_failed_round(svc, outcome, before, f"RuntimeError: {HOSTILE_ERROR}")
    assert len(calls) == 2  # it really failed part-way, after a step had trained
    monkeypatch.undo()
    check_next_round_accepted(svc, before)


def test_disk_full_on_the_final_rename(svc, monkeypatch):
    before = serving_snapshot(svc)
    real = os.replace

    def no_space(src, dst, *args, **kwargs):
        if Path(dst).parent == svc.adapters_dir:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(adapters.os, "replace", no_space)
    check_failed_round(svc, round_via_thread(svc), before, "No space left on device")
    monkeypatch.undo()
    check_next_round_accepted(svc, before)


def test_disk_full_part_way_through_the_files(svc, monkeypatch):
    before = serving_snapshot(svc)
    real = svc.policy.save_train_adapter

    def half_written(out_dir: Path, metadata: dict) -> None:
        real(out_dir, metadata)
        weights = Path(out_dir) / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:64])  # the disk filled up mid-file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(weights))

    monkeypatch.setattr(svc.policy, "save_train_adapter", half_written)
    check_failed_round(svc, round_via_thread(svc), before, "No space left on device")
    monkeypatch.undo()
    check_next_round_accepted(svc, before)


# What a round does when the hot-swap or the bookkeeping after training fails.
def test_failed_hot_swap_leaves_no_ready_version(svc, monkeypatch):
    before = serving_snapshot(svc)

    def cannot_load(version, path=None):
        raise RuntimeError("cannot load the new adapter")

    monkeypatch.setattr(svc.policy, "swap", cannot_load)
    outcome = round_via_thread(svc)
    assert outcome.status == "failed" and svc.policy.serving == before["version"][1]
    ready = [a["version"] for a in svc.store.list_adapters() if a["status"] == "ready"]
    assert ready == [v for v, s in before["adapters"] if s == "ready"]


def test_error_after_the_swap_keeps_round_and_serving_consistent(svc, monkeypatch):
    before = serving_snapshot(svc)

    def pool_error(version):
        raise RuntimeError("retiring old pairs failed")

    monkeypatch.setattr(svc, "on_new_version", pool_error)
    outcome = round_via_thread(svc)
    row, serving = svc.store.get_round(outcome.round_id), svc.store.serving_adapter()
    assert (row["status"] == "accepted" and serving == row["adapter_version"]) or (
        row["status"] == "failed" and serving == before["version"][0])
