"""The login crowd of bench/load.py ``--logins N``: N users who log in again and again,
a fresh session each time, so every attempt hashes a password.

It runs in a process of its own (``crowd`` is the target): in the annotators' process
its threads would share the GIL of the very client whose latency is measured, while real
users log in from other machines."""

from __future__ import annotations

import threading
import time

from bench.appserver import REQUEST_TIMEOUT_S, Budget, User


def log_in_repeatedly(url: str, user: User, budget: Budget, out: list[float],
                      failures: list[str]) -> None:
    """Log in as ``user`` again and again (a fresh session each time) until the budget
    runs out, recording each login's seconds: a crowd arriving while others annotate."""
    import httpx

    while budget.take():
        t = time.perf_counter()
        try:
            r = httpx.post(f"{url}login", data={"username": user[0], "password": user[1]},
                           timeout=REQUEST_TIMEOUT_S)
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:80]}")
        except httpx.HTTPError as e:
            failures.append(repr(e)[:120])
        out.append(time.perf_counter() - t)


def crowd(url: str, users: list[User], seconds: float, max_requests: int, out) -> None:
    """Process target: ``users`` log in again and again until the budget runs out; sends
    (login seconds, failures) through the pipe end ``out``."""
    budget, seconds_out, failures = Budget(seconds, max_requests), [], []
    threads = [threading.Thread(target=log_in_repeatedly, args=(
        url, u, budget, seconds_out, failures)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.send((seconds_out, failures))
    out.close()
