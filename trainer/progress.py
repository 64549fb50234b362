"""Progress reporting shared by the terminal (tqdm) and the UI (a polled snapshot).

Long operations (model conversion, training rounds) take a ``Progress`` and call
``progress.update(done, total, desc)``. ``TqdmProgress`` draws a terminal bar;
``ProgressState`` keeps the latest values for the web UI to poll. ``Tee`` sends to both.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol


class Progress(Protocol):
    def update(self, done: float, total: float, desc: str) -> None: ...


class NullProgress:
    def update(self, done: float, total: float, desc: str) -> None:
        pass


class TqdmProgress:
    """A terminal progress bar that re-creates itself when the description changes."""

    def __init__(self, unit: str = "it") -> None:
        self._bar = None
        self._desc = None
        self._unit = unit

    def update(self, done: float, total: float, desc: str) -> None:
        from tqdm.auto import tqdm

        if self._bar is None or desc != self._desc:
            self.close()
            self._bar = tqdm(total=total, desc=desc, unit=self._unit, leave=False)
            self._desc = desc
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@dataclass
class ProgressState:
    """Thread-safe latest progress, read by the UI: ``snapshot()`` -> dict."""

    done: float = 0.0
    total: float = 0.0
    desc: str = ""
    started: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, done: float, total: float, desc: str) -> None:
        with self._lock:
            if desc != self.desc:
                self.started = time.time()
            self.done, self.total, self.desc = done, total, desc

    def snapshot(self) -> dict:
        with self._lock:
            frac = self.done / self.total if self.total else 0.0
            return {"done": self.done, "total": self.total, "desc": self.desc,
                    "fraction": min(max(frac, 0.0), 1.0),
                    "elapsed_s": round(time.time() - self.started, 1)}


class Tee:
    """Send every update to several progress sinks."""

    def __init__(self, *sinks: Progress) -> None:
        self.sinks = sinks

    def update(self, done: float, total: float, desc: str) -> None:
        for s in self.sinks:
            s.update(done, total, desc)
