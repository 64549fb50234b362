"""The learning suite as a user runs it (``python bench/learning.py --suite``), small: the
tiny model, one seed, one round. Checks the JSON contract other tools read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROUND_KEYS = {"round", "win_rate", "answers_read", "kl_per_token", "ended", "ended_base"}


@pytest.mark.slow
def test_suite_writes_every_oracle_and_plug_in_in_the_contracted_shape(tmp_path):
    out, png = tmp_path / "suite.json", tmp_path / "suite.png"
    cmd = [sys.executable, "bench/learning.py", "--suite", "--model", "tiny", "--seeds", "0",
           "--rounds", "1", "--answers-per-round", "16", "--eval-prompts", "4", "--samples", "2",
           "--modes", "pair:dpo,rank:dno",
           "--oracle", "trainer.sim.oracles:shorter", "--json", str(out), "--plot", str(png)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    oracles = ["shorter", "keyword", "positive", "trainer.sim.oracles:shorter"]
    assert [(r["oracle"], r["vote_mode"], r["method"]) for r in runs] == [
        (o, mode, method) for o in oracles for mode, method in (("pair", "dpo"), ("rank", "dno"))]
    for r in runs:
        assert {"oracle", "seed", "method", "vote_mode", "minutes", "answers_to_70",
                "rounds"} <= set(r)
        assert r["seed"] == 0
        assert [x["round"] for x in r["rounds"]] == [0, 1]
        assert all(set(x) >= ROUND_KEYS for x in r["rounds"])
        read = r["rounds"][1]["answers_read"]
        if r["vote_mode"] == "pair":
            assert read == 16  # 8 A/B votes
        else:
            assert 12 <= read <= 16  # 4 rank votes on sets of 3-4 different answers
        first = next((x["answers_read"] for x in r["rounds"] if x["win_rate"] >= 0.7), None)
        assert r["answers_to_70"] == first
    assert png.stat().st_size > 1000
    assert "| shorter | pair:dpo | 0 |" in run.stdout
    assert "| positive | rank:dno | 0 |" in run.stdout


HOLD = ("import subprocess, sys, time\nfrom bench.learning_suite import suite_lock\n"
        "with suite_lock('tiny') as fds:\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                             pass_fds=fds)\n"
        "    print(child.pid, flush=True)\n    time.sleep(60)\n")
TAKE = ("from bench.learning_suite import suite_lock\n"
        "with suite_lock('tiny'):\n    print('took it')\n")


def test_a_second_suite_beside_a_running_one_stops_with_a_clear_message(tmp_path):
    """The lock holds while the suite or a simulate child it started runs (a child outlives
    a suite killed with -9), and is gone with the last of them."""
    env = {**os.environ, "LIVEDPO_CACHE_DIR": str(tmp_path)}

    def take():
        return subprocess.run([sys.executable, "-c", TAKE], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        second = take()
        assert second.returncode != 0
        assert "another `bench/learning.py --suite` is running with tiny" in second.stderr
        assert str(tmp_path / "learning-suite" / "tiny" / ".lock") in second.stderr
        holder.kill()  # SIGKILL: the suite dies, its simulate child goes on
        holder.wait()
        assert take().returncode != 0
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)
    for _ in range(50):  # the child is gone once init has reaped it
        after = take()
        if after.returncode == 0:
            break
        time.sleep(0.1)
    assert after.returncode == 0 and "took it" in after.stdout, after.stderr
