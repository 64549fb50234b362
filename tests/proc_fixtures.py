"""Real processes for the crash tests: ``python app.py serve`` on the tiny model as a child
that can be killed with SIGKILL and restarted on the same data dir, API voters in several
threads, and checks made from outside (the real CLI and sqlite3)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

from gradio_client import Client

from storage.failpoints import ENV as FAILPOINTS_ENV
from tests.ui_fixtures import api_client, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300.0  # start-up on a slow, shared 2-core CI machine
ANNOTATOR = "local"  # single-user mode: every API vote is by 'local'


def child_env(fp_dir: Path) -> dict:
    """The test environment without LIVEDPO_* settings, plus the failpoint directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEDPO_")}
    env.update({FAILPOINTS_ENV: str(fp_dir), "GRADIO_ANALYTICS_ENABLED": "False",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


def wait_hit(marker: Path, timeout: float = 240.0) -> int:
    """Wait until a failpoint wrote its hit marker; returns the pid written into it."""
    def pid() -> int | None:
        text = marker.read_text().strip() if marker.exists() else ""
        return int(text) if text.isdigit() else None

    return wait_for(pid, timeout, f"failpoint marker {marker.name}")


class PortTaken(RuntimeError):
    """The server could not bind its port (another process took it after free_port())."""


class Server:
    """``python app.py serve`` as a child process (its own process group) on a free port."""

    def __init__(self, data_dir: Path, model_dir: Path, fp_dir: Path, flags: list[str]):
        self.data_dir, self.model_dir, self.fp_dir = data_dir, model_dir, fp_dir
        self.flags = flags
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.starts = 0
        self.start_seconds: list[float] = []
        self.log_path = data_dir.parent / "server.log"
        self._log_start = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until the status API says the model is ready (a new
        free port per start; tried again if another process took the port meanwhile)."""
        assert not self.running(), "server already running"
        t0 = time.monotonic()
        for attempt in range(3):
            self._launch(free_port())
            try:
                wait_for(self._ready, READY_TIMEOUT_S, "the server's status API to say ready",
                         0.5)
                break
            except PortTaken:
                if attempt == 2:
                    raise
        self.starts += 1
        self.start_seconds.append(round(time.monotonic() - t0, 1))

    def _launch(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        with open(self.log_path, "a") as log:
            self._log_start = log.tell()
            log.write(f"\n===== start {self.starts + 1} on port {port} =====\n")
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "app.py", "serve", "--data-dir", str(self.data_dir),
                 "--model", str(self.model_dir), "--host", "127.0.0.1", "--port", str(port),
                 *self.flags], cwd=ROOT, env=child_env(self.fp_dir), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            log = self.log_path.read_bytes()[self._log_start:].decode(errors="replace")
            if "empty port" in log or "address already in use" in log.lower():
                raise PortTaken(log[-500:])
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{log[-4000:]}")
        try:
            status = self.status()
        except Exception:  # noqa: BLE001 - not listening yet
            return False
        if status.get("load_error"):
            raise AssertionError(f"model failed to load: {status['load_error']}")
        return bool(status.get("ready"))

    def client(self) -> Client:
        return api_client(self.url, max_workers=2, analytics_enabled=False)

    def status(self) -> dict:
        c = self.client()
        try:
            return c.predict(api_name="/status")
        finally:
            c.close()

    def train_now(self) -> str:
        c = self.client()
        try:
            return c.predict(api_name="/train_now")
        finally:
            c.close()

    def kill(self) -> None:
        """SIGKILL the server's whole process group and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


class Voters:
    """``n`` API clients in threads: next_pair, then vote a/b (sometimes tie), until
    stopped or ``max_votes``. ``acked`` holds (pair_id, choice) of every vote whose API call
    returned; ``errors`` the failures seen before ``expect_death()`` was called."""

    def __init__(self, server: Server, n: int = 3, seed: int = 0, max_votes: int = 400):
        self.server, self.n, self.seed, self.max_votes = server, n, seed, max_votes
        self.acked: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dying = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(n)]

    def __enter__(self) -> Voters:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def expect_death(self) -> None:
        """The server is about to be killed: failures from now on are expected."""
        self._dying.set()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def wait_acked(self, n: int, timeout: float = 240.0) -> None:
        def enough() -> bool:
            if self.errors:
                raise AssertionError(f"API calls failed: {self.errors[:3]}")
            return len(self.acked) >= n

        wait_for(enough, timeout, f"{n} acknowledged votes (have {len(self.acked)})")

    def _run(self, i: int) -> None:
        rng = random.Random(self.seed * 100 + i)
        try:
            c = self.server.client()
        except Exception as e:  # noqa: BLE001
            if not self._dying.is_set():
                self.errors.append(f"client: {e!r}")
            return
        try:
            while not self._stop.is_set() and len(self.acked) < self.max_votes:
                pair_id, *_ = c.predict(api_name="/next_pair")
                if pair_id is None:
                    time.sleep(0.2)
                    continue
                choice = rng.choice(("a", "b", "a", "b", "tie"))
                c.predict(pair_id, choice, "", api_name="/vote")
                with self._lock:
                    self.acked.append((int(pair_id), choice))
                time.sleep(rng.uniform(0.0, 0.05))
        except Exception as e:  # noqa: BLE001 - a kill ends the stream
            if not self._dying.is_set():
                self.errors.append(f"thread {i}: {e!r}")
        finally:
            c.close()


# --- checks from outside the server ---------------------------------------------------------
def db_rows(data_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of a query on the data dir's DB through a fresh sqlite3 connection."""
    with closing(sqlite3.connect(data_dir / "livedpo.db", timeout=60)) as conn:
        return conn.execute(sql, params).fetchall()


def cli(*args: str, data_dir: Path, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """``python app.py ARGS --data-dir D`` as a user runs it."""
    return subprocess.run([sys.executable, "app.py", *args, "--data-dir", str(data_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env or child_env(data_dir.parent / "no-failpoints"))


def cli_status(data_dir: Path) -> dict:
    r = cli("status", "--json", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)
