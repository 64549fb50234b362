"""The learning suite as a user runs it (``python bench/learning.py --suite``), small: the
tiny model, one seed, one round. Checks the JSON contract other tools read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


HOLD = ("import sys, time\nfrom bench.learning_suite import suite_lock\n"
        "with suite_lock('tiny'):\n    print('held', flush=True)\n    time.sleep(60)\n")
TAKE = ("from bench.learning_suite import suite_lock\n"
        "with suite_lock('tiny'):\n    print('took it')\n")


def test_a_second_suite_beside_a_running_one_stops_with_a_clear_message(tmp_path):
    env = {**os.environ, "LIVEDPO_CACHE_DIR": str(tmp_path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, "-c", TAKE], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert "another `bench/learning.py --suite` is running with tiny" in second.stderr
        assert str(tmp_path / "learning-suite" / "tiny" / ".lock") in second.stderr
    finally:
        holder.kill()  # as kill -9 would: the system drops the lock with the process
        holder.wait()
    after = subprocess.run([sys.executable, "-c", TAKE], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert after.returncode == 0 and "took it" in after.stdout, after.stderr
