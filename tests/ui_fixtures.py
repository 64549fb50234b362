"""Helpers for the UI tests: a fake service (fast, no model), a real one on the tiny
model, a users file, and launching the Blocks on a free port."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

from trainer.config import AppConfig

ADMIN, ANNOTATOR, PASSWORD = "alice", "bob", "correct-horse-9"
EDITABLE = {"train": ("loss", "beta", "lr", "epochs", "votes_per_round", "reference",
                      "label_smoothing", "window", "micro_batch", "grad_accum"),
            "pool": ("arena_fraction", "arena_opponent", "ready_pairs", "overlap"),
            "sampling": ("temperature", "top_p", "top_k", "max_new_tokens")}


class NotReady(RuntimeError):
    """Same name as trainer.service.NotReady (app/ matches it by name)."""


class FakeStore:
    """The Store read/write methods the UI uses, in memory."""

    def __init__(self, n_pairs: int = 3) -> None:
        self.pairs = {i: {"id": i, "prompt": f"Prompt {i} <script>x()</script>",
                          "response_a": f"A{i} <img src=x onerror=alert(1)>",
                          "response_b": f"B{i} [go](javascript:alert(1))",
                          "version_a": "base", "version_b": "base", "arena": False,
                          "gen_config": {"reward_a": 0.5, "reward_b": -0.25},
                          "assigned": None} for i in range(1, n_pairs + 1)}
        self.votes: list[dict] = []
        self.prompts: list[str] = []
        self.serving = "base"
        self.adapters = [{"version": "v1", "status": "ready", "path": "/nonexistent/v1",
                          "metrics": {"heldout_after": {"accuracy": 0.75}}}]

    def take_pair(self, annotator: str, overlap: int = 1) -> dict | None:
        for p in self.pairs.values():
            if p["assigned"] == annotator and not self._voted(p["id"], annotator):
                return dict(p)
        for p in self.pairs.values():
            if p["assigned"] is None:
                p["assigned"] = annotator
                return dict(p)
        return None

    def _voted(self, pair_id: int, annotator: str) -> bool:
        return any(v["pair_id"] == pair_id and v["annotator"] == annotator for v in self.votes)

    def record_vote(self, pair_id, annotator, choice, better, decide_ms) -> int:
        if pair_id not in self.pairs:
            raise LookupError(f"pair {pair_id} does not exist")
        if choice not in ("a", "b", "tie", "both_bad"):
            raise ValueError(f"choice {choice!r} is not valid")
        self.votes.append({"id": len(self.votes) + 1, "pair_id": pair_id,
                           "annotator": annotator, "choice": choice,
                           "better_answer": better, "decide_ms": decide_ms})
        return len(self.votes)

    def get_pair(self, pair_id: int) -> dict:
        return dict(self.pairs[pair_id])

    def annotator_progress(self, name: str) -> dict:
        n = sum(v["annotator"] == name for v in self.votes)
        return {"today": n, "total": n, "agreement": None}

    def serving_adapter(self) -> str:
        return self.serving

    def counts(self) -> dict:
        return {"prompts": len(self.prompts), "pairs": len(self.pairs),
                "votes": len(self.votes)}

    def recent_votes(self, limit: int) -> list[dict]:
        return self.votes[-limit:][::-1]

    def list_adapters(self) -> list[dict]:
        return self.adapters

    def list_rounds(self, limit: int = 50) -> list[dict]:
        return [{"id": 1, "status": "accepted", "trigger": "auto", "adapter_version": "v1",
                 "counts": {"train": 8, "heldout": 2},
                 "metrics": {"heldout_before": {"accuracy": 0.5},
                             "heldout_after": {"accuracy": 0.75}, "steps": 2}}]

    def train_steps(self, round_id: int | None = None) -> list[dict]:
        return [{"round_id": 1, "step": s, "metrics": {
            "loss": 0.69 - 0.1 * s, "rewards/accuracies": 0.5 + 0.2 * s,
            "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s,
            "rewards/margins": 0.2 * s}} for s in (1, 2)]

    def arena_results(self) -> list[dict]:
        return [{"version": "v1", "opponent": "base", "wins": 6, "losses": 2, "ties": 2,
                 "both_bad": 1, "n": 11}]

    def get_adapter(self, version: str) -> dict | None:
        return next((a for a in self.adapters if a["version"] == version), None)


class FakeService:
    """The Service API the UI calls, over a FakeStore."""

    def __init__(self, ready: bool = True, n_pairs: int = 3) -> None:
        self.store = FakeStore(n_pairs)
        self.ready = ready
        self.load_error = None
        self.loading = SimpleNamespace(snapshot=lambda: {
            "desc": "Converting", "fraction": 0.4, "elapsed_s": 12.0, "done": 4, "total": 10})
        self.trained = 0
        self._settings = {"train": {"loss": "sigmoid", "beta": 0.1, "lr": 2e-4, "epochs": 2},
                          "pool": {"ready_pairs": 8},
                          "sampling": {"temperature": 0.9, "max_new_tokens": 96}}

    def wait_ready(self, timeout=None) -> bool:
        return self.ready

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReady("The model is loading: Converting (40%, 12.0 s)")

    def next_pair(self, annotator: str) -> dict | None:
        return self.store.take_pair(annotator)

    def vote(self, annotator, pair_id, choice, better_answer=None, decide_ms=None) -> dict:
        self.store.record_vote(pair_id, annotator, choice, better_answer, decide_ms)
        p = self.store.get_pair(pair_id)
        ra, rb = p["gen_config"]["reward_a"], p["gen_config"]["reward_b"]
        pred = "a" if ra > rb else "b"
        return {"pair_id": pair_id, "choice": choice, "version_a": p["version_a"],
                "version_b": p["version_b"], "arena": p["arena"], "reward_a": ra,
                "reward_b": rb, "predicted": pred,
                "prediction_correct": pred == choice if choice in "ab" else None}

    def ask(self, annotator: str, prompt: str) -> dict:
        self.require_ready()
        i = max(self.store.pairs) + 1
        self.store.pairs[i] = {**self.store.pairs[1], "id": i, "prompt": prompt,
                               "assigned": annotator}
        return dict(self.store.pairs[i])

    def status(self) -> dict:
        return {**self.store.counts(), "serving_adapter": self.store.serving, "ready": self.ready,
                "loading": self.loading.snapshot(), "load_error": None,
                "trainer": {"state": "idle", "votes_needed": 3, "last_error": None,
                            "progress": {"done": 0, "total": 0, "desc": "", "fraction": 0.0}},
                "settings": self.settings()}

    def train_now(self) -> None:
        self.require_ready()
        self.trained += 1

    def rollback(self, version: str) -> str:
        self.require_ready()
        if version != "base" and not self.store.get_adapter(version):
            raise ValueError(f"Cannot roll back to {version!r}: choose 'base' or one of: v1.")
        self.store.serving = version
        return version

    def settings(self) -> dict:
        return {a: dict(f) for a, f in self._settings.items()}

    def update_settings(self, changes: dict) -> dict:
        bad = [f"{a}.{k}" for a, f in changes.items() for k in f if k not in EDITABLE.get(a, ())]
        if bad or changes.get("train", {}).get("beta", 1) <= 0:
            raise ValueError("Invalid settings:\n  - " + ", ".join(bad or ["beta must be > 0"]))
        for a, f in changes.items():
            self._settings[a].update(f)
        return self.settings()


def request(name: str | None) -> SimpleNamespace:
    """A stand-in for gr.Request (the handlers only read .username)."""
    return SimpleNamespace(username=name)


def write_users(path: Path) -> Path:
    from app.auth import add_user

    add_user(path, ADMIN, PASSWORD, "admin")
    add_user(path, ANNOTATOR, PASSWORD, "annotator")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from app.cli import build_parser, make_service, resolve

    args = build_parser().parse_args(
        ["serve", "--data-dir", str(tmp), "--model", str(model_dir), "--max-new-tokens", "8",
         "--ready-pairs", "4", "--batch-prompts", "4", *extra])
    svc = make_service(resolve(args), terminal_progress=False)
    svc.start(background=False)
    return svc


def wait_for(cond, timeout: float = 60.0, every: float = 0.2):
    """Poll ``cond()`` until truthy; returns its value or raises TimeoutError."""
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"condition not met within {timeout} s")
