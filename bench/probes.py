"""Probe oracles: style preferences of the kind a person holds (each decides 10-40% of
the default model's base pairs), used only to check that the learning defaults carry
over to preferences nothing was tuned on. Plug one into the loop by its dotted path:

    python app.py simulate --oracle bench.probes:hedges      # or you, numbers

Each prefers the answer with more words of its kind (an empty answer loses) and carries
``measure`` (its words per answer), which ``simulate`` reports for serving and base.
"""

from __future__ import annotations

from collections.abc import Callable

from trainer.sim.oracles import _by_score, _empty_loses
from trainer.training.credit import words

HEDGES = frozenset("maybe might could perhaps possibly likely often usually generally may "
                   "sometimes probably".split())
SECOND_PERSON = frozenset("you your yours yourself yourselves".split())


def more_of(name: str, rewarded: Callable[[str], bool]):
    """An oracle preferring the answer with more words for which ``rewarded(word)``."""
    def count(text: str) -> int:
        return sum(map(rewarded, words(text)))

    def oracle(prompt: str, a: str, b: str) -> str:
        return _empty_loses(a, b) or _by_score(count(a), count(b))
    oracle.__name__ = name
    oracle.rewarded = rewarded
    oracle.measure = (f"{name} words per answer", count)
    return oracle


hedges = more_of("hedges", HEDGES.__contains__)
you = more_of("you", SECOND_PERSON.__contains__)
numbers = more_of("numbers", str.isdigit)
PROBES = {"hedges": hedges, "you": you, "numbers": numbers}
