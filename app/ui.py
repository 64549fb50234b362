"""The LiveDPO web app (Gradio Blocks): Annotate, Train, Leaderboard and Data tabs.

``launch(service, app_cfg)`` is what ``python app.py serve`` calls; ``build_ui`` builds
the Blocks for it (and for the tests). Layout and event wiring live here; the callbacks
are methods of ``app.api.Handlers`` and all formatting is in ``app.views``.

Every UI callback is hidden from the API (``api_visibility="private"``); the scripted
API is ``next_pair``, ``vote``, ``next_rank``, ``vote_rank`` and ``status`` plus the
admin-only ``train_now``, ``rollback`` and ``update_settings`` (app/scripted.py). Admin rights are checked
on the server in every admin callback, hidden or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.api import RANK_ANSWERS, Handlers, help_table
from app.auth import load_users
from app.config import AppConfig
from app.logins import ClientAddress, login_checker
from app.scripted import register_api
from app.shortcuts import SHORTCUTS_JS
from app.teamtab import USER_ACTIONS
from app.teamviews import ADJUDICATION_CHOICES

DEFAULT_GUIDELINES = Path(__file__).with_name("guidelines.md")
POLL_S = 2.0
TRAIN_REFRESH_S = 3.0
PRIVATE = {"api_visibility": "private"}
QUIET = {"api_visibility": "private", "show_progress": "hidden", "concurrency_limit": None}
# (label, choice, element id, key shown on the button)
VOTE_BUTTONS = (("A is better", "a", "vote-a", "1"), ("B is better", "b", "vote-b", "2"),
                ("Tie", "tie", "vote-tie", "3"), ("Both bad", "both_bad", "vote-both-bad", "4"))
RANK_BUTTONS = (("Submit ranking", "rank", "rank-submit", "Enter"),
                ("All equally good", "tie", "rank-tie", "T"),
                ("All bad", "both_bad", "rank-both-bad", "X"))
RANK_KEYS_NOTE = ("Keys: **1-N** mark the best answer, **Shift+1-N** the worst, **Enter** "
                  "submits, **T** all equally good, **X** all bad, **S** skip. Marking only "
                  "the best (or only the worst) says the others are equal.")
LEADERBOARD_NOTE = (
    "Human win rate of each adapter version in arena pairs against its opponent (base "
    "unless `arena_opponent=previous`): (wins + ½ ties) / (wins + losses + ties), with a 95% "
    "Wilson interval. *Both bad* votes say nothing about which side is better, so they are "
    "left out of the rate and counted in their own column. In an arena rank set each "
    "answer of one version ranked against an answer of the other counts once.")
# System fonts: nothing is fetched from font CDNs (annotation servers are often offline).
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
CSS = """
.ldpo-resp { min-height: 120px; }
.ldpo-side { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px; }
.ldpo-bar { width: 100%; height: 12px; background: var(--background-fill-secondary);
  border-radius: 6px; overflow: hidden; }
