"""Logins that cannot stall the server or be guessed quickly.

- **Off the event loop.** scrypt at N = 2^17 takes a few hundred milliseconds of CPU and
  128 MB; Gradio calls the ``auth=`` function inside its event loop, where a synchronous
  hash would stall every request (votes, page loads) for its duration. ``login_checker``
  returns an async function that hashes in a small thread pool (``HASH_THREADS``), so
  at most that many hashes run at once and the loop keeps serving.
- **Below the annotators.** The hashing thread runs at a lower CPU priority
  (``HASH_NICE``, Linux per-thread nice): a crowd logging in waits for a core, while
  the votes, pages and pair sampling of users already logged in keep theirs
  (docs/logins.md).
- **Throttling.** After ``FAILS_BEFORE_WAIT`` failed logins for one user name, or
  ``ADDRESS_FAILS_BEFORE_WAIT`` from one client address, further attempts are refused
  without hashing until a wait has passed; the wait doubles with each further failure
  (``BASE_WAIT_S`` up to ``MAX_WAIT_S``) and a success clears the user's count. A refused
  attempt gets HTTP 429 with a message that says when to retry.
- **Upgrades.** A user whose stored hash is older (cheaper) than the current parameters
  is re-hashed at the next successful login (app/auth.py ``verify_and_upgrade``).

The client address comes from ``ClientAddress``, an ASGI middleware that records each
request's address in a context variable the auth function reads.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from app.auth import UsersFileError, verify_and_upgrade

log = logging.getLogger(__name__)

HASH_THREADS = 2
HASH_NICE = 10
FAILS_BEFORE_WAIT = 5
ADDRESS_FAILS_BEFORE_WAIT = 20
BASE_WAIT_S = 30.0
MAX_WAIT_S = 900.0

client_address: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "client_address", default=None)


class ClientAddress:
    """ASGI middleware: remember the address of the client of each HTTP request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            client = scope.get("client")
            client_address.set(client[0] if client else None)
        await self.app(scope, receive, send)


class TooManyAttempts(Exception):
    """Refused without checking the password; ``message`` says when to retry."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def wait_after(fails: int, allowed: int) -> float:
    """Seconds to wait after ``fails`` failures when ``allowed`` are free: 0 up to
    ``allowed``, then ``BASE_WAIT_S`` doubling per further failure, at most
    ``MAX_WAIT_S``."""
    if fails < allowed:
        return 0.0
    return min(BASE_WAIT_S * 2 ** (fails - allowed), MAX_WAIT_S)


@dataclass
class _Fails:
    count: int = 0
    last: float = 0.0


@dataclass
class Throttle:
    """Failed-login counts per user name and per client address (in memory)."""

    clock: object = time.monotonic
    users: dict[str, _Fails] = field(default_factory=dict)
    addresses: dict[str, _Fails] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, user: str, address: str | None) -> None:
        """Raise ``TooManyAttempts`` if this user or address must wait first."""
        now = self.clock()
        with self.lock:
            for what, table, key, allowed in (
                    (f"user {user!r}", self.users, user, FAILS_BEFORE_WAIT),
                    (f"address {address}", self.addresses, address, ADDRESS_FAILS_BEFORE_WAIT)):
                fails = table.get(key) if key else None
                if not fails:
                    continue
                left = fails.last + wait_after(fails.count, allowed) - now
                if left > 0:
                    raise TooManyAttempts(
                        f"Too many failed logins for {what}: retry in {math.ceil(left)} s.",
                        left)

    def record(self, user: str, address: str | None, ok: bool) -> None:
        now = self.clock()
        with self.lock:
            if ok:
                self.users.pop(user, None)
                return
            for table, key in ((self.users, user), (self.addresses, address)):
                if key:
                    fails = table.setdefault(key, _Fails())
                    fails.count += 1
                    fails.last = now


def lower_thread_priority(nice: int = HASH_NICE) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux schedules threads one
    by one; elsewhere, or if the OS refuses, the thread keeps its priority)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that forbids it
        log.info("login hashing keeps normal priority: %s", exc)


def login_checker(path: str | Path, throttle: Throttle | None = None):
    """The async ``auth=`` function for Gradio's ``launch`` (module docstring)."""
    from fastapi import HTTPException

    path = Path(path)
    throttle = throttle or Throttle()
    pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="login-hash",
                              initializer=lower_thread_priority)

    async def check(username: str, password: str) -> bool:
        address = client_address.get()
        try:
            throttle.check(username, address)
        except TooManyAttempts as e:
            raise HTTPException(status_code=429, detail=str(e),
                                headers={"Retry-After": str(math.ceil(e.retry_after_s))}) from None
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                pool, verify_and_upgrade, path, username, password)
        except UsersFileError as exc:
            log.warning("login refused: %s", exc)
            return False
        throttle.record(username, address, ok)
        return ok

    return check
