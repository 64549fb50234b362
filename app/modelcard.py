"""The model card (README.md) of an exported model: where it came from and how it did.

``card_facts`` gathers what the data dir knows about one adapter version (its lineage
back to base, the votes and rounds behind it, its arena record against base, the
settings it was trained with); ``render_card`` turns those facts into Markdown. The
card states facts only: a version without arena votes says so rather than showing a
rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.leaderboard import wilson_interval

_SETTINGS = ("method", "loss", "beta", "reference", "lr", "epochs", "window",
             "votes_per_round", "length_alpha", "answer_span", "end_anchor",
             "empty_guard", "sft_weight", "credit_weight", "credit_alpha", "credit_similarity",
             "uncredited_weight",
             "label_smoothing")


def lineage(store, version: str) -> list[str]:
    """``version``, its parent, ... back to base (newest first)."""
    chain, seen = [version], {version}
    row = store.get_adapter(version)
    while row and row.get("parent_version") and row["parent_version"] not in seen:
        parent = row["parent_version"]
        chain.append(parent)
        seen.add(parent)
        row = store.get_adapter(parent)
    if chain[-1] != "base":
        chain.append("base")
    return chain


def card_facts(store, version: str, model: str) -> dict[str, Any]:
    """Everything the card states about ``version`` (its row, its metadata.json)."""
    row = store.get_adapter(version) or {}
    meta_file = Path(row.get("path") or "") / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    counts = meta.get("counts") or {}
    max_vote = counts.get("max_vote_id")
    votes = (store.query("select count(*) as n from votes where id <= ?", [max_vote])[0]["n"]
             if max_vote is not None else None)
    chain = lineage(store, version)
    rnd = store.get_round(row["round_id"]) if row.get("round_id") else None
    settings = {k: (rnd or {}).get("config", {}).get(k, meta.get(k)) for k in _SETTINGS}
    arena = next((a for a in store.arena_results()
                  if a["version"] == version and a["opponent"] == "base"), None)
    return {"version": version, "model": model, "lineage": chain,
            "rounds": len([v for v in chain if v != "base"]), "round_id": row.get("round_id"),
            "votes": votes, "train_pairs": counts.get("train"),
            "heldout_pairs": counts.get("heldout"), "arena": arena,
            "settings": {k: v for k, v in settings.items() if v is not None},
            "created": row.get("created")}


def render_card(f: dict[str, Any]) -> str:
    """Markdown for a model card from ``card_facts``' output."""
    lines = [f"# {Path(str(f['model'])).name} + LiveDPO {f['version']}", "",
             f"A standalone checkpoint: base model `{f['model']}` with the LoRA adapter "
             f"version {f['version']}, trained live with DPO on human votes by LiveDPO, "
             "merged into its weights. Load it with "
             "`AutoModelForCausalLM.from_pretrained(DIR)`; the tokenizer (and its chat "
             "template, if the base has one) is included.", "",
             "| | |", "|---|---|",
             f"| base model | `{f['model']}` |",
             f"| version lineage | {' <- '.join(f['lineage'])} |",
             f"| accepted rounds in the lineage | {f['rounds']} |"]
    if f.get("votes") is not None:
        lines.append(f"| votes stored when this version was trained | {f['votes']} |")
    if f.get("train_pairs") is not None:
        lines.append(f"| training pairs (held out) of its round | {f['train_pairs']} "
                     f"({f.get('heldout_pairs') or 0}) |")
    a = f.get("arena")
    n = (a["wins"] + a["losses"] + a["ties"]) if a else 0
    if n:
        rate = (a["wins"] + 0.5 * a["ties"]) / n
        lo, hi = wilson_interval(a["wins"] + 0.5 * a["ties"], n)
        lines.append(f"| human win rate vs base (arena) | {rate:.0%} (95% CI {lo:.0%} - "
                     f"{hi:.0%}; {a['wins']} wins, {a['losses']} losses, {a['ties']} ties) |")
    else:
        lines.append("| human win rate vs base (arena) | no arena votes yet |")
    lines += ["", "## Training settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in f["settings"].items()]
    lines += ["", "DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290.", ""]
    return "\n".join(lines)