.ldpo-fill { height: 100%; background: var(--color-accent); transition: width .4s; }
.ldpo-bar-label { font-size: 0.9em; margin-top: 4px; }
"""
def load_guidelines(path: str) -> str:
    """The guidelines Markdown: ``--guidelines-file`` if given, else app/guidelines.md."""
    file = Path(path) if path else DEFAULT_GUIDELINES
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"guidelines file {file} cannot be read ({e}): fix --guidelines-file "
                         "or leave it empty for the default guidelines") from None


def _annotate_tab(h: Handlers, guidelines: str) -> dict[str, Any]:
    """The Annotate tab's components, by name."""
    c: dict[str, Any] = {}
    with gr.Accordion("Annotation guidelines (read these first)", open=False):
        gr.Markdown(guidelines)
    c["prompt"] = gr.Markdown(elem_id="ldpo-prompt")
    with gr.Column(elem_id="ldpo-pair") as c["pair_box"]:
        with gr.Row(equal_height=True):
            for side in ("a", "b"):
                with gr.Column(elem_classes=["ldpo-side"]):
                    gr.Markdown(f"#### Response {side.upper()}")
                    c[f"response_{side}"] = gr.Markdown(elem_id=f"ldpo-response-{side}",
                                                        elem_classes=["ldpo-resp"])
        with gr.Row():
            for label, choice, elem_id, key in VOTE_BUTTONS:
                c[f"btn_{choice}"] = gr.Button(f"{label}  [{key}]", elem_id=elem_id,
                                               variant="primary" if choice in "ab"
                                               else "secondary")
            c["btn_skip"] = gr.Button("Skip  [S]", elem_id="vote-skip", variant="secondary")
        c["better"] = gr.Textbox(label="Write a better answer (optional: sent with your vote "
                                 "and stored as preferred over both)", lines=2,
                                 elem_id="ldpo-better")
    with gr.Column(elem_id="ldpo-rank", visible=False) as c["rank_box"]:
        _rank_box(c)
    c["reveal"] = gr.Markdown(elem_id="ldpo-reveal")
    c["undo"] = gr.Button("Undo my last vote  [U]", elem_id="vote-undo", variant="secondary",
                          size="sm")
    c["progress"] = gr.Markdown(elem_id="ldpo-progress")
    with gr.Row():
        c["ask_box"] = gr.Textbox(label="Ask your own prompt (the model answers it at once "
                                  "for you to judge)", scale=4, elem_id="ldpo-ask")
        c["ask_btn"] = gr.Button("Generate a pair", scale=1)
    return c


def _rank_box(c: dict[str, Any]) -> None:
    """Rank mode: up to MAX_RANK answers two per row, best / worst marks, buttons."""
    for k in range(0, len(RANK_ANSWERS), 2):
        with gr.Row(equal_height=True):
            for name in RANK_ANSWERS[k:k + 2]:
                c[name] = gr.Markdown(elem_id=f"ldpo-{name.replace('_', '-')}",
                                      elem_classes=["ldpo-side", "ldpo-resp"], visible=False)
    with gr.Row():
        c["rank_best"] = gr.Radio(label="Best answer [1-N]", elem_id="rank-best")
        c["rank_worst"] = gr.Radio(label="Worst answer [Shift+1-N]", elem_id="rank-worst")
    with gr.Row():
        for label, choice, elem_id, key in RANK_BUTTONS:
            c[f"rank_{choice}"] = gr.Button(f"{label}  [{key}]", elem_id=elem_id,
                                            variant="primary" if choice == "rank"
                                            else "secondary")
        c["rank_skip"] = gr.Button("Skip  [S]", elem_id="rank-skip", variant="secondary")
    gr.Markdown(RANK_KEYS_NOTE)


def _train_tab(h: Handlers, specs: list[dict]) -> dict[str, Any]:
    """The Train tab (admins): trainer state, plots, rounds, settings, rollback."""
    c: dict[str, Any] = {}
    c["status"] = gr.Markdown()
    c["bar"] = gr.HTML()
    with gr.Row():
        c["train_btn"] = gr.Button("Train now", variant="primary")
        c["msg"] = gr.Markdown()
    with gr.Row():
        c["loss"] = gr.LinePlot(x="step", y="value", color="series", title="DPO loss per step")
        c["acc"] = gr.LinePlot(x="step", y="value", color="series", y_lim=[0, 1],
                               title="Reward accuracy per step (batch)")
    with gr.Row():
        c["margins"] = gr.LinePlot(x="step", y="value", color="series",
                                   title="Implicit rewards and margins per step")
        c["heldout"] = gr.BarPlot(x="label", y="accuracy", y_lim=[0, 1], x_title="version",
                                  title="Held-out reward accuracy after each round")
        c["arena"] = gr.BarPlot(x="version", y="win rate", y_lim=[0, 1],
                                title="Arena win rate vs opponent, per version")
    c["rounds"] = gr.Dataframe(label="Rounds", interactive=False, wrap=True)
    with gr.Row():
        c["rollback_dd"] = gr.Dropdown(label="Serve version", choices=["base"], value="base",
                                       scale=3)
        c["rollback_btn"] = gr.Button("Serve this version (rollback)", scale=1)
    c["fields"] = []
    with gr.Accordion("Settings (applied at once; LoRA shape and model need a restart)",
                      open=False):
        for area in dict.fromkeys(s["area"] for s in specs):
            with gr.Group(), gr.Row():
                for s in (s for s in specs if s["area"] == area):
                    c["fields"].append(_field(s))
        c["save_btn"] = gr.Button("Save settings")
    return c


