"""Load benchmark: N scripted annotators through gradio_client while the trainer runs rounds.

Starts the app as a real ``python app.py serve`` subprocess on 127.0.0.1:<free port> (so
the server is measured apart from the client threads' GIL) with an auth file of N
annotators, waits for a warm pool, then runs N client threads, each its own
gradio_client.Client logged in as its own annotator, looping next_pair -> vote (choice
from a seeded RNG) until T seconds or the request bound. Afterwards it stops the server
and compares the votes the clients saw acknowledged with the votes table: 0 lost, 0
duplicated, no pair handed to two clients (overlap 1), every vote attributed to its user.

    python bench/load.py [--clients 20] [--seconds 60] [--model gemma-3-270m]
                         [--votes-per-round 8] [--logins N] [--think-s S | --think-range MIN MAX]
                         [--json OUT] [-- SERVER FLAGS...]

Unknown flags go to ``app.py serve`` (e.g. ``--max-new-tokens 48``). Exits 1 if any
acknowledged vote was lost, duplicated or misattributed, or a pair was handed out twice.
Also reports the CPU seconds of the server and of the client process: on a small machine
the 20 gradio_client clients use about as much CPU as the server.

``run_load(url, users, seconds)`` is the reusable core; ``run_benchmark(...)`` the whole
run. Vote -> next pair latency with a warm pool (one human-paced annotator, no rounds):
``python bench/load.py --clients 1 --seconds 40 --think-s 2 --votes-per-round 1000
--ready-pairs 16`` (key ``vote_to_next_pair_ms``: p50/p95 in ms, as in serving.json).
The same with ``--logins 20``: 20 more users log in again and again meanwhile, from a
process of their own (key ``logins``: login p50/p95), to see whether password hashing
slows the annotator.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from app.testing import log_errors
from bench.appserver import (
    REQUEST_TIMEOUT_S,
    Budget,
    User,
    call,
    connect,
    cpu_seconds,
    make_users,
    serve,
    stop_server,
)
from bench.common import machine, table, write_json
from bench.logincrowd import crowd
from bench.serving import pct
from storage.common import CHOICES
from storage.files import atomic_write_json
from storage.testing import Seen, check_votes, rounds_during

NO_PAIR_BACKOFF_S = 2.0  # wait after "no pair ready": as often as the page polls (app/ui.py)
STATUS_EVERY_S = 1.0
WEIGHTS = dict(zip(CHOICES, (45, 45, 5, 5)))  # a, b, tie, both_bad
BETTER_SHARE = 0.05  # share of votes that also send a written better answer
DEFAULT_MAX_REQUESTS = 50_000



@dataclass
class ClientLog(Seen):
    """What one scripted annotator did and saw, and how long each call took."""

    vote_s: list[float] = field(default_factory=list)
    next_s: list[float] = field(default_factory=list)
    vote_next_s: list[float] = field(default_factory=list)  # vote sent -> next pair in hand
    no_pair: int = 0
    next_pair_failed: int = 0  # next_pair calls that raised (timeout, server error)
    requests: int = 0
    errors: list[str] = field(default_factory=list)


def think_time(rng: random.Random, think_s: float,
               think_range: tuple[float, float] | None) -> float:
    """Seconds an annotator reads a pair before voting: ``think_s``, or uniform in
    ``think_range`` (drawn from the annotator's own seeded RNG)."""
    return think_s if think_range is None else rng.uniform(*think_range)


def annotate(client, log: ClientLog, budget: Budget, rng: random.Random,
             think_s: float = 0.0, think_range: tuple[float, float] | None = None) -> None:
    """Loop next_pair -> vote until the budget runs out; every outcome goes into ``log``."""
    pair_id, voted_at = None, None
    while budget.take():
        log.requests += 1
        t0 = time.perf_counter()
        if pair_id is None:
            try:
                pair_id = call(client, "/next_pair")[0]
            except Exception as e:  # noqa: BLE001 - counted, the client carries on
                log.errors.append(f"next_pair: {type(e).__name__}: {e}"[:300])
                log.next_pair_failed += 1
                time.sleep(NO_PAIR_BACKOFF_S)
                continue
            t1 = time.perf_counter()
            log.next_s.append(t1 - t0)
            if pair_id is None:
                log.no_pair += 1
                voted_at = None  # the pool was empty: not a warm-pool measurement
                time.sleep(NO_PAIR_BACKOFF_S)
                continue
            log.handed.append(pair_id)
            if voted_at is not None:
                log.vote_next_s.append(t1 - voted_at)
            voted_at = None
            time.sleep(think_time(rng, think_s, think_range))
            continue
        choice = rng.choices(CHOICES, [WEIGHTS[c] for c in CHOICES])[0]
        better = f"A better answer by {log.user}." if rng.random() < BETTER_SHARE else ""
        try:
            reveal = call(client, "/vote", pair_id, choice, better)
            if reveal.get("pair_id") != pair_id or reveal.get("choice") != choice:
                raise RuntimeError(f"reveal {reveal} does not match the vote")
        except Exception as e:  # noqa: BLE001 - not acknowledged: not counted as a vote
            log.errors.append(f"vote: {type(e).__name__}: {e}"[:300])
        else:
            log.vote_s.append(time.perf_counter() - t0)
            log.acked.append((pair_id, choice, better))
            voted_at = t0
        pair_id = None


def monitor(client, stop: threading.Event, seen: dict) -> None:
    """Poll status while the load runs: trainer states, serving versions, rounds, errors."""
    while not stop.wait(STATUS_EVERY_S):
        try:
            s = call(client, "/status")
        except Exception as e:  # noqa: BLE001 - a failed status call is a server error
            seen["errors"].append(f"status: {type(e).__name__}: {e}"[:300])
            continue
        seen["polls"] += 1
        seen["trainer_states"][s.get("trainer", {}).get("state", "?")] += 1
        seen["serving"].add(s.get("serving_adapter"))
        seen["rounds_max"] = max(seen["rounds_max"], s.get("rounds") or 0)
        seen["pairs_ready_min"] = min(seen["pairs_ready_min"], s.get("pairs_ready") or 0)


def latency(xs: list[float]) -> dict:
    """n, p50, p95, mean and max of durations in seconds, reported in ms."""
    if not xs:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "max": None}
    return {"n": len(xs), "p50": 1000 * pct(xs, 0.5), "p95": 1000 * pct(xs, 0.95),
            "mean": 1000 * sum(xs) / len(xs), "max": 1000 * max(xs)}


