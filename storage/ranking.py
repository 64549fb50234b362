"""Rank-of-N votes as data: pure functions from rankings to the pairs they imply.

A rank vote marks the best and the worst of N answers to one prompt (or only one of
them, when the rest are equal). It is stored as *tiers* of answer indices, best first:
best 2 and worst 1 of four answers is ``[[2], [0, 3], [1]]`` (0 and 3 unordered between
them); best 2 alone is ``[[2], [0, 1, 3]]``. A tie ("all equally good")
or both-bad ("all bad") vote puts every answer in one tier: it orders nothing.

With several annotators on one set, each ordered pair of answers (i, j) is decided by
majority over the annotators' relations i > j, i < j or i = j (``storage.common.majority``);
an even split at the top decides nothing. The set's *extreme* pair is (best, worst) by
mean tier position: the pair DNO trains on (Rosset et al. 2024, arXiv 2404.03715,
Algorithm 2: the largest-margin pair of the N samples).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from storage.common import majority
from storage.errors import BadInput

RANK_CHOICES = ("rank", "tie", "both_bad")  # choice column of a rank vote
MIN_RANK, MAX_RANK = 3, 8  # answers per rank set

Tiers = list[list[int]]


def tiers_of(best: int | None, worst: int | None, n: int) -> Tiers:
    """[[best], [the others, in index order], [worst]] of ``n`` answers. Either mark may
    be None (best only: the rest are equal; worst only: likewise), not both. BadInput
    naming the values when they are not different answers of the set."""
    if best is None and worst is None:
        raise BadInput("mark the best or the worst answer (or both), or vote tie / both bad")
    for name, value in (("best", best), ("worst", worst)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value < n):
            raise BadInput(f"{name}={value!r}: mark one of the {n} answers (1..{n} on the "
                           f"page, 0..{n - 1} as an index)")
    if best == worst:
        raise BadInput(f"best and worst are both answer {best + 1}: mark two different "
                       "answers (or vote tie / both bad)")
    middle = [i for i in range(n) if i not in (best, worst)]
    return [*([[best]] if best is not None else []), middle,
            *([[worst]] if worst is not None else [])]


def check_tiers(tiers: object, n: int) -> Tiers:
    """``tiers`` if it orders each of the ``n`` answers exactly once, else BadInput."""
    if not isinstance(tiers, list) or not all(isinstance(t, list) and t for t in tiers):
        raise BadInput(f"ranking {tiers!r}: expected a list of non-empty lists of answer "
                       "indices, best first")
    flat = [i for t in tiers for i in t]
    if sorted(flat) != list(range(n)) or any(isinstance(i, bool) for i in flat):
        raise BadInput(f"ranking {tiers!r}: must name each of the answers 0..{n - 1} once")
    return tiers


def position(tiers: Tiers | None, n: int) -> list[float]:
    """Each answer's tier position scaled to [0, 1] (0 = best); all 0.5 without an order."""
    if not tiers or len(tiers) < 2:
        return [0.5] * n
    out = [0.5] * n
    for k, tier in enumerate(tiers):
        for i in tier:
            out[i] = k / (len(tiers) - 1)
    return out


def relation(tiers: Tiers | None, i: int, j: int) -> str:
    """'>' when answer i is ranked above j, '<' below, '=' in one tier (or no order)."""
    if not tiers:
        return "="
    where = {a: k for k, tier in enumerate(tiers) for a in tier}
    return "=" if where[i] == where[j] else ">" if where[i] < where[j] else "<"


def implied_pairs(rankings: Sequence[Tiers | None], n: int) -> list[dict]:
    """The ordered pairs the votes on one set imply: {chosen, rejected, agreement,
    extreme}, chosen above rejected by majority. ``rankings`` holds one entry per
    annotator (None for a tie or both-bad vote). ``extreme`` marks the (best, worst) pair
    by mean position, when the majority agrees on its direction."""
    if not rankings:
        return []
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            top, share = majority([relation(t, i, j) for t in rankings])
            if top in (">", "<"):
                c, r = (i, j) if top == ">" else (j, i)
                out.append({"chosen": c, "rejected": r, "agreement": share, "extreme": False})
    pos = [sum(p) / len(rankings) for p in zip(*(position(t, n) for t in rankings))]
    best = min(range(n), key=lambda i: (pos[i], i))
    worst = max(range(n), key=lambda i: (pos[i], -i))
    for row in out:
        row["extreme"] = (row["chosen"], row["rejected"]) == (best, worst)
    return sorted(out, key=lambda r: (not r["extreme"], r["chosen"], r["rejected"]))


def answer_labels(rankings: Sequence[tuple[str, Tiers | None]], n: int) -> list[bool | None]:
    """KTO labels of each answer by majority over annotators: ranked best or tie ->
    desirable, worst or both-bad -> undesirable, the middle -> no label."""
    per: list[list[str]] = [[] for _ in range(n)]
    for choice, tiers in rankings:
        for i in range(n):
            if choice == "tie":
                per[i].append("good")
            elif choice == "both_bad":
                per[i].append("bad")
            elif tiers:
                per[i].append("good" if i in tiers[0] else "bad" if i in tiers[-1] else "-")
    labels: list[bool | None] = []
    for votes in per:
        top, _ = majority(votes) if votes else (None, 0.0)
        labels.append(True if top == "good" else False if top == "bad" else None)
    return labels


def parse_answers(text: str | None) -> list[dict] | None:
    """The answers of a rank set from its JSON column (ids as tuples); None for a pair."""
    if text is None:
        return None
    return [{**a, "ids": None if a.get("ids") is None else tuple(a["ids"])}
            for a in json.loads(text)]