def _field(spec: dict) -> gr.components.Component:
    label, info = f"{spec['area']}.{spec['name']}", spec["help"]
    if spec["kind"] == "choice":
        return gr.Dropdown(choices=spec["choices"], value=spec["value"], label=label, info=info)
    if spec["kind"] in ("int", "float"):
        return gr.Number(value=spec["value"], label=label, info=info,
                         precision=0 if spec["kind"] == "int" else None)
    return gr.Textbox(value=str(spec["value"]), label=label, info=info,
                      lines=3 if spec["kind"] == "str" else 1)


def _data_tab() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["counts"] = gr.Markdown()
        c["refresh"] = gr.Button("Refresh", scale=0)
    c["votes"] = gr.Dataframe(label="Recent votes", interactive=False, wrap=True)
    with gr.Row():
        for fmt, label in (("dpo", "DPO JSONL"), ("kto", "KTO JSONL"), ("votes", "Votes CSV"),
                           ("audit", "Audit log JSONL")):
            c[f"export_{fmt}"] = gr.Button(f"Export {label}")
        c["export_adapter"] = gr.Button("Serving adapter (.zip)")
        c["export_merged"] = gr.Button("Serving model, merged (.zip)")
    c["file"] = gr.File(label="Download", interactive=False)
    with gr.Row():
        c["upload"] = gr.File(label="Prompts file (.txt one per line, .jsonl, .csv)",
                              file_types=[".txt", ".jsonl", ".csv"], type="filepath")
        c["import_btn"] = gr.Button("Import prompts")
    c["import_msg"] = gr.Markdown()
    return c


def build_ui(service: Any, app_cfg: AppConfig) -> gr.Blocks:
    """The whole app as a gr.Blocks (not launched)."""
    h = Handlers(service, app_cfg)
    guidelines = load_guidelines(app_cfg.guidelines_file)
    from app import views

    specs = views.settings_specs(service.settings(), help_table())
    with gr.Blocks(title="LiveDPO") as demo:
        gr.Markdown("## LiveDPO: pick the better answer; the model learns from your votes")
        top: dict[str, Any] = {"banner": gr.Markdown(elem_id="ldpo-banner"),
                               "who": gr.Markdown(elem_id="ldpo-who"),
                               "state": gr.State(None), "timer": gr.Timer(POLL_S),
                               "shown_id": gr.Number(visible=False)}
        with gr.Tab("Annotate", id="annotate") as top["ann_tab"]:
            a = _annotate_tab(h, guidelines)
        with gr.Tab("Train", id="train", visible=False) as top["train_tab"]:
            t = _train_tab(h, specs)
        with gr.Tab("Leaderboard", id="leaderboard") as top["board_tab"]:
            gr.Markdown(LEADERBOARD_NOTE)
            top["board"] = gr.Dataframe(interactive=False, wrap=True)
            top["board_btn"] = gr.Button("Refresh")
        with gr.Tab("Data", id="data", visible=False) as top["data_tab"]:
            d = _data_tab()
        with gr.Tab("Team", id="team", visible=False) as top["team_tab"]:
            top["team_md"] = gr.Markdown(elem_id="ldpo-team")
            top["team_people"] = gr.Dataframe(label="Annotators", interactive=False)
            top["team_pairs"] = gr.Dataframe(label="Pairs of annotators", interactive=False,
                                             elem_id="team-pairs")
            top["team_btn"] = gr.Button("Refresh")
            gr.Markdown("#### Disputed pairs\nPairs whose annotators disagree. Until you "
                        "decide one, training follows `--disagreement` (drop: not "
                        "trained on); your decision is its label for training and export.")
            top["disputes"] = gr.Dataframe(label="Waiting for a decision", interactive=False,
                                           wrap=True)
            with gr.Row():
                top["dispute_id"] = gr.Number(label="Pair", precision=0, elem_id="team-pair")
                top["dispute_label"] = gr.Radio(list(ADJUDICATION_CHOICES), label="Label",
                                                elem_id="team-label")
                top["dispute_btn"] = gr.Button("Decide", elem_id="team-decide")
            top["dispute_msg"] = gr.Markdown(elem_id="team-msg")
            gr.Markdown("#### Users\nChanges apply at once: a disabled user's next request "
                        "is refused.")
            top["users"] = gr.Dataframe(interactive=False, elem_id="team-users")
            with gr.Row():
                top["user_name"] = gr.Textbox(label="User name", elem_id="user-name")
                top["user_password"] = gr.Textbox(label="Password (add, reset)",
                                                  type="password", elem_id="user-password")
                top["user_role"] = gr.Radio(["annotator", "admin"], value="annotator",
                                            label="Role", elem_id="user-role")
            with gr.Row():
                for action, label in (("add", "Add user"), ("role", "Set role"),
                                      ("disable", "Disable"), ("enable", "Enable"),
                                      ("reset", "Reset password")):
                    top[f"user_{action}"] = gr.Button(label, elem_id=f"user-{action}")
            top["user_msg"] = gr.Markdown(elem_id="user-msg")
        register_api(h)
        _wire(demo, h, specs, a, t, d, top)
    demo.queue(default_concurrency_limit=8)
    return demo


