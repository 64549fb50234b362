"""Generation benchmark: naive per-prompt generate vs the pool's batched sampling.

Side by side in one run, each variant in its own process (so peak RSS is its own):
  (a) naive: one prompt at a time, ``model.generate(num_return_sequences=2)``;
  (b) ours: the pair pool's Sampler, K prompts x 2 samples in one batched decode loop.
Also the decode roofline, the lower of two limits measured in the same run: compute (the
model's own matmuls over the batch's rows, timed at exactly those shapes: one decode
step's time at full GEMM speed) and memory (all weights read once per step from DRAM, at
the bandwidth of a 1 GB buffer). Then warm start -> first ready pair, and cold start
(first conversion of the default model, into a temporary cache unless --skip-cold).

    python bench/generation.py [--prompts 16] [--max-new-tokens 64] [--skip-cold]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import (
    gemm_pass,
    linear_shapes,
    machine,
    matmul_gflops,
    memory_bandwidth_gbs,
    peak_rss_mb,
    run_child,
    table,
    write_json,
)

PROMPTS = [
    "What is the capital of France?", "Give me three tips for better sleep.",
    "Write a haiku about autumn.", "Explain what a binary search does.",
    "How do vaccines work?", "Write a two-sentence story about a lost cat.",
    "Why is the sky blue?", "Summarise: The fox flattered the crow and got the cheese.",
    "What is a good way to learn a new language?", "Explain recursion to a child.",
    "Suggest a name for a bakery.", "What causes the seasons on Earth?",
    "How can I save money on groceries?", "Write a Python function that reverses a string.",
    "What is photosynthesis?", "Describe the smell of rain.",
]


def child(variant: str, k: int, max_new: int, cache_dir: str) -> dict:
    import torch

    from trainer.config import ModelConfig, SamplingConfig
    from trainer.model.generate import Sampler
    from trainer.model.policy import BASE, Policy

    t0 = time.perf_counter()
    policy = Policy.load(ModelConfig(cache_dir=cache_dir))
    load_s = time.perf_counter() - t0
    sampling = SamplingConfig(max_new_tokens=max_new)
    sampler = Sampler(policy, sampling)
    prompts = (PROMPTS * 4)[:k]
    if variant == "warm":
        sampler.sample([prompts[0]] * 2, BASE, seed=0)
        return {"load_s": load_s, "first_pair_s": time.perf_counter() - t0}
    tok, model = policy.tokenizer, policy.model
    tokens, t = 0, time.perf_counter()
    if variant == "naive":
        tok.padding_side = "left"
        for i, p in enumerate(prompts):
            enc = tok(sampler.format(p), return_tensors="pt")
            torch.manual_seed(i)
            with policy.active(BASE), torch.inference_mode():
                out = model.generate(**enc, do_sample=True, num_return_sequences=2,
                                     max_new_tokens=max_new, temperature=sampling.temperature,
                                     top_p=sampling.top_p, top_k=sampling.top_k,
                                     eos_token_id=sampler.eos_ids,
                                     pad_token_id=tok.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            tokens += int((~torch.isin(new, torch.tensor(sampler.eos_ids + [tok.pad_token_id]))
                           ).sum()) + 2
    else:
        rows = [p for p in prompts for _ in range(2)]
        samples = sampler.sample(rows, BASE, seed=0)
        tokens = sum(s.n_tokens for s in samples)
    dt = time.perf_counter() - t
    gemm = gemm_pass(2 * k, linear_shapes(model.get_base_model())) if variant == "batched" else None
    return {"variant": variant, "pairs": k, "tokens": tokens, "seconds": dt, "gemm_step": gemm,
            "tokens_per_s": tokens / dt, "pairs_per_min": k / dt * 60,
            "peak_rss_mb": peak_rss_mb(), "load_s": load_s,
            "weight_bytes": sum(p.numel() * p.element_size()
                                for p in model.get_base_model().parameters())}


def cold_start() -> dict:
    from trainer.config import DEFAULT_MODEL
    from trainer.model.modelcache import resolve_model

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        resolve_model(DEFAULT_MODEL, d)
        return {"convert_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from trainer.config import PoolConfig

    ap.add_argument("--prompts", type=int, default=PoolConfig().batch_prompts,
                    help="prompts per batch (default: the pool's batch_prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    from trainer.config import default_cache_dir

    cache = args.cache_dir or default_cache_dir()
    if args.child:
        import json

        print(json.dumps(child(args.child, args.prompts, args.max_new_tokens, cache)))
        return
    me = str(Path(__file__).resolve())
    common = ["--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
              "--cache-dir", cache]
    cold = None if args.skip_cold else cold_start()
    warm = run_child(me, "warm", *common)
    naive = run_child(me, "naive", *common)
    ours = run_child(me, "batched", *common)
    bw, gflops = memory_bandwidth_gbs(), matmul_gflops()
    # a decode step makes one token per row: at best it runs the model's matmuls at GEMM
    # speed (compute) and reads every weight once from DRAM (memory); the limit is the lower
    rows = 2 * args.prompts
    step = ours["gemm_step"]
    compute = rows / step["seconds"]
    memory = rows * bw * 1e9 / ours["weight_bytes"]
    roof = {"memory_gbs": bw, "matmul_gflops": gflops, "gemm_at_shapes_gflops": step["gflops"],
            "macs_per_token": step["macs"] / rows, "compute_tokens_per_s": compute,
            "memory_tokens_per_s": memory, "roofline_tokens_per_s": min(compute, memory),
            "bound": "compute" if compute <= memory else "memory"}
    ratio = ours["tokens_per_s"] / naive["tokens_per_s"]
    print(table([naive, ours], ["variant", "pairs", "tokens", "seconds", "tokens_per_s",
                                "pairs_per_min", "peak_rss_mb"]))
    print(f"\nbatched / naive tokens/s: {ratio:.2f}x (target >= 4)")
    print(f"decode roofline for {rows} rows: compute {compute:.0f} tok/s "
          f"({roof['macs_per_token'] / 1e6:.0f}M multiply-adds per token at "
          f"{step['gflops']:.0f} GFLOP/s measured at the model's shapes), memory "
          f"{memory:.0f} tok/s (weights {ours['weight_bytes'] / 1e9:.2f} GB at {bw:.1f} GB/s); "
          f"{roof['bound']}-bound: batched reaches "
          f"{ours['tokens_per_s'] / roof['roofline_tokens_per_s']:.0%} (target >= 50%)")
    print(f"warm start -> first pair: {warm['first_pair_s']:.1f} s (target < 30 s)"
          + (f"; cold start conversion: {cold['convert_s']:.1f} s" if cold else ""))
    path = write_json("generation.json", {
        "machine": machine(), "settings": vars(args) | {"rows": rows}, "naive": naive,
        "batched": ours, "ratio_batched_over_naive": ratio, "roofline": roof,
        "warm_start": warm, "cold_start": cold})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
