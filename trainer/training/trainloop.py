"""The background trainer thread: starts a DPO round when enough new votes exist.

A round starts when ``votes_per_round`` new usable votes arrived since the last round
(or when an admin asks). Whatever happens inside a round is recorded on the round;
the thread itself never dies, and serving stays on the last accepted version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from trainer.config import TrainConfig
from trainer.model.decode import SamplingAborted
from trainer.progress import Progress, ProgressState, Tee, TqdmProgress
from trainer.training.rounds import RoundOutcome

log = logging.getLogger(__name__)
TRAINED_THROUGH = "trained_through_vote"


RunRound = Callable[[str, Progress], RoundOutcome]


class TrainerThread:
    """Runs ``run_round(trigger, progress)`` whenever ``train_cfg().votes_per_round`` new
    usable votes are in ``store`` (or an admin asks)."""

    def __init__(self, store, train_cfg: Callable[[], TrainConfig], run_round: RunRound,
                 poll_s: float = 2.0, terminal_progress: bool = True) -> None:
        self.store, self._train_cfg, self._run_round = store, train_cfg, run_round
        self.poll_s = poll_s
        self.progress = ProgressState()
        self._terminal = terminal_progress
        self._asked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = "idle"
        self.last_outcome: RoundOutcome | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._asked.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def ask(self) -> None:
        """Start a round as soon as possible (admin's "Train now")."""
        self._asked.set()

    def votes_needed(self) -> int:
        new = self.store.usable_votes_since(int(self.store.get_state(TRAINED_THROUGH, 0)))
        return max(self._train_cfg().votes_per_round - new, 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                asked = self._asked.is_set()
                if not asked and self.votes_needed() > 0:
                    self.state = "waiting"
                    self._asked.wait(self.poll_s)
                    continue
                self._asked.clear()
                self.run_one("admin" if asked else "auto")
            except SamplingAborted:
                return  # stopping: the round is marked interrupted at the next start
            except Exception as e:  # noqa: BLE001 - the trainer thread must survive
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("trainer loop error")
                self._stop.wait(self.poll_s)

    def run_one(self, trigger: str) -> RoundOutcome:
        """Run one round now (also used headless by `app.py train`)."""
        self.state = "training"
        sinks = [self.progress] + ([TqdmProgress("step")] if self._terminal else [])
        try:
            outcome = self._run_round(trigger, Tee(*sinks))
        finally:
            for s in sinks[1:]:
                s.close()
            self.state = "idle"
        read = self.store.round_last_vote(outcome.round_id)
        self.store.set_state(TRAINED_THROUGH,
                             self.store.last_vote_id() if read is None else read)
        self.last_outcome = outcome
        self.last_error = outcome.error
        return outcome

    def status(self) -> dict:
        snap = self.progress.snapshot()
        out = {"state": self.state, "progress": snap, "last_error": self.last_error,
               "running": bool(self._thread and self._thread.is_alive())}
        if self.state != "training":
            out["votes_needed"] = self.votes_needed()
        if self.last_outcome:
            out["last_round"] = {"id": self.last_outcome.round_id,
                                 "status": self.last_outcome.status,
                                 "version": self.last_outcome.version}
        return out
