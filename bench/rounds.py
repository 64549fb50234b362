"""Round latency: from the vote that completes a round to the new version serving.

    python bench/rounds.py [--rounds 5] [--model gemma-3-270m] [--oracle shorter]
                           [--json OUT] [--no-answer-reuse] [SETTINGS...]

The real loop in one process at the app's defaults (pool, SQLite, the background trainer
thread, answer-health check, hot-swap): a scripted annotator (``--oracle``, default
``shorter``, which decides every pair) casts ``--votes-per-round`` votes as fast as the
pool hands out pairs, and the clock starts at the vote that completes the round. It
stops when that round has finished: accepted (the new version serves), rejected (serving
stays) or failed (an error; listed, kept out of the p50 and the target not met). Each
round is split into its parts from the round's own metrics: waiting for the trainer to
notice the votes, training, the answer-health check (and how many of its answers were
kept from earlier checks), reference log-probs, held-out scoring, and the rest (data,
save and hot-swap). ``lock_wait_s`` is the part of those during which the round waited
for the model lock: generation (the pool's batches go first) cutting in. Reports p50/p95
over the accepted and rejected rounds (with 5 rounds the p95 is the slowest; target p50
<= 60 s) and writes bench/results/rounds.json. Extra flags are app settings (e.g.
``--health-samples 8``); ``--no-answer-reuse`` measures the same rounds with every
check sampling all its versions afresh.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import machine, table, write_json
from bench.serving import pct
from storage.files import atomic_write_json

TARGET_P50_S = 60.0


def wait_ready_pairs(svc, n: int, timeout_s: float) -> float:
    """Seconds until the pool holds ``n`` unserved pairs (or the timeout)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if svc.store.ready_pair_count() >= n:
            break
        time.sleep(0.5)
    return time.perf_counter() - t0


def one_round(svc, oracle, votes: int, timeout_s: float) -> dict:
    """Cast ``votes`` votes, then time the round they complete until it has finished."""
    from trainer.sim.simulate import ANNOTATOR, cast_vote

    last = max((r["id"] for r in svc.store.list_rounds(limit=1)), default=0)
    cast, deadline = 0, time.monotonic() + timeout_s
    while cast < votes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {cast}/{votes} votes in {timeout_s:.0f} s")
        item = svc.next_item(ANNOTATOR)
        if item is None:
            time.sleep(0.1)
            continue
        cast_vote(svc, oracle, item)
        cast += 1
    t_vote, wall_vote = time.perf_counter(), datetime.now(timezone.utc)
    while time.monotonic() < deadline:
        rnd = svc.store.get_round(last + 1)  # the one round these votes complete
        if rnd and rnd["status"] != "running":
            break
        time.sleep(0.1)
    else:
        raise TimeoutError(f"round {last + 1} did not finish within {timeout_s:.0f} s")
    latency = time.perf_counter() - t_vote
    m = rnd.get("metrics") or {}
    started = datetime.fromisoformat(rnd["started"])
    if started.tzinfo is None:  # storage writes UTC
        started = started.replace(tzinfo=timezone.utc)
    wait = (started - wall_vote).total_seconds()
    if wait < -1.0:  # clocks agree to ms; a round this early did not wait for these votes
        raise RuntimeError(f"round {rnd['id']} started {-wait:.1f} s before the vote that "
                           "should complete it: another round's votes were still pending")
    wait = max(wait, 0.0)
    err = rnd.get("error") or ""
    why = None if rnd["status"] != "rejected" else (
        "held-out" if "held-out accuracy" in err else "answer health")
    train, check = m.get("train_seconds") or 0.0, m.get("health_seconds") or 0.0
    ref, held = m.get("reference_seconds") or 0.0, m.get("heldout_seconds") or 0.0
    return {"round": rnd["id"], "status": rnd["status"], "rejected_by": why,
            "version": rnd.get("adapter_version"),
            "latency_s": round(latency, 2), "wait_s": round(wait, 2),
            "train_s": round(train, 2), "check_s": round(check, 2),
            "reference_s": round(ref, 2), "heldout_s": round(held, 2),
            "other_s": round(max(latency - wait - train - check - ref - held, 0.0), 2),
            "health_batches": m.get("health_batches"),
            "health_reused": m.get("health_reused"), "steps": m.get("steps"),
            "lock_wait_s": m.get("lock_wait_seconds"),  # inside the parts above
            "hotswap_s": m.get("hotswap_seconds"), "error": rnd.get("error")}


