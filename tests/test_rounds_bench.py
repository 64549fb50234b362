"""bench/rounds.py (vote -> new version serving): its summary on hand-made rounds, and a
small real run on the tiny model as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.rounds import TARGET_P50_S, summary

ROOT = Path(__file__).resolve().parents[1]


def test_summary_reports_all_rounds_and_the_accepted_ones():
    rows = [{"latency_s": s, "status": st} for s, st in
            [(40.0, "accepted"), (50.0, "rejected"), (70.0, "accepted")]]
    s = summary(rows)
    assert s["all"]["n"] == 3 and s["accepted"]["n"] == 2
    assert s["all"]["p50"] == 50.0 and s["met"] is (TARGET_P50_S >= 50.0)
    assert not summary([{"latency_s": 90.0, "status": "accepted"}])["met"]
    assert summary([])["all"]["p50"] is None and not summary([])["met"]
    failed = summary(rows + [{"latency_s": 1.0, "status": "failed"}])
    assert failed["failed"] == 1 and failed["all"]["n"] == 3 and not failed["met"]


@pytest.mark.slow
def test_rounds_bench_on_the_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "rounds.json"
    cmd = [sys.executable, "bench/rounds.py", "--model", str(tiny_model_dir), "--rounds", "2",
           "--json", str(out), "--max-new-tokens", "8", "--batch-prompts", "4"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and out.is_file(), f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    res = json.loads(out.read_text())
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    for r in res["rounds"]:
        assert r["status"] in ("accepted", "rejected") and r["latency_s"] > 0
        parts = r["wait_s"] + r["train_s"] + r["check_s"] + r["other_s"]
        assert parts == pytest.approx(r["latency_s"], abs=0.05)
    assert res["latency_s"]["all"]["n"] == 2 and "vote -> round finished" in run.stdout
