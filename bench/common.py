"""Helpers shared by the benchmarks: machine description, memory bandwidth, matmul rate
(square, and at a model's own shapes: ``linear_shapes`` + ``gemm_pass``), child processes
with their own peak RSS, and result tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from storage.files import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def peak_rss_mb() -> float:
    """Peak resident memory of THIS process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_bandwidth_gbs(mb: int = 1024, repeats: int = 5) -> float:
    """DRAM read bandwidth: summing an fp32 tensor of ``mb`` MB, far larger than any CPU
    cache, so every byte comes from memory (GB/s, best of repeats)."""
    import torch

    x = torch.ones(mb * 1024 * 1024 // 4)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    """Measured fp32 matmul rate (GFLOP/s, best of repeats)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def linear_shapes(model) -> dict[tuple[int, int], int]:
    """{(in_features, out_features): count} of every ``nn.Linear`` a forward pass runs,
    the LM head included (LoRA's small adapter matrices are left out)."""
    import torch

    shapes: dict[tuple[int, int], int] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            key = (mod.in_features, mod.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    return shapes


def gemm_pass(rows: int, shapes: dict[tuple[int, int], int], repeats: int = 5) -> dict:
    """The fp32 matmuls of one forward pass over ``rows`` tokens, timed shape by shape at
    exactly those shapes (best of ``repeats``): the compute limit of a pass, without the
    attention scores, norms and activations between them.

    Returns {"seconds": time of all the matmuls, "macs": multiply-adds, "gflops": rate}."""
    import torch

    seconds, macs = 0.0, 0
    with torch.inference_mode():
        for (d_in, d_out), count in shapes.items():
            x, w = torch.randn(rows, d_in), torch.randn(d_out, d_in)
            torch.nn.functional.linear(x, w)  # warm up
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - t)
            seconds += count * best
            macs += count * rows * d_in * d_out
    return {"seconds": seconds, "macs": macs, "gflops": 2 * macs / seconds / 1e9}


def run_child(script: str, *args: str, timeout: float = 1800) -> dict:
    """Run ``python script --child ...`` and return the JSON it prints on its last line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, script, "--child", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


def git_commit() -> str | None:
    """The checkout's commit (with "+changes" when files differ from it), or None."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def write_json(name: str, data: dict) -> Path:
    path = RESULTS / name
    atomic_write_json(path, data)
    return path