def run_load(url: str, users: list[User], seconds: float, *, monitor_user: User | None = None,
             max_requests: int = DEFAULT_MAX_REQUESTS, seed: int = 0,
             think_s: float = 0.0, think_range: tuple[float, float] | None = None,
             loggers: list[User] = ()) -> dict:
    """Drive ``url`` with one annotator thread per user for ``seconds`` (or the bound).

    Returns the summary (votes/s, latencies in ms, no-pair answers, errors, status seen)
    and, under ``logs``, every client's ClientLog for the vote checks.
    """
    clients = [None] * len(users)

    def login(i: int) -> None:
        clients[i] = connect(url, users[i])

    threads = [threading.Thread(target=login, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if None in clients:
        for c in filter(None, clients):
            c.close()
        raise RuntimeError("some clients could not log in (see the thread errors above)")
    logs = [ClientLog(u[0]) for u in users]
    seen = {"polls": 0, "trainer_states": Counter(), "serving": set(), "rounds_max": 0,
            "pairs_ready_min": 10**9, "errors": []}
    stop = threading.Event()
    watcher = threading.Thread(target=monitor, args=(connect(url, monitor_user), stop, seen),
                               daemon=True) if monitor_user else None
    start_utc, t0, cpu0 = datetime.now(timezone.utc), time.perf_counter(), time.process_time()
    budget = Budget(seconds, max_requests)
    workers = [threading.Thread(target=annotate, args=(
        c, lg, budget, random.Random(seed * 1000 + i), think_s, think_range))
        for i, (c, lg) in enumerate(zip(clients, logs))]
    login_s: list[float] = []
    login_failures: list[str] = []
    mp = multiprocessing.get_context("spawn")
    received, sent = mp.Pipe(duplex=False)
    others = mp.Process(target=crowd, args=(url, list(loggers), seconds, max_requests, sent),
                        daemon=True) if loggers else None
    if others:
        others.start()
    for t in [*workers, *([watcher] if watcher else [])]:
        t.start()
    for t in workers:
        t.join(seconds + 2 * REQUEST_TIMEOUT_S)
    if others:
        if received.poll(2 * REQUEST_TIMEOUT_S):
            login_s, login_failures = received.recv()
        else:
            login_failures = ["the login crowd's process sent no result"]
        others.join(REQUEST_TIMEOUT_S)
    elapsed, end_utc = time.perf_counter() - t0, datetime.now(timezone.utc)
    client_cpu = time.process_time() - cpu0  # every thread of this process
    stop.set()
    if watcher:
        watcher.join(REQUEST_TIMEOUT_S)
    for c in clients:
        c.close()
    hung = sum(t.is_alive() for t in workers)
    return {**summarise(logs, elapsed, hung, think_s), "think_range_s": think_range,
            "logins": {
                "concurrent": len(loggers), "ms": latency(login_s),
                "failures": len(login_failures), "failure_examples": login_failures[:3]},
            "start_utc": start_utc.isoformat(),
            "end_utc": end_utc.isoformat(), "client_cpu_s": client_cpu, "status_seen": {
                **seen, "trainer_states": dict(seen["trainer_states"]),
                "serving": sorted(v for v in seen["serving"] if v)}, "logs": logs}


def summarise(logs: list[ClientLog], elapsed: float, hung: int, think_s: float) -> dict:
    """Throughput, latencies and error counts over every client."""
    votes = sum(len(lg.acked) for lg in logs)
    errors = [e for lg in logs for e in lg.errors]
    gather = lambda attr: [x for lg in logs for x in getattr(lg, attr)]  # noqa: E731
    return {"clients": len(logs), "seconds": elapsed, "think_s": think_s, "votes": votes,
            "votes_per_s": votes / elapsed if elapsed else 0.0,
            "requests": sum(lg.requests for lg in logs),
            "no_pair_answers": sum(lg.no_pair for lg in logs),
            "next_pair_failed": sum(lg.next_pair_failed for lg in logs),
            "vote_ms": latency(gather("vote_s")), "next_pair_ms": latency(gather("next_s")),
            "vote_to_next_pair_ms": latency(gather("vote_next_s")),
            "client_errors": len(errors), "client_error_examples": errors[:5],
            "hung_clients": hung}


# --- the whole run -------------------------------------------------------------------------
def run_benchmark(model: str, clients: int, seconds: float, *, data_dir: str | None = None,
                  votes_per_round: int = 8, ready_pairs: int | None = None, overlap: int = 1,
                  max_requests: int = DEFAULT_MAX_REQUESTS, seed: int = 0, think_s: float = 0.0,
                  think_range: tuple[float, float] | None = None,
                  server_args: tuple[str, ...] = (), ready_timeout: float = 900.0,
                  logins: int = 0, overlap_fraction: float | None = None) -> dict:
    """Start the server, wait for a warm pool, run the load, stop it, check the DB.

    ``ok`` is False when any acknowledged vote was lost, duplicated, misattributed or
    changed, or a pair was handed out twice; then the work dir (server log, users file,
    data unless ``data_dir``) is kept and named in ``work_dir``.
    """
    from storage.db import DB_NAME

    work = Path(tempfile.mkdtemp(prefix="livedpo-load-"))
    data = Path(data_dir) if data_dir else work / "data"
    log_path, auth_file = work / "server.log", work / "users.json"
    users, mon = make_users(auth_file, clients + logins)
    users, loggers = users[:clients], users[clients:]
    ready_pairs = ready_pairs or max(clients, 4)
    if overlap_fraction is None:
        from trainer.config import PoolConfig

        overlap_fraction = PoolConfig().overlap_fraction
    flags = ["--votes-per-round", str(votes_per_round), "--ready-pairs", str(ready_pairs),
             "--overlap", str(overlap), "--overlap-fraction", str(overlap_fraction),
             *server_args]
    proc, url, ready_s = serve(model, data, auth_file, flags, log_path, mon, ready_pairs,
                               ready_timeout)
    try:
        cpu0 = cpu_seconds(proc.pid)
        load = run_load(url, users, seconds, monitor_user=mon, max_requests=max_requests,
                        seed=seed, think_s=think_s, think_range=think_range,
                        loggers=loggers)
        cpu1 = cpu_seconds(proc.pid)
    finally:
        stop_server(proc)
    load["server_cpu_s"] = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    logs = load.pop("logs")
    checks = check_votes(data / DB_NAME, logs, overlap, overlap_fraction)
    bad = ("lost", "duplicated", "misattributed", "changed", "handed_twice", "assigned_twice")
    ok = not any(checks[k] for k in bad) and not load["hung_clients"]
    result = {"ok": ok, "settings": {
        "model": model, "clients": clients, "seconds": seconds, "votes_per_round":
        votes_per_round, "ready_pairs": ready_pairs, "overlap": overlap, "max_requests":
        max_requests, "seed": seed, "logins": logins, "think_s": think_s,
        "think_range": think_range, "server_flags": flags},
        "ready_s": ready_s, **load,
        "checks": checks, "rounds": rounds_during(data / DB_NAME, load["start_utc"],
                                                  load["end_utc"]),
        "server_log_errors": log_errors(log_path),
        "per_client_votes": [len(lg.acked) for lg in logs]}
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        result["work_dir"] = str(work)
    return result


def report(r: dict) -> str:
    """The result as a two-column table."""
    ms = lambda d: "-" if not d["n"] else f"{d['p50']:.0f} / {d['p95']:.0f} (n={d['n']})"  # noqa: E731
    c, rounds = r["checks"], r["rounds"]
    rows = [("clients x seconds", f"{r['clients']} x {r['seconds']:.1f}"),
            ("votes acknowledged (votes/s)", f"{r['votes']} ({r['votes_per_s']:.2f})"),
            ("vote p50 / p95 ms", ms(r["vote_ms"])),
            ("next_pair p50 / p95 ms", ms(r["next_pair_ms"])),
            ("vote -> next pair p50 / p95 ms", ms(r["vote_to_next_pair_ms"])),
            ("logins p50 / p95 ms (concurrent)", (ms(r["logins"]["ms"]) + f" ("
                                                 f"{r['logins']['concurrent']}), "
                                                 f"{r['logins']['failures']} failed")),
            ("'no pair ready' answers", f"{r['no_pair_answers']} of {r['requests']} requests"),
            ("rounds started / finished", f"{rounds['started']} / {rounds['finished']} "
                                          f"{rounds['finished_by_status']}"),
            ("serving versions seen", ", ".join(r["status_seen"]["serving"])),
            ("lost / duplicated / misattributed", f"{c['lost']} / {c['duplicated']} / "
                                                  f"{c['misattributed']}"),
            ("pairs handed / assigned twice", f"{c['handed_twice']} / {c['assigned_twice']}"),
            ("CPU s: server / clients", f"{_num(r.get('server_cpu_s'))} / "
                                        f"{_num(r['client_cpu_s'])} in {r['seconds']:.0f} s"),
            ("client errors / server log errors",
             f"{r['client_errors']} / {r['server_log_errors']['count']}")]
    return table([{"metric": k, "value": v} for k, v in rows], ["metric", "value"])


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Other flags are passed to `app.py serve`.")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data-dir", default=None, help="Default: a fresh temp dir.")
    ap.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS)
    ap.add_argument("--votes-per-round", type=int, default=8)
    ap.add_argument("--ready-pairs", type=int, default=None, help="Default: --clients.")
    ap.add_argument("--overlap", type=int, default=1, help="Annotators per pair.")
    ap.add_argument("--overlap-fraction", type=float, default=None, help="Share of pairs "
                    "for two annotators (default: the app's, 0.15).")
    ap.add_argument("--think-s", type=float, default=0.0, help="Pause before each vote.")
    ap.add_argument("--think-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                    default=None, help="Pause before each vote drawn uniformly in [MIN, MAX] "
                    "seconds from each annotator's seeded RNG (instead of --think-s).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ready-timeout", type=float, default=900.0,
                    help="Seconds to wait for the server's warm pool.")
    ap.add_argument("--logins", type=int, default=0, help="Extra users who log in again and "
                    "again, concurrently, while the clients annotate (login latency, and "
                    "whether hashing slows the annotators).")
    ap.add_argument("--json", default=None, help="Default: bench/results/load.json.")
    args, server_args = ap.parse_known_args(argv)
    server_args = [a for a in server_args if a != "--"]
    res = run_benchmark(args.model, args.clients, args.seconds, data_dir=args.data_dir,
                        votes_per_round=args.votes_per_round, ready_pairs=args.ready_pairs,
                        overlap=args.overlap,
                        max_requests=args.max_requests, seed=args.seed, think_s=args.think_s,
                        think_range=tuple(args.think_range) if args.think_range else None,
                        server_args=tuple(server_args), ready_timeout=args.ready_timeout,
                        logins=args.logins, overlap_fraction=args.overlap_fraction)
    res["machine"] = machine()
    print(report(res))
    if args.json:
        out = Path(args.json)
        atomic_write_json(out, res)
    else:
        out = write_json("load.json", res)
    print(f"wrote {out}" + ("" if res["ok"] else f"; CHECKS FAILED, kept {res['work_dir']}"))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
