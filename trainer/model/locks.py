"""The one lock that serialises everything touching the model, with priority.

PEFT's active/disabled adapter and ``module.train()/eval()`` are global module state,
so generation, training steps, reference passes and adapter swaps must never overlap.
Annotators are waiting on generation, so a high-priority waiter (generation) is served
before any low-priority waiter (a training micro-step) that arrives at the same time.
The lock is re-entrant for its owning thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class PriorityLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._high_waiting = 0
        self._mine = threading.local()  # .waited: this thread's seconds spent waiting

    @contextmanager
    def hold(self, priority: bool = False) -> Iterator[None]:
        """Hold the lock; ``priority=True`` jumps ahead of low-priority waiters."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                if priority:
                    self._high_waiting += 1
                t0 = time.perf_counter()
                try:
                    while self._owner is not None or (not priority and self._high_waiting):
                        self._cond.wait()
                finally:
                    if priority:
                        self._high_waiting -= 1
                    self._mine.waited = self.waited_seconds() + time.perf_counter() - t0
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._cond.notify_all()

    def waited_seconds(self) -> float:
        """Seconds the calling thread has spent waiting for the lock so far (a round
        reads it before and after: the time generation and swaps cut in)."""
        return getattr(self._mine, "waited", 0.0)

    @property
    def high_priority_waiting(self) -> bool:
        """True while generation waits: a trainer may check this between steps."""
        return self._high_waiting > 0
