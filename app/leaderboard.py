"""The leaderboard: human win rate of each adapter version in arena votes, with a 95%
Wilson interval (pure formatting: plain data in, DataFrames out)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from app.views import heldout_of
from storage.common import version_number


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (successes may be fractional: ties = ½)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def leaderboard_frame(arena: Iterable[Mapping[str, Any]],
                      adapters: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Every adapter version: human win rate vs its arena opponent with a 95% Wilson CI.

    Win rate = (wins + ½ ties) / (wins + losses + ties). "Both bad" votes carry no
    preference between the two sides, so they are left out of the rate (and counted in
    their own column). Versions without arena votes show an empty rate.
    """
    by_version: dict[str, list[Mapping[str, Any]]] = {}
    for row in arena:
        by_version.setdefault(str(row.get("version")), []).append(row)
    data = []
    for a in sorted(adapters, key=lambda a: version_number(a.get("version", ""))):
        version = str(a.get("version"))
        rows = by_version.pop(version, None) or [{"opponent": "base"}]
        for row in rows:
            data.append(_leader_row(version, row, a))
    for version, rows in by_version.items():  # arena rows of versions not listed
        data.extend(_leader_row(version, row, {}) for row in rows)
    cols = ["version", "status", "opponent", "win rate", "95% CI", "wins", "losses", "ties",
            "both bad", "votes", "held-out acc"]
    return pd.DataFrame(data, columns=cols)


def _leader_row(version: str, row: Mapping[str, Any], adapter: Mapping[str, Any]) -> dict:
    w, lo, t = (int(row.get(k) or 0) for k in ("wins", "losses", "ties"))
    n = w + lo + t
    rate, ci = None, ""
    if n:
        rate = (w + 0.5 * t) / n
        low, high = wilson_interval(w + 0.5 * t, n)
        ci = f"{low:.0%} – {high:.0%}"
    return {"version": version, "status": adapter.get("status", ""),
            "opponent": row.get("opponent") or "base",
            "win rate": None if rate is None else round(rate, 3), "95% CI": ci,
            "wins": w, "losses": lo, "ties": t, "both bad": int(row.get("both_bad") or 0),
            "votes": int(row.get("n") or n + int(row.get("both_bad") or 0)),
            "held-out acc": heldout_of(adapter.get("metrics"), "heldout_after")}


def arena_plot_frame(board: pd.DataFrame) -> pd.DataFrame:
    """Win rate per version (oldest first) from ``leaderboard_frame``'s output."""
    rows = board.dropna(subset=["win rate"])
    return pd.DataFrame({"version": rows["version"].astype(str),
                         "win rate": rows["win rate"].astype(float),
                         "opponent": rows["opponent"].astype(str)}).reset_index(drop=True)
