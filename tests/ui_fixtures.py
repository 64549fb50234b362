"""Helpers for the UI tests: real pairs and rounds on the tiny model, a real service with
its threads, a users file, and launching the Blocks on a free port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.config import AppConfig
from app.testing import free_port

ADMIN, ANNOTATOR, PASSWORD = "alice", "bob", "correct-horse-9"
# Debian's chromium, driven by playwright (playwright's own browser download is not used).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Texts that try to run script when rendered: stored as typed, shown inert.
HOSTILE = {"prompt": "Prompt <script>x()</script>",
           "response_a": "A <img src=x onerror=alert(1)>",
           "response_b": "B [go](javascript:alert(1))"}


def add_hostile_pair(store) -> int:
    """A real queued pair with HOSTILE texts, added through the store's own API."""
    prompt_id = store.add_prompt(HOSTILE["prompt"], source="import")
    return store.record_pair(prompt_id, HOSTILE["response_a"], HOSTILE["response_b"], "base",
                             "base", gen_config={}, seed=0)


def train_v1(svc, n_pairs: int = 8) -> None:
    """Make ``n_pairs`` pairs, vote on them and run one real DPO round: v1 serves."""
    from tests.svc_fixtures import vote_all

    assert len(svc.pool.fill_once(n_pairs)) == n_pairs
    vote_all(svc, "trainer-votes")
    outcome = svc.trainer.run_one("test")
    assert outcome.status == "accepted" and outcome.version == "v1", outcome.error


def arena_side(pair: dict, version: str) -> str:
    """Which side ('a' or 'b') of an arena pair ``version`` produced."""
    return "a" if pair["version_a"] == version else "b"


def request(name: str | None):
    """A real gr.Request as Gradio builds it for a logged-in user (None: no login)."""
    import gradio as gr

    return gr.Request(username=name)


def annotate_out(values) -> dict:
    """An Annotate-tab callback's return values by output name (``ANNOTATE_OUTPUTS``)."""
    from app.api import ANNOTATE_OUTPUTS

    return dict(zip(ANNOTATE_OUTPUTS, values))


def vote_count(svc) -> int:
    return svc.store.counts()["votes"]


def write_users(path: Path) -> Path:
    from app.auth import add_user

    add_user(path, ADMIN, PASSWORD, "admin")
    add_user(path, ANNOTATOR, PASSWORD, "annotator")
    return path


# gradio_client's own requests (the login above all: a scrypt hash on the server) wait
# httpx's default 5 s; on a loaded 2-core machine that is not enough.
CLIENT_HTTP = {"timeout": 60}


def api_client(url: str, auth: tuple[str, str] | None = None, **kwargs):
    """A gradio_client ``Client`` for the app at ``url`` with a patient HTTP timeout."""
    from gradio_client import Client

    return Client(url, auth=auth, verbose=False, httpx_kwargs=dict(CLIENT_HTTP), **kwargs)


def launch_app(service, tmp: Path, auth_file: str = "") -> tuple[object, str]:
    """Launch the real Blocks on 127.0.0.1:<free port>; returns (demo, url)."""
    from app.ui import launch

    cfg = AppConfig(data_dir=str(tmp), host="127.0.0.1", port=free_port(), auth_file=auth_file)
    demo = None
    for _ in range(3):  # the free port can be taken between probing and binding
        try:
            demo = launch(service, cfg, prevent_thread_lock=True, quiet=True)
            break
        except OSError:
            cfg = AppConfig(**{**cfg.__dict__, "port": free_port()})
    return demo, f"http://127.0.0.1:{cfg.port}/"


def real_service(tmp: Path, model_dir: Path, *extra: str):
    """The real Service on the tiny model, loaded synchronously (pool + trainer running)."""
    from app.cli import build_parser, resolve
    from app.commands import make_service

    args = build_parser().parse_args(
        ["serve", "--data-dir", str(tmp), "--model", str(model_dir), "--max-new-tokens", "8",
         "--ready-pairs", "4", "--batch-prompts", "4", *extra])
    svc = make_service(resolve(args), terminal_progress=False)
    svc.start(background=False)
    return svc


def wait_for(cond, timeout: float = 60.0, what: str = "the condition", every: float = 0.2):
    """Poll ``cond()`` until truthy; returns its value, or raises TimeoutError naming
    ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def skip_without_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


@contextmanager
def chromium_page(width: int = 1280, height: int = 900) -> Iterator[object]:
    """A fresh page in headless Debian Chromium; the browser closes on exit."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
