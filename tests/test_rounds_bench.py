"""bench/rounds.py (the vote that completes a round -> the round finished), a small real
run on the tiny model as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
        parts = (r["wait_s"] + r["train_s"] + r["check_s"] + r["reference_s"]
                 + r["heldout_s"] + r["other_s"])
        assert parts == pytest.approx(r["latency_s"], abs=0.05)
        assert r["health_reused"] >= 0 and r["reference_s"] >= 0
    s = res["latency_s"]
    assert s["all"]["n"] + s["failed"] == 2 and "vote -> round finished" in run.stdout
    assert s["met"] == (s["failed"] == 0 and s["all"]["p50"] <= s["target_p50_s"])
