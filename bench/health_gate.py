"""How often does the answer-health check decide wrongly? A Monte-Carlo of its rule.

    python bench/health_gate.py [--trials 20000] [--samples 12] [--tolerance 0.15]

Models each answer as ending by itself with a fixed probability per version (serving's
and the draft's), drawn independently (the real check shares prompts and seeds between
versions, which makes the two shares move together, so real errors are somewhat
lower), and runs the product's own decision (trainer/training/health.py ``step``, 1 to
``MAX_BATCHES`` batches) against the single-batch rule it replaced. Prints a table and
writes bench/results/health_gate.json: per (serving, draft) share, the probability of a
rejection, and the mean number of answers each version samples.
"""

from __future__ import annotations

import argparse
import random

from bench.common import table, write_json
from trainer.training.health import MAX_BATCHES, step

CASES = [(0.61, 0.61, "healthy"), (0.61, 0.51, "10 points worse"),
         (0.61, 0.30, "degraded"), (0.61, 0.20, "badly degraded"),
         (0.90, 0.90, "healthy, high base"), (0.90, 0.60, "degraded, high base")]


def sequential(rng: random.Random, serving: float, draft: float, n: int, tol: float):
    """(rejected, answers per version) of the product's rule."""
    s = d = 0
    for batch in range(1, MAX_BATCHES + 1):
        s += sum(rng.random() < serving for _ in range(n))
        d += sum(rng.random() < draft for _ in range(n))
        verdict = step((s - d) / (batch * n), batch, tol)
        if verdict != "more":
            return verdict == "reject", batch * n
    raise AssertionError("step must decide by the last batch")


def one_batch(rng: random.Random, serving: float, draft: float, n: int, tol: float):
    """(rejected, answers per version) of one batch judged against the tolerance."""
    s = sum(rng.random() < serving for _ in range(n))
    d = sum(rng.random() < draft for _ in range(n))
    return (s - d) / n > tol + 1e-9, n


def rate(rule, trials: int, seed: int, *args) -> tuple[float, float]:
    rng = random.Random(seed)
    runs = [rule(rng, *args) for _ in range(trials)]
    return (sum(r for r, _ in runs) / trials, sum(n for _, n in runs) / trials)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20_000)
    ap.add_argument("--samples", type=int, default=12, help="--health-samples")
    ap.add_argument("--tolerance", type=float, default=0.15, help="--health-tolerance")
    ap.add_argument("--old-tolerance", type=float, default=0.25,
                    help="tolerance of the single-batch rule, for comparison")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for serving, draft, label in CASES:
        seq, seq_n = rate(sequential, args.trials, args.seed, serving, draft, args.samples,
                          args.tolerance)
        old, _ = rate(one_batch, args.trials, args.seed, serving, draft, args.samples,
                      args.old_tolerance)
        rows.append({"case": label, "serving ends": serving, "draft ends": draft,
                     "rejected (sequential)": round(seq, 3),
                     "answers/version": round(seq_n, 1),
                     f"rejected (1 batch, tol {args.old_tolerance})": round(old, 3)})
    print(table(rows, list(rows[0])))
    out = write_json("health_gate.json", {"settings": vars(args), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
