"""Server-side handlers of the web UI and the scripted API: thin calls into the service.

Who is calling comes from ``gr.Request.username`` (the login); what they may do is
decided in every handler, on the server, from their role in the users file
(app/access.py), so an annotator who calls an admin endpoint directly (any client, any
fn_index) is refused too.

Handlers return tuples in the order the UI wires them (see ``ANNOTATE_OUTPUTS``);
formatting lives in app/views.py. The service is passed in; nothing here imports the
trainer's model code (app/ imports no torch).
"""

from __future__ import annotations

import html
import time
from typing import Any

import gradio as gr

from app import leaderboard, views
from app.access import Access
from app.config import AppConfig
from app.datatab import DataHandlers
from app.inputs import check_text, fail, parse_pair_id
from app.teamtab import TeamHandlers
from storage.common import CHOICES
from storage.ranking import MAX_RANK, RANK_CHOICES
from storage.votes import MAX_BETTER_ANSWER
from trainer.config import EDITABLE, MODEL_AREAS

# Order of the values every annotate handler returns.
# ``shown_id`` is a hidden component holding the id of the pair on the page: a vote sends
# it back, so a second click or key press that raced the page update is refused.
# In rank mode ``rank_box`` shows instead of ``pair_box``: up to MAX_RANK answers and
# the best / worst marks (radio choices "1".."N").
RANK_ANSWERS = tuple(f"answer_{k + 1}" for k in range(MAX_RANK))
ANNOTATE_OUTPUTS = ("state", "prompt", "response_a", "response_b", "reveal", "progress",
                    "better", "pair_box", "rank_box", *RANK_ANSWERS, "rank_best",
                    "rank_worst", "banner", "timer", "shown_id")
_KEEP = len(ANNOTATE_OUTPUTS) - 3  # outputs a poll tick leaves alone (before banner)


def is_not_ready(exc: BaseException) -> bool:
    """True for the service's NotReady (matched by name: app/ cannot import trainer.service)."""
    return any(c.__name__ == "NotReady" for c in type(exc).__mro__)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user: bad values, unknown ids."""
    try:
        from storage import errors
    except ImportError:  # a store without named errors: plain bad values only
        return (ValueError, LookupError)
    found = tuple(v for v in vars(errors).values()
                  if isinstance(v, type) and issubclass(v, Exception))
    return (*found, ValueError, LookupError)


def help_table() -> dict[str, dict[str, tuple[str, tuple | None]]]:
    """(help, choices) of every field of the runtime-editable config areas."""
    import dataclasses

    return {area: {f.name: (f.metadata.get("help", ""), f.metadata.get("choices"))
                   for f in dataclasses.fields(MODEL_AREAS[area])} for area in EDITABLE}


def _mark(label: Any) -> int | None:
    """A page's best / worst mark ("1".."N") as a 0-based index; None when unmarked."""
    if label in (None, ""):
        return None
    if not (isinstance(label, str) and label.isascii() and label.isdigit()):
        raise fail(f"mark {label!r} is not an answer number: choose 1-N on the page.")
    return int(label) - 1


