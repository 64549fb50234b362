"""Did a draft get worse on the held-out votes? A paired test, not a threshold.

Each held-out pair is scored before and after training (1 if the implicit reward ranks
the annotator's choice first, 0 if not, 1/2 on a tie). The two scorings are of the SAME
pairs, so what carries evidence is the pairs whose verdict changed: under "the draft is
no worse", a changed pair is as likely to have changed for the better as for the worse.
That is McNemar's exact test, a one-sided sign test on the discordant pairs:

    p = P(X >= worse),  X ~ Binomial(worse + better, 1/2)

A round is rejected only when accuracy fell by more than the tolerance AND p < alpha.
With 6 held-out pairs, one or two flipped pairs (p = 0.5, 0.25) are noise; it takes
five of five (p = 0.031) to reject at alpha = 0.05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    worse: int  # held-out pairs scored lower after training
    better: int  # held-out pairs scored higher after training
    drop: float  # accuracy before - accuracy after
    p_value: float  # one-sided sign test on the changed pairs
    got_worse: bool


def sign_test_p(worse: int, better: int) -> float:
    """P(X >= worse) for X ~ Binomial(worse + better, 1/2); 1.0 when nothing changed."""
    n = worse + better
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2 ** n


def compare(before: list[float], after: list[float], tolerance: float,
            alpha: float) -> Verdict:
    """Paired verdict on held-out hits (1, 1/2 or 0 per pair, same pairs in the same order)."""
    if len(before) != len(after):
        raise ValueError(f"held-out scorings of {len(before)} and {len(after)} pairs: the "
                         "before and after scorings must be of the same pairs")
    worse = sum(a < b for b, a in zip(before, after))
    better = sum(a > b for b, a in zip(before, after))
    n = max(len(before), 1)
    drop = (sum(before) - sum(after)) / n
    p = sign_test_p(worse, better)
    return Verdict(worse, better, drop, p, drop > tolerance + 1e-9 and p < alpha)
