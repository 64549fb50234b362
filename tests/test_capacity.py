"""The capacity benchmark (bench/capacity.py) run as a user runs it, small, on the tiny
model: seeded thinking annotators, one server thread, the search and its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_capacity_run_on_the_tiny_model(tiny_model_dir, tmp_path):
    pytest.importorskip("gradio_client")
    out = tmp_path / "capacity.json"
    cmd = [sys.executable, "bench/capacity.py", "--model", str(tiny_model_dir), "--threads",
           "1", "--clients", "1,2", "--seconds", "20", "--think", "0.2", "0.6",
           "--ready-timeout", "300", "--json", str(out), "--", "--max-new-tokens", "8",
           "--batch-prompts", "4"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.is_file(), f"no result (exit {run.returncode}):\n{run.stdout[-2000:]}\n" \
                          f"{run.stderr[-3000:]}"
    res = json.loads(out.read_text())
    runs = res["threads"]["1"]["runs"]
    assert run.returncode == 0 and all(r["ok"] for r in runs), run.stdout[-2000:]
    assert [r["clients"] for r in runs][0] == 1 and runs[0]["votes"] > 0
    assert runs[0]["settings"]["think_range"] == [0.2, 0.6]
    one = res["threads"]["1"]
    assert runs[0]["settings"]["server_threads"] == 1
    # the search stops at the first starved count; the capacity is a count before it
    shares = [(r["no_pair_answers"] + r["next_pair_failed"])
              / max(r["next_pair_ms"]["n"] + r["next_pair_failed"], 1) for r in runs]
    assert all(x <= 0.05 for x in shares[:-1])
    assert one["limit_reached"] == (shares[-1] > 0.05)
    assert one["capacity"] is None or one["capacity"] in [r["clients"] for r in runs]
    if one["capacity"] is not None:
        i = [r["clients"] for r in runs].index(one["capacity"])
        assert shares[i] <= 0.05 and runs[i]["rounds"]["finished_by_status"].get(
            "accepted", 0) + runs[i]["rounds"]["finished_by_status"].get("rejected", 0) >= 1
    assert "capacity (annotators kept supplied)" in run.stdout
