"""Capacity: how many thinking annotators the app keeps supplied with pairs.

    python bench/capacity.py [--threads 1,2] [--clients 2,4,6,8,10,12] [--seconds 240]
                             [--think 5 20] [--model gemma-3-270m] [--json OUT]

For each torch thread count (the server's OMP_NUM_THREADS), runs bench/load.py's whole
benchmark (a real ``app.py serve``, the app's own pool and round settings) with N
annotators who each read a pair for a seeded uniform 5-20 s before voting, for N in
``--clients`` ascending until more than ``--target`` (5%) of next_pair calls find no pair
ready or fail. The capacity at that thread count is the largest N at or under the target
whose window also finished at least one round (accepted or rejected: rounds trained
meanwhile); if the largest N tried was still supplied, it is reported as a lower bound.
The share counts calls over the whole window, warm start included; a client that finds
no pair asks again every 2 s (as the page polls), so 5% of calls is a stricter bar than
5% of the time. Prints a table and writes bench/results/capacity.json (also when a run's
vote checks fail, which exits 1 as in bench/load.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.common import machine, table, write_json
from bench.load import run_benchmark
from storage.files import atomic_write_json

TARGET = 0.05  # share of next_pair calls that may find no pair ready


def no_pair_share(run: dict) -> float:
    """Share of next_pair calls that found no pair ready or failed (timeout, error)."""
    failed = run.get("next_pair_failed", 0)
    calls = run["next_pair_ms"]["n"] + failed
    return (run["no_pair_answers"] + failed) / calls if calls else 1.0


def rounds_trained(run: dict) -> int:
    """Rounds that finished inside the window, accepted or rejected (not failed)."""
    by = run["rounds"]["finished_by_status"]
    return by.get("accepted", 0) + by.get("rejected", 0)


def starved(run: dict, target: float = TARGET) -> bool:
    """Failed checks, or more than ``target`` of next_pair calls left without a pair."""
    return not run["ok"] or no_pair_share(run) > target


def capacity(runs: list[dict], target: float = TARGET) -> tuple[int | None, bool]:
    """(the largest client count supplied while rounds trained, before the first starved
    count; whether a starved count was reached). False: the capacity is a lower bound."""
    best = None
    for r in sorted(runs, key=lambda r: r["clients"]):
        if starved(r, target):
            return best, True
        if rounds_trained(r) >= 1:  # else no round trained meanwhile: not a measurement
            best = r["clients"]
    return best, False


def capacity_text(cap: int | None, reached: bool) -> str:
    """'6', '>= 12 (the limit was not reached)' or 'none of the counts tried'."""
    if cap is None:
        return "none of the counts tried"
    return str(cap) if reached else f">= {cap} (the limit was not reached)"


def row(threads: int, r: dict) -> dict:
    p95 = r["vote_to_next_pair_ms"]["p95"]
    return {"threads": threads, "clients": r["clients"], "votes": r["votes"],
            "votes/min": round(60 * r["votes_per_s"], 1),
            "next_pair calls": r["next_pair_ms"]["n"],
            "no pair": f"{no_pair_share(r):.1%}",
            "rounds done": rounds_trained(r),
            "vote->next p95 ms": "-" if p95 is None else round(p95),
            "checks": "ok" if r["ok"] else "FAILED"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Other flags are passed to `app.py serve`.")
    ap.add_argument("--threads", default="1,2", help="Server torch threads to measure.")
    ap.add_argument("--clients", default="2,4,6,8,10,12",
                    help="Annotator counts, tried in ascending order.")
    ap.add_argument("--seconds", type=float, default=240.0, help="Load window per run.")
    ap.add_argument("--think", type=float, nargs=2, default=(5.0, 20.0),
                    metavar=("MIN", "MAX"), help="Seconds each annotator reads a pair.")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--target", type=float, default=TARGET)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("--json", default=None, help="Default: bench/results/capacity.json.")
    args, server_args = ap.parse_known_args(argv)
    server_args = tuple(a for a in server_args if a != "--")
    from trainer.config import PoolConfig, TrainConfig

    pool, train = PoolConfig(), TrainConfig()  # the app's defaults, as a user runs it
    threads = [int(t) for t in args.threads.split(",")]
    counts = sorted(int(c) for c in args.clients.split(","))
    old = os.environ.get("OMP_NUM_THREADS")
    results, lines = {}, []
    try:
        for t in threads:
            os.environ["OMP_NUM_THREADS"] = str(t)
            runs = []
            for n in counts:
                r = run_benchmark(args.model, n, args.seconds,
                                  votes_per_round=train.votes_per_round,
                                  ready_pairs=pool.ready_pairs, seed=args.seed,
                                  think_range=tuple(args.think), server_args=server_args,
                                  ready_timeout=args.ready_timeout)
                r["settings"]["server_threads"] = t
                runs.append(r)
                lines.append(row(t, r))
                print(table([lines[-1]], list(lines[-1])), flush=True)
                if starved(r, args.target):
                    break
            cap, reached = capacity(runs, args.target)
            results[str(t)] = {"capacity": cap, "limit_reached": reached,
                               "text": capacity_text(cap, reached), "runs": runs}
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    caps = {t: v["capacity"] for t, v in results.items()}
    # the app's defaults unless server flags change them (the runs' server_flags say)
    out = {"machine": machine(), "settings": {
        "model": args.model, "seconds": args.seconds, "think_s": list(args.think),
        "target_no_pair_share": args.target, "votes_per_round": train.votes_per_round,
        "ready_pairs": pool.ready_pairs, "server_flags": list(server_args)},
        "capacity": caps, "threads": results}
    print(table(lines, list(lines[0])))
    print("capacity (annotators kept supplied): "
          + ", ".join(f"{t} thread(s): {v['text']}" for t, v in results.items()))
    if args.json:
        atomic_write_json(Path(args.json), out)
    path = args.json or write_json("capacity.json", out)
    print(f"wrote {path}")
    return 0 if all(r["ok"] for v in results.values() for r in v["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
