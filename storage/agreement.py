"""How far annotators agree: pure statistics over A/B votes on pairs judged more than once.

Labels are the vote choices (a, b, tie, both_bad), nominal. For each pair of annotators,
Cohen's kappa on the pairs both judged (Cohen 1960); for the team, Krippendorff's alpha
(nominal), which allows any number of annotators per pair (Krippendorff 2011,
"Computing Krippendorff's Alpha-Reliability"); each with a bootstrap 95% interval over
pairs (resampling pairs, seeded) and the number of pairs behind it. Per annotator: their
votes, median decision time, tie / both-bad / skip rates, and agreement with the majority
of the OTHER annotators on the pairs they shared (so an annotator's own vote never counts
for them). An annotator far below the rest is flagged.

Rank votes are not included (their agreement is on orders, not on one label).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import combinations

LABELS = ("a", "b", "tie", "both_bad")
BOOTSTRAP = 500  # resamples per interval: a team of 10 has 45 annotator pairs
FLAG_BELOW = 0.20  # agreement with the others this far below the team's median
FLAG_MIN_ITEMS = 10  # ... on at least this many shared pairs

Items = dict[int, dict[str, str]]  # pair id -> {annotator: label}


def items_of(votes: Iterable[Mapping]) -> Items:
    """Pairs judged by two or more annotators: {pair_id: {annotator: choice}}."""
    by_pair: Items = defaultdict(dict)
    for v in votes:
        if v["choice"] in LABELS:
            by_pair[int(v["pair_id"])][str(v["annotator"])] = v["choice"]
    return {p: labels for p, labels in by_pair.items() if len(labels) >= 2}


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e).
    None without items; 1.0 when both always use one and the same label."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(x == y for x, y in pairs) / n
    first, second = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    expected = sum(first[k] * second[k] for k in first) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha(items: Sequence[Mapping[str, str]]) -> float | None:
    """Krippendorff's alpha for nominal labels, any number of raters per item:
    1 - D_o / D_e over the coincidence matrix of pairable values. None when fewer than
    two pairable values exist; 1.0 when every value is the same label."""
    coincidence: Counter = Counter()
    for labels in items:
        values = list(labels.values())
        m = len(values)
        if m < 2:
            continue
        for i, j in combinations(range(m), 2):
            coincidence[(values[i], values[j])] += 1 / (m - 1)
            coincidence[(values[j], values[i])] += 1 / (m - 1)
    totals: Counter = Counter()
    for (c, _), w in coincidence.items():
        totals[c] += w
    n = sum(totals.values())
    if n <= 1:
        return None
    disagree_obs = sum(w for (c, k), w in coincidence.items() if c != k) / n
    disagree_exp = sum(totals[c] * totals[k] for c in totals for k in totals
                       if c != k) / (n * (n - 1))
    if disagree_exp == 0:
        return 1.0
    return 1.0 - disagree_obs / disagree_exp


def bootstrap_ci(items: Sequence, stat: Callable[[Sequence], float | None],
                 reps: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of ``stat`` over ``reps`` resamples of ``items``."""
    if len(items) < 2:
        return None
    rng = random.Random(seed)
    values = sorted(v for v in (stat([rng.choice(items) for _ in items])
                                for _ in range(reps)) if v is not None)
    if not values:
        return None
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def _majority_of_others(labels: Mapping[str, str], me: str) -> str | None:
    counts = Counter(v for who, v in labels.items() if who != me).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def per_annotator(votes: Sequence[Mapping], skips: Mapping[str, int],
                  items: Items) -> list[dict]:
    """One row per annotator: votes, median decision ms, tie / both-bad / skip rates,
    agreement with the others' majority on shared pairs (and on how many), flag."""
    mine: dict[str, list[Mapping]] = defaultdict(list)
    for v in votes:
        mine[str(v["annotator"])].append(v)
    rows = []
    for who in sorted(set(mine) | set(skips)):
        vs = mine.get(who, [])
        ms = [v["decide_ms"] for v in vs if v.get("decide_ms") is not None]
        shared = [(labels[who], _majority_of_others(labels, who))
                  for labels in items.values() if who in labels]
        judged = [(x, m) for x, m in shared if m is not None]
        seen = len(vs) + skips.get(who, 0)
        rows.append({
            "annotator": who, "votes": len(vs),
            "median_decide_ms": statistics.median(ms) if ms else None,
            "tie_rate": sum(v["choice"] == "tie" for v in vs) / len(vs) if vs else None,
            "both_bad_rate": (sum(v["choice"] == "both_bad" for v in vs) / len(vs)
                              if vs else None),
            "skip_rate": skips.get(who, 0) / seen if seen else None,
            "shared_pairs": len(judged),
            "agreement": sum(x == m for x, m in judged) / len(judged) if judged else None})
    rated = [r["agreement"] for r in rows if r["agreement"] is not None
             and r["shared_pairs"] >= FLAG_MIN_ITEMS]
    median = statistics.median(rated) if rated else None
    for r in rows:
        r["flagged"] = bool(median is not None and r["agreement"] is not None
                            and r["shared_pairs"] >= FLAG_MIN_ITEMS
                            and r["agreement"] < median - FLAG_BELOW)
    return rows


def pairwise_kappas(items: Items, seed: int = 0) -> list[dict]:
    """Cohen's kappa for every two annotators who judged the same pairs."""
    together: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for labels in items.values():
        for x, y in combinations(sorted(labels), 2):
            together[(x, y)].append((labels[x], labels[y]))
    return [{"annotators": [x, y], "kappa": cohen_kappa(pairs), "n": len(pairs),
             "ci95": bootstrap_ci(pairs, cohen_kappa, seed=seed)}
            for (x, y), pairs in sorted(together.items())]


def summary(votes: Sequence[Mapping], skips: Mapping[str, int], seed: int = 0) -> dict:
    """Everything the Team tab and ``status --json`` show under ``agreement``."""
    ab = [v for v in votes if v["choice"] in LABELS]
    items = items_of(ab)
    values = list(items.values())
    return {"overlapped_pairs": len(items),
            "krippendorff_alpha": {"value": krippendorff_alpha(values), "n": len(values),
                                   "ci95": bootstrap_ci(values, krippendorff_alpha,
                                                        seed=seed)},
            "pairwise_kappa": pairwise_kappas(items, seed),
            "annotators": per_annotator(ab, skips, items)}
