"""Training benchmark: a naive DPO loop vs LiveDPO's, same data, same model, one run.

  (a) naive: full (B, T, V) logits + log_softmax, the reference recomputed every step,
      every batch padded to --max-length;
  (b) ours: response-only chunked log-probs (trainer/model/logprobs.py), reference log-probs
      computed once and reused across epochs (the app caches them in the DB), dynamic
      padding to the longest row of each micro-batch.
  (b') ours-ckpt: (b) with activation checkpointing (``--checkpointing on``): each layer's
      activations are recomputed in backward, for less peak memory;
  (c) trl: TRL's DPOTrainer (when ``trl`` is installed: ``pip install trl==1.16.0``, a
      dev dependency) on the same rows, the same LoRA, micro-batch, grad-accum, epochs,
      lr, beta and max length; everything else at TRL's defaults on CPU (its reference
      pass every step, gradient checkpointing on). Timed around ``trainer.train()``.
Each variant runs in its own process so peak RSS is its own. All do the same AdamW
steps (micro-batch x grad-accum) over the same pairs for the same epochs.

    python bench/training.py [--pairs 8] [--epochs 2] [--max-length 320] [--no-trl]
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import random
import time
from pathlib import Path

from bench.common import (
    gemm_pass,
    linear_shapes,
    machine,
    matmul_gflops,
    peak_rss_mb,
    run_child,
    table,
    write_json,
)

WORDS = ("the a model answer helps people learn because it explains each step clearly and "
         "gives short examples that are easy to follow while a long answer may ramble about "
         "unrelated things and repeat itself").split()


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Deterministic (prompt, chosen, rejected) rows with varied response lengths."""
    prompts = [p for p in (Path(__file__).resolve().parent.parent / "storage" /
                           "default_prompts.txt").read_text().splitlines() if p.strip()]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        def resp():
            return " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 110))) + ".\nQuestion:"
        rows.append({"prompt": f"Question: {prompts[i % len(prompts)]}\nAnswer:",
                     "chosen": resp(), "rejected": resp()})
    return rows


def trl_child(n: int, epochs: int, max_length: int, micro: int, accum: int,
              cache_dir: str) -> dict:
    """TRL's DPOTrainer on ``make_pairs(n)`` with the app's LoRA (variant c above)."""
    import tempfile

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from trainer.config import ModelConfig
    from trainer.model.policy import _lora_config, load_base, resolve_placement

    mcfg = ModelConfig(cache_dir=cache_dir, quantize="none", device="cpu")
    tok, base = load_base(mcfg, resolve_placement(mcfg))
    head = base.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in base.model.parameters()) - head  # tied embeddings
    with tempfile.TemporaryDirectory() as out:
        trainer = DPOTrainer(
            model=base, processing_class=tok, peft_config=_lora_config(mcfg),
            train_dataset=Dataset.from_list(make_pairs(n)),
            args=DPOConfig(output_dir=out, per_device_train_batch_size=micro,
                           gradient_accumulation_steps=accum, num_train_epochs=epochs,
                           learning_rate=1e-4, beta=0.1, loss_type=["sigmoid"],
                           max_length=max_length, use_cpu=True, bf16=False, report_to=[],
                           save_strategy="no", logging_strategy="no", seed=0))
        rows = list(trainer.train_dataset)
        t0 = time.perf_counter()
        trainer.train()
        dt = time.perf_counter() - t0
    tokens = epochs * sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                          for r in rows)
    return {"variant": "trl", "chunk_size": None, "pairs": n, "epochs": epochs, "seconds": dt,
            "pairs_per_s": n * epochs / dt, "tokens": tokens, "peak_rss_mb": peak_rss_mb(),
            "p_body": body, "p_head": head}


