"""bench/gpu_check.py on CPU with the tiny model, as a user runs it (the GPU run is the
same script with --device cuda)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["none", "4bit"])  # 4bit: the QLoRA path, on CPU
def test_gpu_check_runs_the_whole_loop_on_cpu(tmp_path, tiny_model_dir, quantize):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu",
                          "--model", str(tiny_model_dir), "--out", str(out), "--pairs", "8",
                          "--max-new-tokens", "8", "--quantize", quantize], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["ok"] and r["round_status"] == "accepted" and r["serving"] == "v1"
    assert r["generated_pairs"] == 8 and r["tokens_per_s"] > 0 and r["steps"] > 0
    assert r["quantize"] == quantize and r["hotswap_s"] is not None
    assert "wrote" in run.stdout and "tokens_per_s" in run.stdout


@pytest.mark.slow
def test_gpu_check_says_what_failed(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu",
                          "--model", str(tmp_path / "no-such-model"), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    r = json.loads(out.read_text())
    assert not r["ok"] and "no such directory" in r["error"]