class Handlers(DataHandlers, TeamHandlers):
    """Every callback of the UI and the API, as plain methods (tested without a browser)."""

    def __init__(self, service: Any, app_cfg: AppConfig) -> None:
        self.svc = service
        self.cfg = app_cfg
        self.access = Access(app_cfg.auth_file)
        self._user_errors = _user_errors()

    @property
    def store(self) -> Any:
        return self.svc.store

    # --- helpers -----------------------------------------------------------------------
    def load_state(self) -> dict:
        """Cheap readiness snapshot (no DB queries) for the banner and the poll timer."""
        return {"ready": self.svc.wait_ready(0), "loading": self.svc.loading.snapshot(),
                "load_error": self.svc.load_error}

    def banner(self) -> str:
        return views.banner_markdown(self.load_state(), self.access.local_mode)

    def progress(self, user: str) -> str:
        return views.progress_markdown(user, self.store.annotator_progress(user),
                                       self.store.serving_adapter())

    def _annotate(self, user: str, pair: dict | None, reveal: Any = None,
                  clear_better: bool = True) -> tuple:
        """Outputs (ANNOTATE_OUTPUTS order) showing ``pair`` (an A/B pair or a rank set)
        or the waiting note."""
        answers = (pair or {}).get("answers")
        state = {"id": int(pair["id"]), "shown": time.time(),
                 "kind": "pair" if answers is None else "rank"} if pair else None
        rank = answers is not None or (pair is None and self._mode() == "rank")
        ready = self.svc.wait_ready(0)
        if answers is not None:
            prompt, texts = views.rank_markdown(pair)
            a = b = ""
        else:
            (prompt, a, b), texts = views.pair_markdown(pair), []
        marks = [str(k + 1) for k in range(len(texts))]
        boxes = [gr.Markdown(value=texts[k] if k < len(texts) else "", visible=k < len(texts))
                 for k in range(MAX_RANK)]
        return (state, prompt, a, b, gr.skip() if reveal is None else reveal,
                self.progress(user), "" if clear_better else gr.skip(),
                gr.Column(visible=not rank), gr.Column(visible=rank), *boxes,
                gr.Radio(choices=marks, value=None), gr.Radio(choices=marks, value=None),
                self.banner(), gr.Timer(active=pair is None or not ready),
                state and state["id"])

    def _mode(self) -> str:
        return self.svc.pool_cfg.vote_mode

    def commit_vote(self, user: str, pair_id: Any, choice: Any, better: str | None,
                    decide_ms: int | None) -> dict:
        """Validate, then store the vote; returns the service's reveal dict."""
        if choice not in CHOICES:
            raise fail(f"choice {choice!r} is not valid: use one of {', '.join(CHOICES)}.")
        pair_id = parse_pair_id(pair_id)
        if better is not None and not isinstance(better, str):
            raise fail(f"The better answer must be text, not {type(better).__name__}.")
        better = check_text(better or "", "The better answer").strip() or None
        if better and len(better) > MAX_BETTER_ANSWER:
            raise fail(f"The better answer is {len(better)} characters long: shorten it to "
                       f"at most {MAX_BETTER_ANSWER}.")
        try:
            return self.svc.vote(user, pair_id, choice, better, decide_ms)
        except self._user_errors as e:
            raise fail(f"Vote not stored: {e}") from e

    def commit_rank_vote(self, user: str, pair_id: Any, choice: Any, best: Any, worst: Any,
                         decide_ms: int | None) -> dict:
        """Validate, then store a rank vote (0-based best / worst); returns the reveal."""
        if choice not in RANK_CHOICES:
            raise fail(f"choice {choice!r} is not valid for a rank set: use one of "
                       f"{', '.join(RANK_CHOICES)}.")
        pair_id = parse_pair_id(pair_id)
        marks = {}
        for name, value in (("best", best), ("worst", worst)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise fail(f"{name}={value!r}: give the answer's index (0-based) or leave it "
                           "empty.")
            marks[name] = value
        try:
            return self.svc.vote_rank(user, pair_id, choice, marks["best"], marks["worst"],
                                      decide_ms)
        except self._user_errors as e:
            raise fail(f"Vote not stored: {e}") from e

    def api_decide_ms(self, pair_id: Any, user: str) -> int | None:
        """Time to decide for API votes: from when the store handed the pair to ``user``."""
        try:
            t = self.store.pair_served_at(int(pair_id), user)
        except (TypeError, ValueError, OverflowError):
            return None
        return max(int((time.time() - t) * 1000), 0) if t else None

    # --- annotate tab ------------------------------------------------------------------
    def on_load(self, request: gr.Request) -> tuple:
        """Page load: the caller's first pair, the banner, and admin tabs shown or hidden."""
        user = self.access.user(request)
        admin = self.access.role(user) == "admin"
        who = f"Logged in as **{html.escape(user)}** ({'admin' if admin else 'annotator'})."
        return (*self._annotate(user, self.svc.next_item(user)), who,
                gr.Tab(visible=admin), gr.Tab(visible=admin), gr.Tab(visible=admin))

    def vote(self, choice: str, better: str, shown_id: float | None, state: dict | None,
             request: gr.Request) -> tuple:
        """Commit the vote (before anything moves on), reveal, then show the next pair.

        ``shown_id`` is the pair id the page showed when the button was pressed.
        """
        user = self.access.user(request)
        decide_ms = self._shown(state, shown_id, "pair")
        reveal = self.commit_vote(user, state["id"], choice, better, decide_ms)
        return self._annotate(user, self.svc.next_item(user), views.reveal_markdown(reveal))

    def vote_rank(self, choice: str, best: str | None, worst: str | None,
                  shown_id: float | None, state: dict | None, request: gr.Request) -> tuple:
        """Commit a rank vote from the page (marks are the labels "1".."N"), reveal, then
        show the next item."""
        user = self.access.user(request)
        decide_ms = self._shown(state, shown_id, "rank")
        if choice == "rank" and not best and not worst:
            raise fail("Mark the best answer, the worst, or both (keys 1-N and Shift+1-N), "
                       "or press All equally good / All bad.")
        marks = [_mark(m) if choice == "rank" else None for m in (best, worst)]
        reveal = self.commit_rank_vote(user, state["id"], choice, *marks, decide_ms)
        return self._annotate(user, self.svc.next_item(user),
                              views.rank_reveal_markdown(reveal))

    @staticmethod
    def _shown(state: dict | None, shown_id: float | None, kind: str) -> int:
        """Milliseconds the item was on screen; refuses a vote that does not fit it."""
        if not state:
            raise fail("No pair is shown yet: wait until one appears, then vote.")
        if shown_id is not None and int(shown_id) != state["id"]:
            raise fail(f"This vote was meant for pair {int(shown_id)}, which was already "
                       "answered (a second click or key press?); nothing was stored. Judge "
                       f"the pair now shown (pair {state['id']}).")
        if state.get("kind", "pair") != kind:
            what = ("a rank set: mark its best and worst answers" if kind == "pair" else
                    "an A/B pair: choose A, B, tie or both bad")
            raise fail(f"Pair {state['id']} on the page is {what}; nothing was stored.")
        return max(int((time.time() - state["shown"]) * 1000), 0)

    def skip(self, state: dict | None, request: gr.Request) -> tuple:
        """No vote; release the pair if the store can, and show another."""
        user = self.access.user(request)
        if state:
            self.store.skip_pair(int(state["id"]), user)
        pair = self.svc.next_item(user)
        note = "*Skipped.*" if state else gr.skip()
        return self._annotate(user, pair, note, clear_better=False)

    def undo(self, state: dict | None, request: gr.Request) -> tuple:
        """Take back the caller's last vote (until a round reads it) and show its pair."""
        user = self.access.user(request)
        try:
            pair = self.svc.undo(user, int(state["id"]) if state else None)
        except self._user_errors as e:
            raise fail(str(e)) from e
        note = (f"*Undone: your vote on pair {int(pair['id'])} is removed from training and "
                "exports. Judge it again.*")
        return self._annotate(user, pair, note, clear_better=True)

    def poll(self, state: dict | None, request: gr.Request) -> tuple:
        """Timer tick while waiting for a pair or for the model: fetch one if ready."""
        user = self.access.user(request)
        ready = self.svc.wait_ready(0)
        if state:
            return (*(gr.skip(),) * _KEEP, self.banner(), gr.Timer(active=not ready),
                    gr.skip())
        pair = self.svc.next_item(user)
        if pair is None:
            return (*(gr.skip(),) * _KEEP, self.banner(), gr.Timer(active=True), gr.skip())
        return self._annotate(user, pair, clear_better=False)

    def ask(self, prompt: str, state: dict | None, request: gr.Request) -> tuple:
        """Generate a pair for the caller's own prompt and show it (the ask box clears)."""
        user = self.access.user(request)
        text = (prompt or "").strip()
        if not text:
            raise fail("Your prompt is empty: type a question or instruction first.")
        check_text(text, "Your prompt")
        if len(text) > self.cfg.max_prompt_chars:
            raise fail(f"Your prompt is {len(text)} characters long: shorten it to at most "
                       f"{self.cfg.max_prompt_chars} (--max-prompt-chars).")
        try:
            pair = self.svc.ask(user, text)
        except Exception as e:
            if is_not_ready(e):
                raise fail(f"{e}. Try again once it is ready.") from e
            if isinstance(e, self._user_errors):
                raise fail(str(e)) from e
            raise
        return (*self._annotate(user, pair, "*Your prompt:*"), "")

    # --- train tab (admins) --------------------------------------------------------------
    def train_live(self, request: gr.Request) -> tuple:
        """Trainer state, progress bar, step plots, held-out and arena plots, rounds."""
        self.access.require_admin(request, "see the training dashboard")
        status = self.svc.status()
        md, frac, label = views.trainer_markdown(status)
        frames = views.steps_frames(self.store.train_steps())
        rounds = self.store.list_rounds(100)
        board = leaderboard.leaderboard_frame(self.store.arena_results(), self.store.list_adapters())
        held, arena = views.heldout_frame(rounds), leaderboard.arena_plot_frame(board)
        return (md, views.progress_bar_html(frac, label), frames["loss"],
                frames["accuracy"], frames["margins"],
                gr.BarPlot(value=held, sort=list(held["label"]) or None),
                gr.BarPlot(value=arena, sort=list(arena["version"]) or None),
                views.rounds_frame(rounds))

    def train_forms(self, specs: list[dict], request: gr.Request) -> tuple:
        """Rollback choices and current settings values (on tab open / after saving)."""
        self.access.require_admin(request, "see the settings")
        current = self.svc.settings()
        choices = views.version_choices(self.store.list_adapters())
        return (gr.Dropdown(choices=choices, value=self.store.serving_adapter()),
                *(current[s["area"]][s["name"]] for s in specs))

    def train_now(self, request: gr.Request) -> str:
        user = self.access.require_admin(request, "start a training round")
        try:
            self.svc.train_now()
        except Exception as e:
            if is_not_ready(e):
                raise fail(f"{e}. Press Train now again once it is ready.") from e
            raise
        self.store.audit(user, "train_now")
        return f"Training round requested by {user}; follow it on the Train tab (or in status)."

    def rollback(self, version: str, request: gr.Request) -> str:
        admin = self.access.require_admin(request, "change the serving version")
        if not version:
            raise fail("Choose a version to serve first ('base' or vN).")
        try:
            self.svc.rollback(version)
        except Exception as e:
            if is_not_ready(e) or isinstance(e, ValueError):
                raise fail(str(e)) from e
            raise
        self.store.audit(admin, "rollback", version=version)
        return f"Now serving `{version}`; new pairs come from it."

    def save_settings(self, specs: list[dict], values: list[Any],
                      request: gr.Request) -> dict:
        """Validate the form and apply it; raises one error listing every bad value."""
        admin = self.access.require_admin(request, "change settings")
        changes, problems = views.settings_changes(specs, values, self.svc.settings())
        if problems:
            raise fail("Settings not saved:\n  - " + "\n  - ".join(problems))
        if not changes:
            return {}
        self.apply_settings(admin, changes)
        return changes

    def apply_settings(self, admin: str, changes: dict) -> dict:
        """Apply runtime settings (one error lists every bad value) and log who did it."""
        try:
            out = self.svc.update_settings(changes)
        except ValueError as e:
            raise fail(f"Settings not saved. {e}") from e
        self.store.audit(admin, "settings", changes=changes)
        return out

    # --- leaderboard and data ------------------------------------------------------------
    def leaderboard(self) -> Any:
        return leaderboard.leaderboard_frame(self.store.arena_results(), self.store.list_adapters())
