"""The capacity benchmark (bench/capacity.py): its pure rules on hand-made runs, the
seeded think time, and a small real run on the tiny model as a user runs it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bench.capacity import capacity, capacity_text, no_pair_share, rounds_trained, starved
from bench.load import think_time

ROOT = Path(__file__).resolve().parents[1]


def fake_run(clients: int, no_pair: int, calls: int, rounds: int = 1, ok: bool = True,
             failed_calls: int = 0, failed_rounds: int = 0) -> dict:
    return {"clients": clients, "ok": ok, "no_pair_answers": no_pair,
            "next_pair_failed": failed_calls, "next_pair_ms": {"n": calls},
            "rounds": {"finished": rounds + failed_rounds, "finished_by_status": {
                "accepted": rounds, "failed": failed_rounds}}}


def test_no_pair_share_counts_empty_and_failed_calls():
    assert no_pair_share(fake_run(2, 5, 100)) == 0.05
    assert no_pair_share(fake_run(2, 0, 90, failed_calls=10)) == 0.1  # timeouts count
    assert no_pair_share(fake_run(2, 0, 0)) == 1.0  # no call answered: not supplied


def test_starved_and_rounds_trained():
    assert not starved(fake_run(4, 5, 100)) and starved(fake_run(4, 6, 100))
    assert starved(fake_run(4, 0, 100, ok=False))
    assert rounds_trained(fake_run(4, 0, 100, rounds=2, failed_rounds=3)) == 2


def test_capacity_is_the_largest_count_before_the_first_starved_one():
    runs = [fake_run(2, 0, 50), fake_run(4, 2, 80), fake_run(6, 30, 90), fake_run(8, 1, 99)]
    assert capacity(runs) == (4, True)  # 8 came after a starved 6: not counted
    assert capacity([fake_run(2, 0, 50), fake_run(4, 0, 80, ok=False),
                     fake_run(6, 0, 80)]) == (2, True)  # failed checks end the search
    assert capacity([fake_run(2, 0, 50, rounds=0, failed_rounds=1),
                     fake_run(4, 1, 80)]) == (4, False)  # no round trained at 2
    assert capacity([fake_run(2, 20, 50)]) == (None, True)
    assert capacity_text(4, True) == "4"
    assert capacity_text(4, False) == ">= 4 (the limit was not reached)"
    assert capacity_text(None, True) == "none of the counts tried"


def test_think_time_is_seeded_and_inside_the_range():
    a = [think_time(random.Random(3), 0.0, (5.0, 20.0)) for _ in range(3)]
    b = [think_time(random.Random(3), 0.0, (5.0, 20.0)) for _ in range(3)]
    assert a == b and all(5.0 <= x <= 20.0 for x in a)
    draws = [think_time(r, 0.0, (5.0, 20.0)) for r in [random.Random(0)] for _ in range(200)]
    assert min(draws) < 7 and max(draws) > 18
    assert think_time(random.Random(0), 2.5, None) == 2.5


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
    assert (res["capacity"]["1"], res["threads"]["1"]["limit_reached"]) == capacity(runs)
    assert runs[0]["settings"]["server_threads"] == 1
    assert "capacity (annotators kept supplied)" in run.stdout


def test_benchmarks_page_states_each_thread_counts_capacity():
    from bench.run_all import capacity_lines

    c = {"settings": {"think_s": [5, 20], "seconds": 240, "votes_per_round": 16,
                      "ready_pairs": 16, "target_no_pair_share": 0.05},
         "threads": {"1": {"capacity": 2, "text": "2",
                           "runs": [fake_run(2, 1, 40), fake_run(4, 30, 90)]},
                     "2": {"capacity": None, "text": "none of the counts tried",
                           "runs": [fake_run(2, 9, 40)]}}}
    text = "\n".join(capacity_lines(c))
    assert "| 1 | 2 | 2: 1/40, 4: 30/90 | **2** |" in text
    assert "| 2 | 1 | 2: 9/40 | **none of the counts tried** |" in text and "5-20 s" in text
