"""A real ``python app.py serve`` subprocess on 127.0.0.1 for benchmarks, and logged-in
gradio_client clients for it. Nothing here talks to any address but loopback.

    proc = start_server(model, data_dir, auth_file, free_port(), flags, log_path)
    wait_ready(url, user, proc, log_path, min_ready=8, timeout=900)
    ...
    stop_server(proc)
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from app.testing import HOST, free_port
from bench.common import ROOT

REQUEST_TIMEOUT_S = 120.0  # one API call; a slower one raises
User = tuple[str, str]  # (name, password)


def connect(url: str, user: User):
    """A gradio_client.Client logged in as ``user`` (loopback only, no telemetry)."""
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"{url} is not on {HOST}: this benchmark only talks to loopback")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from gradio_client import Client

    return Client(url, auth=user, verbose=False, analytics_enabled=False,
                  httpx_kwargs={"timeout": REQUEST_TIMEOUT_S}, download_files=False)


def call(client, api_name: str, *args: Any) -> Any:
    """One API call, bounded in time."""
    return client.submit(*args, api_name=api_name).result(timeout=REQUEST_TIMEOUT_S)


def make_users(auth_file: Path, n: int) -> tuple[list[User], User]:
    """N annotators and a status-polling monitor (who never votes) in a fresh users file."""
    from app.auth import add_user

    tag = secrets.token_hex(3)  # unique per run: an existing data dir keeps older votes
    users = [(f"load-{tag}-{i:02d}", secrets.token_urlsafe(12)) for i in range(n)]
    mon = (f"load-{tag}-monitor", secrets.token_urlsafe(12))
    for name, password in [*users, mon]:
        add_user(auth_file, name, password, "annotator")
    return users, mon


def start_server(model: str, data_dir: Path, auth_file: Path, port: int, flags: list[str],
                 log_path: Path) -> subprocess.Popen:
    """``python app.py serve`` on 127.0.0.1:port, output to ``log_path``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(ROOT / "app.py"), "serve", "--data-dir", str(data_dir),
           "--model", model, "--auth-file", str(auth_file), *flags,
           "--host", HOST, "--port", str(port)]
    with open(log_path, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)


def wait_ready(url: str, user: User, proc: subprocess.Popen, log_path: Path,
               min_ready: int, timeout: float) -> float:
    """Seconds until the page answers, the model is loaded and ``min_ready`` pairs wait."""
    import httpx

    t0, end = time.monotonic(), time.monotonic() + timeout

    def alive() -> None:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{tail}")
        if time.monotonic() > end:
            raise TimeoutError(f"the server was not ready within {timeout:.0f} s "
                               f"(log: {log_path})")

    while True:
        alive()
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    client = connect(url, user)
    try:
        while True:
            alive()
            s = call(client, "/status")
            if s.get("load_error"):
                raise RuntimeError(f"the model failed to load: {s['load_error']}")
            if s.get("ready") and (s.get("pairs_ready") or 0) >= min_ready:
                return time.monotonic() - t0
            time.sleep(1)
    finally:
        client.close()


def stop_server(proc: subprocess.Popen) -> None:
    """Ctrl-C (Gradio closes), then SIGTERM, then SIGKILL; each with a bounded wait."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue




def serve(model: str, data_dir: Path, auth_file: Path, flags: list[str], log_path: Path,
          user: User, min_ready: int, timeout: float) -> tuple[subprocess.Popen, str, float]:
    """Start the server on a free port and wait until it is ready: (process, url, seconds).

    Retried on another port when the probed one was taken before the server bound it;
    the process is stopped if it does not become ready.
    """
    for attempt in range(3):
        port = free_port()
        url = f"http://{HOST}:{port}/"
        proc = start_server(model, data_dir, auth_file, port, flags, log_path)
        try:
            return proc, url, wait_ready(url, user, proc, log_path, min_ready, timeout)
        except RuntimeError as e:
            stop_server(proc)
            if "empty port" not in str(e) or attempt == 2:
                raise
        except BaseException:
            stop_server(proc)
            raise
    raise AssertionError("unreachable")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a running process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Budget:
    """A shared bound on requests (count) and on time (deadline); thread-safe."""

    def __init__(self, seconds: float, max_requests: int) -> None:
        self.deadline = time.monotonic() + seconds
        self.left = max_requests
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left <= 0 or time.monotonic() >= self.deadline:
                return False
            self.left -= 1
            return True
