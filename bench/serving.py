"""Serving benchmark through the real API: vote -> next pair latency with a warm pool,
and hot-swap latency (round end -> new adapter serving) with clients hammering the API.

Starts the full app (service + Gradio) in this process on 127.0.0.1, drives it with
gradio_client, runs one training round via the admin API while a client keeps calling
next_pair/status, and reports p50/p95 latencies, failed requests and the swap time.

    python bench/serving.py [--model gemma-3-270m] [--votes 40]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import machine, peak_rss_mb, table, write_json


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--votes", type=int, default=40)
    ap.add_argument("--port", type=int, default=7871)
    args = ap.parse_args()

    from gradio_client import Client

    from app.cli import build_parser, resolve
    from app.commands import make_service
    from app.ui import build_ui

    data = Path(tempfile.mkdtemp(prefix="livedpo-bench-"))
    cli = build_parser().parse_args(
        ["serve", "--data-dir", str(data), "--model", args.model, "--ready-pairs", "16",
         "--votes-per-round", str(args.votes), "--max-new-tokens", "48", "--arena-fraction",
         "0"])
    cfgs = resolve(cli)
    svc = make_service(cfgs, terminal_progress=False)
    svc.start(background=False, trainer=True)
    while svc.store.ready_pair_count() < 16:  # warm pool
        time.sleep(1)
    demo = build_ui(svc, cfgs["AppConfig"])
    demo.queue(default_concurrency_limit=None).launch(
        server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{args.port}/", verbose=False)
    latencies, next_lat = [], []
    pair = client.predict(api_name="/next_pair")
    for _ in range(args.votes):
        t = time.perf_counter()
        client.predict(pair[0], "a" if len(pair[2]) <= len(pair[3]) else "b", "",
                       api_name="/vote")
        t1 = time.perf_counter()
        pair = client.predict(api_name="/next_pair")
        t2 = time.perf_counter()
        latencies.append(t2 - t)
        next_lat.append(t2 - t1)
        while pair[0] is None:  # pool momentarily empty
            time.sleep(0.5)
            pair = client.predict(api_name="/next_pair")
    # the trainer thread now runs a round; hammer the API until a version serves
    failures, calls, stop = [], [0], threading.Event()

    def hammer() -> None:
        c = Client(f"http://127.0.0.1:{args.port}/", verbose=False)
        while not stop.is_set():
            try:
                c.predict(api_name="/status")
                calls[0] += 1
            except Exception as e:  # noqa: BLE001 - counted as a failed request
                failures.append(repr(e))
            time.sleep(0.2)

    th = threading.Thread(target=hammer)
    th.start()
    deadline = time.time() + 1800
    while svc.store.serving_adapter() == "base" and time.time() < deadline:
        time.sleep(1)
    stop.set()
    th.join()
    rnd = svc.store.list_rounds(limit=1)[0]
    swap = (rnd.get("metrics") or {}).get("hotswap_seconds")
    result = {"machine": machine(), "model": args.model, "votes": args.votes,
              "vote_to_next_pair_ms": {"p50": 1000 * pct(latencies, 0.5),
                                        "p95": 1000 * pct(latencies, 0.95),
                                        "mean": 1000 * statistics.mean(latencies)},
              "next_pair_ms": {"p50": 1000 * pct(next_lat, 0.5),
                               "p95": 1000 * pct(next_lat, 0.95)},
              "hotswap_seconds": swap, "round_status": rnd["status"],
              "requests_during_round": calls[0], "failed_requests": len(failures),
              "peak_rss_mb": peak_rss_mb()}
    print(table([{"metric": "vote -> next pair p50 (ms)",
                  "value": result["vote_to_next_pair_ms"]["p50"]},
                 {"metric": "vote -> next pair p95 (ms)",
                  "value": result["vote_to_next_pair_ms"]["p95"]},
                 {"metric": "hot-swap: saved -> serving (s)", "value": swap},
                 {"metric": "requests during round / failed",
                  "value": f"{calls[0]} / {len(failures)}"},
                 {"metric": "peak RSS (MB)", "value": result["peak_rss_mb"]}],
                ["metric", "value"]))
    print(f"wrote {write_json('serving.json', result)}")
    svc.stop()
    demo.close()
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
