"""Probe oracles: style preferences of the kind a person holds (each decides 10-40% of
the default model's base pairs), used only to check that the learning defaults carry
over to preferences nothing was tuned on. Plug one into the loop by its dotted path:

    python app.py simulate --oracle bench.probes:hedges   # or you, numbers, questions, parens, lists

Each prefers the answer with more of its kind (an empty answer loses) and carries
``measure`` (how many per answer), which ``simulate`` reports for serving and base:
words (hedges, you, numbers), or marks of form (questions: "?"; parens: "("; lists:
lines that open with a bullet or a number), which the credit test reads as words too.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from trainer.sim.oracles import _by_score, _empty_loses
from trainer.training.credit import words

HEDGES = frozenset("maybe might could perhaps possibly likely often usually generally may "
                   "sometimes probably".split())
SECOND_PERSON = frozenset("you your yours yourself yourselves".split())


LIST_LINE = re.compile(r"(?m)^\s*(?:[-*•]|\d+[.)])\s")


def more_of(name: str, rewarded: Callable[[str], bool],
            count: Callable[[str], int] | None = None):
    """An oracle preferring the answer with more words for which ``rewarded(word)``, or
    the larger ``count(answer)`` if given (``rewarded`` then names the words that make
    it up, for bench/credit.py's "on target")."""
    if count is None:
        def count(text: str) -> int:
            return sum(map(rewarded, words(text)))

    def oracle(prompt: str, a: str, b: str) -> str:
        return _empty_loses(a, b) or _by_score(count(a), count(b))
    oracle.__name__ = name
    oracle.rewarded = rewarded
    oracle.measure = (f"{name} per answer", count)
    return oracle


hedges = more_of("hedges", HEDGES.__contains__)
you = more_of("you", SECOND_PERSON.__contains__)
numbers = more_of("numbers", str.isdigit)
questions = more_of("questions", "?".__eq__)
parens = more_of("parens", "(".__eq__)
lists = more_of("lists", lambda w: w in ("-", "*", "•") or w.isdigit(),
                count=lambda text: len(LIST_LINE.findall(text)))
PROBES = {"hedges": hedges, "you": you, "numbers": numbers, "questions": questions,
          "parens": parens, "lists": lists}
