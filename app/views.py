"""Pure formatting for the web UI: plain data in, Markdown / HTML / DataFrames out.

Nothing here touches the service, the store or Gradio, so every function is tested
as a plain function. Model outputs and prompts are untrusted: ``safe_markdown``
escapes raw HTML and neutralises script-like link schemes before Gradio renders them
(gr.Markdown sanitises too; this is the first of two layers, not the only one).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from storage import conversation
from storage.common import version_number

# Link schemes that run code or embed documents; a zero-width space breaks them.
_BAD_SCHEME = re.compile(r"(?i)\b(java|vb|live)(script)(?=\s*\\?\s*:)|\b(d)(ata)(?=\\?:\S)")
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_ZWSP = "\u200b"
# Longer texts are cut ON SCREEN only (the DB keeps every character). Gradio's Markdown
# renderer slows down sharply with size (its LaTeX block rule rescans the rest of the
# text at every paragraph): 1 MB of Markdown took from 6 s to minutes in Chromium.
MAX_DISPLAY_CHARS = 20_000
CHOICE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad",
                 "rank": "Ranked"}
STEP_SERIES = {"loss": ("loss",), "accuracy": ("rewards/accuracies",),
               "margins": ("rewards/chosen", "rewards/rejected", "rewards/margins")}


# --------------------------------------------------------------------------- untrusted text
def _escape_text(text: str) -> str:
    """Escape HTML (&, <, >), break javascript:/data: schemes, keep images from loading."""
    out = html.escape(text, quote=False)
    out = _BAD_SCHEME.sub(lambda m: (m.group(1) or m.group(3)) + _ZWSP
                          + (m.group(2) or m.group(4)), out)
    return out.replace("![", "!\\[")


def _fence_close(line: str, char: str, length: int) -> bool:
    m = _FENCE_OPEN.match(line)
    return bool(m and m.group(1)[0] == char and len(m.group(1)) >= length)


def safe_markdown(text: str | None, limit: int | None = None) -> str:
    """Markdown of untrusted ``text`` with raw HTML shown as text, never run.

    HTML is escaped outside fenced code blocks; inside them Markdown itself shows
    characters literally (so ``#include <stdio.h>`` stays readable). A fence counts as
    closed on any line that could close it, so this never treats more text as code than
    a Markdown renderer does. Text over ``limit`` characters is cut, with a note.
    """
    if not text:
        return ""
    cut = limit is not None and len(text) > limit
    out: list[str] = []
    fence: tuple[str, int] | None = None
    for line in (text[:limit] if cut else text).replace("\r\n", "\n").split("\n"):
        if fence:
            out.append(line)
            if _fence_close(line, *fence):
                fence = None
            continue
        m = _FENCE_OPEN.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            fence = (m.group(1)[0], len(m.group(1)))
            out.append(line[: m.start(2)] + _escape_text(m.group(2)))
            continue
        out.append(_escape_text(line))
    if cut:
        out += [fence[0] * fence[1]] if fence else []  # the note goes outside any code block
        out.append(f"\n*(Showing the first {limit:,} of {len(text):,} characters; the whole "
                   "text is stored.)*")
    return "\n".join(out)


# --------------------------------------------------------------------------- annotate tab
def pair_markdown(pair: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(prompt, response A, response B) as safe Markdown; a waiting note when no pair."""
    if not pair:
        return ("*Generating pairs… a new pair appears here as soon as the model has "
                "written one.*", "", "")
    a, b = (safe_markdown(pair.get(k), MAX_DISPLAY_CHARS) for k in ("response_a", "response_b"))
    return (f"**Prompt** (pair {int(pair['id'])})\n\n{prompt_markdown(pair)}",
            a or "*(empty)*", b or "*(empty)*")


def prompt_markdown(item: Mapping[str, Any]) -> str:
    """The turn the answers reply to, as safe Markdown; above it, collapsed, what the
    model saw before it: the system prompt it was sampled with and earlier turns."""
    text = str(item.get("prompt") or "")
    system = str((item.get("gen_config") or {}).get("system_prompt") or "")
    last = safe_markdown(conversation.last_user(text), MAX_DISPLAY_CHARS) if text else ""
    before = conversation.context(text, system) if text else []
    if not before:
        return last
    turns = len([m for m in before if m["role"] != "system"])
    what = [w for w, ok in (("system prompt", before[0]["role"] == "system"),
                            (f"{turns} earlier turn{'s' * (turns != 1)}", turns)) if ok]
    body = "\n\n".join(f"**{m['role'].capitalize()}:** "
                        + safe_markdown(m["content"], MAX_DISPLAY_CHARS) for m in before)
    return (f'<details class="ldpo-context"><summary>Conversation so far: '
            f"{' and '.join(what)}</summary>\n\n{body}\n\n</details>\n\n{last}")


def rank_markdown(item: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(prompt, one block per answer headed "Answer k") of a rank set, as safe Markdown."""
    prompt = prompt_markdown(item)
    answers = item.get("answers") or []
    blocks = [f"#### Answer {k + 1}\n\n"
              + (safe_markdown(a.get("text"), MAX_DISPLAY_CHARS) or "*(empty)*")
              for k, a in enumerate(answers)]
    return (f"**Prompt** (pair {int(item['id'])}: mark the best and the worst of "
            f"{len(answers)} answers)\n\n{prompt}", blocks)


def rank_reveal_markdown(reveal: Mapping[str, Any]) -> str:
    """What was behind a rank vote: each answer's version and implicit reward, and
    whether the reward's own best / worst matched the marks."""
    choice, best, worst = reveal.get("choice"), reveal.get("best"), reveal.get("worst")
    if choice == "rank":
        marks = ", ".join(f"{name} {v + 1}" for name, v in (("best", best), ("worst", worst))
                          if v is not None)
        head = f"**Your ranking of pair {reveal.get('pair_id')}: {marks}.**"
    else:
        head = (f"**Your vote on pair {reveal.get('pair_id')}: "
                f"{CHOICE_LABELS.get(choice, choice)}.**")
    versions, rewards = reveal.get("versions") or [], reveal.get("rewards") or []
    if reveal.get("arena"):
        sides = "Arena set: " + ", ".join(f"{k + 1} was `{v}`" for k, v in enumerate(versions))
    else:
        sides = f"All answers came from `{versions[0] if versions else '?'}`."
    if reveal.get("predicted_best") is None:
        guess = "The implicit reward made no prediction here."
    else:
        verdict = {True: "it **agrees** with you", False: "it **differs** from you",
                   None: "your vote ranked nothing, so it is not scored"}[
            reveal.get("prediction_correct")]
        guess = ("Implicit reward β·log π/π_ref: "
                 + ", ".join(f"{k + 1}: {_fmt_reward(r)}" for k, r in enumerate(rewards))
                 + f" → best {reveal['predicted_best'] + 1}, worst "
                 f"{reveal['predicted_worst'] + 1}; {verdict}.")
    return f"{head} {sides}\n\n{guess}"


def progress_bar_html(fraction: float | None, label: str) -> str:
    """A small HTML progress bar; ``label`` is escaped."""
    frac = min(max(float(fraction or 0.0), 0.0), 1.0)
    return (f'<div class="ldpo-bar" role="progressbar" aria-valuenow="{frac * 100:.0f}" '
            f'aria-valuemin="0" aria-valuemax="100"><div class="ldpo-fill" '
            f'style="width:{frac * 100:.1f}%"></div></div>'
            f'<div class="ldpo-bar-label">{html.escape(label)}</div>')


def banner_markdown(status: Mapping[str, Any], local_mode: bool) -> str:
    """Top-of-page note: local mode, model loading progress or a load failure."""
    lines = []
    if local_mode:
        lines.append("**Local single-user mode**: no login; you annotate as `local` with admin "
                     "rights. Start with `--auth-file FILE` to require accounts.")
    if status.get("load_error"):
        lines.append(f"**The model failed to load**: {html.escape(str(status['load_error']))}."
                     " Fix the cause (see the server log) and restart.")
    elif not status.get("ready"):
        snap = status.get("loading") or {}
        lines.append(f"**Loading the model**: {html.escape(str(snap.get('desc') or 'starting'))}"
                     f" ({float(snap.get('fraction') or 0):.0%}, {snap.get('elapsed_s', 0)} s). "
                     "The first start converts the default model (about a minute); queued "
                     "pairs can be judged meanwhile.")
    return "\n\n".join(lines)


def _fmt_reward(r: float | None) -> str:
    return "n/a" if r is None else f"{r:+.3f}"


def reveal_markdown(reveal: Mapping[str, Any]) -> str:
    """What was behind the vote: versions per side and the implicit reward's prediction."""
    choice = reveal.get("choice")
    va, vb = reveal.get("version_a"), reveal.get("version_b")
    head = f"**Your vote on pair {reveal.get('pair_id')}: {CHOICE_LABELS.get(choice, choice)}.**"
    if reveal.get("arena"):
        sides = f"Arena pair: **A was `{va}`**, **B was `{vb}`**."
    else:
        sides = f"Both answers came from `{va}`."
    ra, rb, pred = reveal.get("reward_a"), reveal.get("reward_b"), reveal.get("predicted")
    if pred is None:
        why = ("both sides come from different versions" if reveal.get("arena") else
               "the serving policy equals the reference, so both rewards are 0"
               if ra is None else "the rewards are equal")
        guess = f"The implicit reward made no prediction here ({why})."
    else:
        verdict = {True: "it **agrees** with you", False: "it **disagrees** with you",
                   None: "your vote was not A or B, so it is not scored"}[
            reveal.get("prediction_correct")]
        guess = (f"Implicit reward β·log π/π_ref: A {_fmt_reward(ra)}, B {_fmt_reward(rb)} → "
                 f"the model predicted **{pred.upper()}**; {verdict}.")
    return f"{head} {sides}\n\n{guess}"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.0%}"


def progress_markdown(name: str, progress: Mapping[str, Any] | None, serving: str | None) -> str:
    """This annotator's counts and agreement with others, plus the serving version."""
    p = progress or {}
    agree = p.get("agreement")
    n_agree = p.get("agreement_n", p.get("overlap_votes"))
    agree_txt = ("n/a (no pair judged by others yet)" if agree is None else
                 f"{_pct(agree)}" + (f" of {n_agree} shared pairs" if n_agree else ""))
    return (f"**{html.escape(name)}**: {p.get('today', p.get('votes_today', 0))} votes today, "
            f"{p.get('total', p.get('votes_total', 0))} in total · agreement with others: "
            f"{agree_txt} · serving `{serving or 'base'}`")


# --------------------------------------------------------------------------- train tab
def trainer_markdown(status: Mapping[str, Any]) -> tuple[str, float, str]:
    """(Markdown summary, progress fraction, progress label) of the trainer."""
    t = status.get("trainer") or {}
    prog = t.get("progress") or {}
    state = t.get("state", "idle")
    settings = status.get("settings") or {}
    pool, train = settings.get("pool") or {}, settings.get("train") or {}
    voting = (f"rank-of-{pool.get('rank_size')} (best / worst)"
              if pool.get("vote_mode") == "rank" else "A/B pairs")
    lines = [f"**Serving**: `{status.get('serving_adapter', 'base')}` · **trainer**: {state}"
             + (f" · **voting**: {voting}, **method**: {train.get('method', 'dpo')}"
                if pool else "")]
    if state != "training" and t.get("votes_needed") is not None:
        lines.append(f"{t['votes_needed']} more usable vote(s) start the next round "
                     "(or press *Train now*).")
    last = t.get("last_round")
    if last:
        lines.append(f"Last round {last.get('id')}: {last.get('status')}"
                     + (f" → `{last['version']}`" if last.get("version") else ""))
    if t.get("last_error"):
        lines.append(f"**Last error**: {html.escape(str(t['last_error']))}")
    label = (f"{prog.get('desc') or state}: {prog.get('done', 0):g}/{prog.get('total', 0):g}"
             if prog.get("total") else str(prog.get("desc") or state))
    return "\n\n".join(lines), float(prog.get("fraction") or 0.0), label


def steps_frames(rows: Iterable[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """Long-format frames (step, value, series, round) for the loss/accuracy/margin plots.

    ``step`` runs on across rounds (ordered by round, then step) so the plots read as
    one training history; ``series`` is the metric name (loss: one series per round).
    """
    rows = sorted(rows, key=lambda r: (r.get("round_id") or 0, r.get("step") or 0))
    out: dict[str, list[dict]] = {k: [] for k in STEP_SERIES}
    for i, r in enumerate(rows, start=1):
        metrics = r.get("metrics") or {}
        for plot, keys in STEP_SERIES.items():
            for k in keys:
                v = metrics.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    series = f"round {r.get('round_id')}" if plot == "loss" else k
                    out[plot].append({"step": i, "value": float(v), "series": series,
                                      "round": r.get("round_id")})
    cols = ["step", "value", "series", "round"]
    return {k: pd.DataFrame(v, columns=cols) for k, v in out.items()}


def heldout_of(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    """A round's held-out accuracy (``key``: heldout_before / heldout_after), or None."""
    v = ((metrics or {}).get(key) or {}).get("accuracy")
    return float(v) if isinstance(v, (int, float)) else None


def heldout_frame(rounds: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Held-out implicit-reward accuracy after each round, oldest first.

    ``label`` is the version a round produced, or "r<id> (<status>)" for rounds that
    were rejected; ``before`` is the accuracy of the version it started from.
    """
    data = []
    for r in sorted(rounds, key=lambda r: r.get("id") or 0):
        after = heldout_of(r.get("metrics"), "heldout_after")
        if after is None:
            continue
        label = r.get("adapter_version") or f"r{r.get('id')} ({r.get('status')})"
        data.append({"label": label, "accuracy": after,
                     "before": heldout_of(r.get("metrics"), "heldout_before"),
                     "round": r.get("id"), "status": r.get("status")})
    return pd.DataFrame(data, columns=["label", "accuracy", "before", "round", "status"])


def _healthy(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    v = ((metrics or {}).get(key) or {}).get("healthy")
    return float(v) if isinstance(v, (int, float)) else None


def rounds_frame(rounds: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per round: status, result version, data counts, accuracy, answer health
    (share of sampled answers that ended by themselves: serving -> draft), error."""
    data = []
    for r in rounds:
        m, c = r.get("metrics") or {}, r.get("counts") or {}
        data.append({"round": r.get("id"), "status": r.get("status"),
                     "trigger": r.get("trigger"), "version": r.get("adapter_version") or "",
                     "train": c.get("train"), "held out": c.get("heldout"),
                     "acc before": heldout_of(m, "heldout_before"),
                     "acc after": heldout_of(m, "heldout_after"),
                     "ended before": _healthy(m, "health_before"),
                     "ended after": _healthy(m, "health_after"),
                     "steps": m.get("steps"), "seconds": m.get("train_seconds"),
                     "credited words": credited_words(c.get("credited")),
                     "error": r.get("error") or ""})
    return pd.DataFrame(data, columns=["round", "status", "trigger", "version", "train",
                                       "held out", "acc before", "acc after",
                                       "ended before", "ended after", "steps", "seconds",
                                       "credited words", "error"])


def credited_words(credits: Iterable[Mapping[str, Any]] | None) -> str:
    """A round's credited words (``--credit-weight``): 'because (9:0), -sorry (0:6)'."""
    return ", ".join(f"{'' if c.get('favoured') else '-'}{c.get('word')} "
                     f"({c.get('chosen_only')}:{c.get('rejected_only')})"
                     for c in credits or [])


# --------------------------------------------------------------------------- data tab
def counts_markdown(counts: Mapping[str, Any]) -> str:
    """A two-column Markdown table of the store's counts."""
    rows = "\n".join(f"| {html.escape(str(k))} | {v} |" for k, v in counts.items())
    return "| what | count |\n|---|---|\n" + rows


def votes_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Recent votes as a table (text columns cut to 80 characters)."""
    data = []
    for r in rows:
        row = {}
        for k, v in r.items():
            if isinstance(v, (dict, list)):
                continue
            row[k] = v[:80] + "…" if isinstance(v, str) and len(v) > 80 else v
        data.append(row)
    return pd.DataFrame(data)


def version_choices(adapters: Iterable[Mapping[str, Any]]) -> list[str]:
    """'base' plus every accepted (ready) version, newest first."""
    ready = [str(a["version"]) for a in adapters if a.get("status") == "ready"]
    return ["base", *sorted(ready, key=version_number, reverse=True)]


# --------------------------------------------------------------------------- settings form
def settings_specs(settings: Mapping[str, Mapping[str, Any]],
                   help_of: Mapping[str, Mapping[str, tuple[str, tuple | None]]]
                   ) -> list[dict[str, Any]]:
    """One form field per editable setting: area, name, kind, value, choices, help.

    ``settings`` is ``service.settings()``; ``help_of[area][name]`` is (help, choices)
    from the config dataclasses, so the form documents each field where it is defined.
    """
    specs = []
    for area, fields in settings.items():
        for name, value in fields.items():
            help_text, choices = help_of.get(area, {}).get(name, ("", None))
            kind = "choice" if choices else type(value).__name__
            specs.append({"area": area, "name": name, "kind": kind, "value": value,
                          "choices": list(choices) if choices else None, "help": help_text})
    return specs


def settings_changes(specs: list[dict[str, Any]], values: list[Any],
                     current: Mapping[str, Mapping[str, Any]]
                     ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({area: {field: value}} of the fields that differ from ``current``, problems).

    Catches what the form itself can get wrong (an empty number, a fraction in an
    integer field); range checks stay with the config classes (service.update_settings).
    """
    changes: dict[str, dict[str, Any]] = {}
    problems = []
    for spec, value in zip(specs, values):
        area, name, kind = spec["area"], spec["name"], spec["kind"]
        label = f"{area}.{name}"
        if kind == "str":  # free text (the system prompt): empty is a value
            value = (value or "").strip()
        elif value is None or (isinstance(value, str) and not value.strip()):
            problems.append(f"{label} is empty: enter a value (it was {spec['value']!r})")
            continue
        if kind == "int":
            if float(value) != int(float(value)):
                problems.append(f"{label}={value}: must be a whole number")
                continue
            value = int(float(value))
        elif kind == "float":
            value = float(value)
        if value != current.get(area, {}).get(name):
            changes.setdefault(area, {})[name] = value
    return changes, problems