def _wire(demo: gr.Blocks, h: Handlers, specs: list[dict], a: dict, t: dict, d: dict,
          ns: dict) -> None:
    """Connect the events (all hidden from the API)."""
    state, timer, banner, who = ns["state"], ns["timer"], ns["banner"], ns["who"]
    outs = [state, a["prompt"], a["response_a"], a["response_b"], a["reveal"], a["progress"],
            a["better"], a["pair_box"], a["rank_box"], *(a[n] for n in RANK_ANSWERS),
            a["rank_best"], a["rank_worst"], banner, timer, ns["shown_id"]]
    demo.load(h.on_load, None, [*outs, who, ns["train_tab"], ns["data_tab"], ns["team_tab"]],
              **PRIVATE)
    demo.load(None, js=SHORTCUTS_JS)
    timer.tick(h.poll, [state], outs, **QUIET)
    for _, choice, _, _ in VOTE_BUTTONS:
        a[f"btn_{choice}"].click(_voter(h, choice), [a["better"], ns["shown_id"], state], outs,
                                 show_progress="minimal", **PRIVATE)
    for btn in (a["btn_skip"], a["rank_skip"]):
        btn.click(h.skip, [state], outs, show_progress="minimal", **PRIVATE)
    a["undo"].click(h.undo, [state], outs, show_progress="minimal", **PRIVATE)
    for _, choice, _, _ in RANK_BUTTONS:
        a[f"rank_{choice}"].click(_ranker(h, choice), [a["rank_best"], a["rank_worst"],
                                                       ns["shown_id"], state], outs,
                                  show_progress="minimal", **PRIVATE)
    for trigger in (a["ask_btn"].click, a["ask_box"].submit):
        trigger(h.ask, [a["ask_box"], state], [*outs, a["ask_box"]], concurrency_limit=2,
                **PRIVATE)
    # Train tab: live refresh only while it is open.
    live = [t["status"], t["bar"], t["loss"], t["acc"], t["margins"], t["heldout"],
            t["arena"], t["rounds"]]
    train_timer = gr.Timer(TRAIN_REFRESH_S, active=False)

    def forms(request: gr.Request) -> tuple:
        return h.train_forms(specs, request)

    def save(request: gr.Request, *values: Any) -> str:
        changed = h.save_settings(specs, list(values), request)
        return ("Saved: " + "; ".join(f"{ar}.{k}={v}" for ar, f in changed.items()
                                      for k, v in f.items())) if changed else "No changes."

    ns["train_tab"].select(lambda: gr.Timer(active=True), None, train_timer, **PRIVATE).then(
        h.train_live, None, live, **PRIVATE).then(forms, None, [t["rollback_dd"], *t["fields"]],
                                                  **PRIVATE)
    for tab in (ns["ann_tab"], ns["board_tab"], ns["data_tab"], ns["team_tab"]):
        tab.select(lambda: gr.Timer(active=False), None, train_timer, **PRIVATE)
    train_timer.tick(h.train_live, None, live, **QUIET)
    t["train_btn"].click(h.train_now, None, t["msg"], **PRIVATE)
    t["rollback_btn"].click(h.rollback, [t["rollback_dd"]], t["msg"], **PRIVATE).success(
        forms, None, [t["rollback_dd"], *t["fields"]], **PRIVATE)
    t["save_btn"].click(save, t["fields"], t["msg"], **PRIVATE).success(
        forms, None, [t["rollback_dd"], *t["fields"]], **PRIVATE)
    # Leaderboard and data.
    for trigger in (ns["board_tab"].select, ns["board_btn"].click):
        trigger(h.leaderboard, None, ns["board"], **PRIVATE)
    team = [ns["team_md"], ns["team_people"], ns["team_pairs"], ns["disputes"]]
    for trigger in (ns["team_tab"].select, ns["team_btn"].click):
        trigger(h.team_view, None, team, **PRIVATE).then(h.users_view, None, ns["users"],
                                                          **PRIVATE)
    for action in USER_ACTIONS:
        ns[f"user_{action}"].click(
            _user_action(h, action), [ns["user_name"], ns["user_password"], ns["user_role"]],
            ns["user_msg"], **PRIVATE).success(h.users_view, None, ns["users"], **PRIVATE)
    ns["dispute_btn"].click(h.adjudicate, [ns["dispute_id"], ns["dispute_label"]],
                            ns["dispute_msg"], **PRIVATE).success(h.team_view, None, team,
                                                                   **PRIVATE)
    for trigger in (ns["data_tab"].select, d["refresh"].click):
        trigger(h.data_view, None, [d["counts"], d["votes"]], **PRIVATE)
    for fmt in ("dpo", "kto", "votes", "audit"):
        d[f"export_{fmt}"].click(_exporter(h, fmt), None, d["file"], **PRIVATE)
    d["export_adapter"].click(h.download_adapter, None, d["file"], **PRIVATE)
    d["export_merged"].click(h.download_merged, None, d["file"], **PRIVATE)
    d["import_btn"].click(h.import_prompts, [d["upload"]], d["import_msg"], **PRIVATE).success(
        h.data_view, None, [d["counts"], d["votes"]], **PRIVATE)