def child(variant: str, n: int, epochs: int, max_length: int, micro: int, accum: int,
          chunk_size: int, cache_dir: str) -> dict:
    import torch

    if variant == "trl":
        return trl_child(n, epochs, max_length, micro, accum, cache_dir)

    from trainer.config import ModelConfig
    from trainer.model.logprobs import build_batch, naive_sequence_logps, sequence_logps
    from trainer.model.policy import BASE, TRAIN, Policy
    from trainer.training.losses import preference_loss

    policy = Policy.load(ModelConfig(cache_dir=cache_dir,
                                     checkpointing="on" if variant == "ours-ckpt" else "off"))
    tok, model = policy.tokenizer, policy.model
    rows = make_pairs(n)
    params = policy.train_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    naive = variant == "naive"

    def batch_of(rs):
        b = build_batch(tok, [r["prompt"] for r in rs] * 2,
                        [r["chosen"] for r in rs] + [r["rejected"] for r in rs],
                        max_length, tok.pad_token_id)
        if naive:  # fixed padding to max_length
            pad = max_length - b["input_ids"].shape[1]
            b = {k: torch.nn.functional.pad(v, (0, pad), value=tok.pad_token_id if
                                            k == "input_ids" else 0) for k, v in b.items()}
        return b

    logps = naive_sequence_logps if naive else functools.partial(sequence_logps,
                                                                  chunk_size=chunk_size)
    ref_cache: dict[int, torch.Tensor] = {}
    tokens, t0, widths = 0, time.perf_counter(), []
    for _ in range(epochs):
        for g in range(0, n, micro * accum):
            for m in range(g, min(g + micro * accum, n), micro):
                rs = rows[m:m + micro]
                b = batch_of(rs)
                if naive or m not in ref_cache:
                    with torch.no_grad(), policy.active(BASE):
                        ref_cache[m] = logps(model, **b)[0]
                with policy.active(TRAIN, train=True):
                    pol, _ = logps(model, **b)
                    k = len(rs)
                    ref = ref_cache[m]
                    loss, _, _ = preference_loss("sigmoid", pol[:k], pol[k:], ref[:k], ref[k:],
                                                 0.1)
                    (loss.mean() / accum).backward()
                tokens += int(b["attention_mask"].sum())
                widths.append(b["input_ids"].numel())
            opt.step()
            opt.zero_grad()
    dt = time.perf_counter() - t0
    peak = peak_rss_mb()  # before the GEMM probe below, which allocates head-sized buffers
    base = model.get_base_model()
    p_head = base.get_output_embeddings().weight.numel()
    p_body = sum(p.numel() for p in base.model.parameters()) - p_head  # tied embeddings
    # the compute limit: this run's matmuls at the shapes of its own (padded) micro-batches
    gemm = None if naive else gemm_pass(round(sum(widths) / len(widths)), linear_shapes(base))
    return {"variant": variant, "chunk_size": None if naive else chunk_size, "pairs": n,
            "epochs": epochs, "seconds": dt, "gemm_at_shapes": gemm,
            "pairs_per_s": n * epochs / dt, "tokens": tokens, "peak_rss_mb": peak,
            "p_body": p_body, "p_head": p_head}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=1024,
                    help="LM-head rows per chunk in ours (sequence_logps' chunk_size)")
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL column")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    from trainer.config import default_cache_dir

    cache = args.cache_dir or default_cache_dir()
    sizes = (args.pairs, args.epochs, args.max_length, args.micro_batch, args.grad_accum,
             args.chunk_size)
    if args.child:
        print(json.dumps(child(args.child, *sizes, cache)))
        return
    me = str(Path(__file__).resolve())
    common = ["--pairs", str(args.pairs), "--epochs", str(args.epochs), "--max-length",
              str(args.max_length), "--micro-batch", str(args.micro_batch), "--grad-accum",
              str(args.grad_accum), "--chunk-size", str(args.chunk_size), "--cache-dir", cache]
    naive = run_child(me, "naive", *common)
    ours = run_child(me, "ours", *common)
    ckpt = run_child(me, "ours-ckpt", *common)
    trl = None
    if not args.no_trl and importlib.util.find_spec("trl") is not None:
        trl = run_child(me, "trl", *common)
        trl_note = f"TRL {importlib.metadata.version('trl')} DPOTrainer, defaults on CPU"
    else:
        trl_note = ("TRL not installed (pip install trl==1.16.0): no third column"
                    if not args.no_trl else "--no-trl: no third column")
    gflops = matmul_gflops()
    rows = [naive, ours, ckpt] + ([trl] if trl else [])
    shapes_rate = ours["gemm_at_shapes"]["gflops"]  # GEMM speed at a micro-batch's shapes
    for r in rows:
        # useful work: policy forward + input-grad backward (4 x body params per token),
        # reference forward once per pair (2 x), LM head for response tokens only (ours);
        # the training roofline is that work at the GEMM rate of the run's own shapes
        flops = 6 * r["p_body"] * r["tokens"]
        r["gflop_s"] = flops / r["seconds"] / 1e9
        r["pct_of_matmul_roofline"] = 100 * r["gflop_s"] / gflops
        r["pct_of_roofline"] = 100 * r["gflop_s"] / shapes_rate
    speed = ours["pairs_per_s"] / naive["pairs_per_s"]
    mem = ours["peak_rss_mb"] / naive["peak_rss_mb"]
    print(table(rows, ["variant", "pairs", "epochs", "seconds", "pairs_per_s", "peak_rss_mb",
                       "gflop_s", "pct_of_roofline"]))
    print(f"\nours / naive pairs/s: {speed:.2f}x (target >= 3); peak RSS ratio {mem:.2f} "
          f"(target <= 0.33); training roofline: {shapes_rate:.0f} GFLOP/s, the GEMM rate at a "
          f"micro-batch's shapes (square 2048: {gflops:.0f}); ours reaches "
          f"{ours['pct_of_roofline']:.0f}% (target >= 50%)\n{trl_note}")
    vs_trl = ckpt_vs_trl = None
    if trl:
        vs_trl, ckpt_vs_trl = (
            {"speedup_pairs_per_s": r["pairs_per_s"] / trl["pairs_per_s"],
             "peak_rss_ratio": r["peak_rss_mb"] / trl["peak_rss_mb"]} for r in (ours, ckpt))
        for name, v in (("ours", vs_trl), ("ours-ckpt", ckpt_vs_trl)):
            print(f"{name} / TRL pairs/s: {v['speedup_pairs_per_s']:.2f}x (target >= 3); "
                  f"peak RSS ratio {v['peak_rss_ratio']:.2f} (target <= 0.7)")
    path = write_json("training.json", {"machine": machine(), "settings": vars(args),
                                        "naive": naive, "ours": ours, "ours_ckpt": ckpt,
                                        "ckpt_vs_trl": ckpt_vs_trl, "trl": trl,
                                        "speedup_pairs_per_s": speed, "peak_rss_ratio": mem,
                                        "vs_trl": vs_trl, "matmul_gflops": gflops,
                                        "roofline_gflops": shapes_rate,
                                        "trl_note": trl_note})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
