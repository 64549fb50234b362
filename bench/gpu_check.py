"""GPU check: the product's whole loop on one accelerator, in one short run.

    python -m bench.gpu_check [--device cuda|cpu] [--model M] [--out FILE] [--pairs 32]
                              [--quantize auto|4bit|none]

Loads ``--model`` (default: the embedded Gemma 3 270M; no network needed) as the app does,
in 4-bit NF4 with bf16 compute on CUDA (``--quantize auto``); samples ``--pairs`` pairs with
the pool's batched decode (tokens/s); votes on them with the ``shorter`` oracle; trains one
round (QLoRA on CUDA, fp32 LoRA on CPU); hot-swaps the new version in and samples from it.
Writes bench/results/gpu.json (or ``--out``): the device, library versions, the placement,
load seconds, generation tokens/s, the round's status, steps, pairs/s and seconds, the
hot-swap seconds, peak accelerator memory, and whether the new version answers differently.

The round checks the machinery, not learning: the acceptance gate is open
(``--accept-tolerance 1``) and the answer-health check off, so any finite round serves.
On CPU with a tiny model (``--device cpu --model DIR``) it runs in seconds: CI runs it so.
Exits 1 if a step failed (the JSON says which).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, machine

PROMPTS = ["What is the capital of France?", "Give me two tips for better sleep.",
           "Explain what a binary search does.", "Why is the sky blue?"]


def _device_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        info["bitsandbytes"] = None
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30,
                                      1)
    return info


def _peak_memory_gb(device: str) -> float | None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def run(model: str, device: str, pairs: int, max_new_tokens: int, data_dir: Path,
        quantize: str = "auto") -> dict:
    """The whole check; returns the result (``ok`` False with ``error`` on a failure)."""
    from app.cli import build_parser, resolve
    from app.commands import make_service
    from trainer.model.policy import BASE
    from trainer.sim.oracles import shorter

    out: dict = {"model": model, "device": device, "pairs": pairs, **_device_info(device)}
    t0 = time.perf_counter()
    args = build_parser().parse_args(
        ["serve", "--data-dir", str(data_dir), "--model", model, "--device", device,
         "--quantize", quantize,
         "--max-new-tokens", str(max_new_tokens), "--ready-pairs", str(pairs),
         "--batch-prompts", str(max(1, min(pairs, 16))), "--arena-fraction", "0",
         "--health-samples", "0", "--accept-tolerance", "1", "--overlap-fraction", "0"])
    svc = None
    try:
        svc = make_service(resolve(args), terminal_progress=False)
        svc.start(background=False, pool=False, trainer=False)
        placement = svc.policy.placement
        out.update(load_s=round(time.perf_counter() - t0, 2), quantize=placement.quantize,
                   dtype=str(placement.dtype))
        t = time.perf_counter()
        ids = svc.pool.fill_once(pairs)
        gen_s = time.perf_counter() - t
        tokens = sum(len(json.loads(p["ids_a"] or "[]")) + len(json.loads(p["ids_b"] or "[]"))
                     for p in (svc.store.get_pair(i) for i in ids))
        out.update(generated_pairs=len(ids), generation_s=round(gen_s, 2),
                   generation_tokens=tokens, tokens_per_s=round(tokens / gen_s, 1))
        for pid in ids:
            pair = svc.store.get_pair(pid)
            svc.vote("gpu-check", pid, shorter(pair["prompt"], pair["response_a"],
                                               pair["response_b"]))
        t = time.perf_counter()
        outcome = svc.trainer.run_one("gpu_check")
        metrics = outcome.metrics
        out.update(round_status=outcome.status, round_version=outcome.version,
                   round_error=outcome.error, round_s=round(time.perf_counter() - t, 2),
                   steps=metrics.get("steps"), train_pairs_per_s=metrics.get("pairs_per_s"),
                   hotswap_s=metrics.get("hotswap_seconds"))
        if outcome.version:
            base = [s.text for s in svc.sampler.sample(PROMPTS, BASE, seed=3)]
            new = [s.text for s in svc.sampler.sample(PROMPTS, outcome.version, seed=3)]
            out.update(serving=svc.policy.serving, answers_changed=base != new)
        out["peak_memory_gb"] = _peak_memory_gb(device)
        out["ok"] = outcome.status == "accepted" and svc.policy.serving == outcome.version
        if not out["ok"] and not out.get("error"):
            out["error"] = outcome.error or f"round {outcome.status}"
    except Exception as e:  # noqa: BLE001 - the JSON must say what failed
        out.update(ok=False, error=f"{type(e).__name__}: {e}")
    finally:
        if svc is not None:
            svc.stop()
    out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--out", default=str(RESULTS / "gpu.json"))
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--quantize", default="auto", choices=("auto", "4bit", "none"),
                    help="auto: 4-bit NF4 on CUDA, none on CPU; 4bit also runs on CPU.")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="livedpo-gpu-check-") as d:
        result = run(args.model, args.device, args.pairs, args.max_new_tokens, Path(d),
                     args.quantize)
    result["machine"] = machine()
    from storage.files import atomic_write_json

    atomic_write_json(Path(args.out), result)
    for k in ("ok", "gpu", "quantize", "load_s", "tokens_per_s", "round_status", "round_s",
              "train_pairs_per_s", "hotswap_s", "peak_memory_gb", "total_s", "error"):
        if k in result:
            print(f"{k:<18} {result[k]}")
    print(f"wrote {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