def _user_action(h: Handlers, action: str):
    def user_action(name: str, password: str, role: str, request: gr.Request) -> str:
        return h.user_action(action, name, password, role, request)

    return user_action


def _voter(h: Handlers, choice: str):
    def vote(better: str, shown_id: float | None, state: dict | None,
             request: gr.Request) -> tuple:
        return h.vote(choice, better, shown_id, state, request)
    return vote


def _ranker(h: Handlers, choice: str):
    def vote(best: str | None, worst: str | None, shown_id: float | None,
             state: dict | None, request: gr.Request) -> tuple:
        return h.vote_rank(choice, best, worst, shown_id, state, request)
    return vote


def _exporter(h: Handlers, fmt: str):
    def export(request: gr.Request) -> str:
        return h.export(fmt, request)
    return export


MAX_UPLOAD = "200mb"  # per uploaded file (Gradio refuses larger ones before they land)


def launch(service: Any, app_cfg: AppConfig, **kwargs: Any) -> gr.Blocks:
    """Build and launch the app (returns the Blocks); logins from ``app_cfg.auth_file``.

    Blocks until the server stops unless ``prevent_thread_lock=True`` (tests); extra
    keyword arguments go to ``gr.Blocks.launch``.
    """
    demo = build_ui(service, app_cfg)
    auth = None
    if app_cfg.auth_file:
        load_users(app_cfg.auth_file)  # a missing or corrupt file fails now, clearly
        auth = login_checker(app_cfg.auth_file)
    from starlette.middleware import Middleware

    options = {"server_name": app_cfg.host, "server_port": app_cfg.port, "auth": auth,
               "app_kwargs": {"middleware": [Middleware(ClientAddress)]},
               "auth_message": "LiveDPO: log in with the account an admin created for you.",
               "css": CSS, "theme": THEME, "max_file_size": MAX_UPLOAD, **kwargs}
    demo.launch(**options)
    return demo