def summary(rows: list[dict]) -> dict:
    """p50 / p95 of the latency over the finished rounds (accepted or rejected) and over
    the accepted ones; failed rounds are counted apart, and any fails the target."""
    lat = [r["latency_s"] for r in rows if r["status"] in ("accepted", "rejected")]
    acc = [r["latency_s"] for r in rows if r["status"] == "accepted"]
    stat = lambda xs: {"n": len(xs), "p50": pct(xs, 0.5) if xs else None,  # noqa: E731
                       "p95": pct(xs, 0.95) if xs else None}
    out = {"all": stat(lat), "accepted": stat(acc),
           "failed": sum(r["status"] == "failed" for r in rows)}
    p50 = out["all"]["p50"]
    out["target_p50_s"] = TARGET_P50_S
    out["met"] = p50 is not None and p50 <= TARGET_P50_S and not out["failed"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--oracle", default="shorter")
    ap.add_argument("--timeout", type=float, default=1800.0, help="Seconds per round.")
    ap.add_argument("--json", default=None, help="Default: bench/results/rounds.json.")
    ap.add_argument("--no-answer-reuse", dest="reuse", action="store_false",
                    help="Each answer-health check samples every version afresh (no "
                         "answers kept between rounds): the comparison for the reuse.")
    args, extra = ap.parse_known_args(argv)
    from app.cli import build_parser, resolve
    from storage.db import Store
    from storage.io import read_prompts
    from storage.seed import DEFAULT_PROMPTS, SEEDED_KEY
    from trainer.service import Service
    from trainer.sim.oracles import checked, load_oracle

    work = Path(tempfile.mkdtemp(prefix="livedpo-rounds-"))
    cfgs = resolve(build_parser().parse_args(["serve", "--model", args.model, "--data-dir",
                                              str(work), *extra]))
    app, train, pool = cfgs["AppConfig"], cfgs["TrainConfig"], cfgs["PoolConfig"]
    store = Store.open(work)
    store.add_prompts(read_prompts(DEFAULT_PROMPTS, app.max_prompt_chars), source="default")
    store.set_state(SEEDED_KEY, True)
    svc = Service(store, work, cfgs["ModelConfig"], cfgs["SamplingConfig"], pool, train,
                  max_prompt_chars=app.max_prompt_chars)
    if not args.reuse:
        svc.health_cache = None  # health.draft_problem then gives each check a fresh one
    oracle = checked(load_oracle(args.oracle))
    rows = []
    try:
        svc.start(background=False)
        svc.require_ready()
        for _ in range(args.rounds):
            filled = wait_ready_pairs(svc, min(pool.ready_pairs, train.votes_per_round),
                                      args.timeout)
            rows.append({**one_round(svc, oracle, train.votes_per_round, args.timeout),
                         "pool_refill_s": round(filled, 1)})
            print(table([rows[-1]], [k for k in rows[-1] if k != "error"]), flush=True)
    finally:
        svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    s = summary(rows)
    res = {"machine": machine(), "settings": {
        "model": args.model, "oracle": args.oracle, "votes_per_round": train.votes_per_round,
        "health_samples": train.health_samples, "ready_pairs": pool.ready_pairs,
        "answer_reuse": args.reuse, "extra_flags": extra}, "rounds": rows, "latency_s": s}
    print(table(rows, ["round", "status", "rejected_by", "latency_s", "wait_s", "train_s",
                       "check_s", "reference_s", "heldout_s", "other_s", "health_batches",
                       "health_reused", "lock_wait_s"]))
    fmt = lambda d: "-" if d["p50"] is None else f"p50 {d['p50']:.1f} s, p95 {d['p95']:.1f} s"  # noqa: E731
    print(f"vote -> round finished: {fmt(s['all'])} over {s['all']['n']} rounds "
          f"({s['failed']} failed); accepted "
          f"(new version serving): {fmt(s['accepted'])} over {s['accepted']['n']} "
          f"(target p50 <= {TARGET_P50_S:.0f} s: {'met' if s['met'] else 'not met'})")
    if args.json:
        atomic_write_json(Path(args.json), res)
    print(f"wrote {args.json or write_json('rounds.json', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
