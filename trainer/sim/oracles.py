"""Scripted annotators for ``app.py simulate``: programmatic preferences.

An oracle is any callable ``oracle(prompt, a, b) -> 'a' | 'b' | 'tie' | 'both_bad'``.
Ship-with-the-project oracles are looked up by name; any importable callable can be
plugged in by dotted path, ``--oracle mypkg.mod:func``. An oracle may carry
``measure = (name, fn(answer) -> float)``, what it rewards per answer; ``simulate``
reports its mean for the serving adapter and for base.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable

from storage.common import CHOICES

Oracle = Callable[[str, str, str], str]

POSITIVE_WORDS = frozenset("""
good great excellent wonderful happy joy joyful love lovely kind helpful bright best
beautiful calm glad pleasant positive delight delightful fantastic amazing nice warm
friendly gentle hope hopeful success successful win smile fun enjoy enjoyable brilliant
""".split())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _by_score(score_a: float, score_b: float) -> str:
    return "a" if score_a > score_b else "b" if score_b > score_a else "tie"


def _empty_loses(a: str, b: str) -> str | None:
    """An empty answer is no answer: it loses to any other (both empty: both bad).

    Without this, 'prefer the shorter answer' rewards saying nothing, and the policy
    learns to stop at once. None: both answered.
    """
    empty_a, empty_b = not a.strip(), not b.strip()
    if empty_a and empty_b:
        return "both_bad"
    if empty_a != empty_b:
        return "b" if empty_a else "a"
    return None


def shorter(prompt: str, a: str, b: str) -> str:
    """Prefers the shorter answer (by characters); an empty answer always loses."""
    return _empty_loses(a, b) or _by_score(-len(a), -len(b))


def _positive_words(text: str) -> int:
    return sum(w in POSITIVE_WORDS for w in _words(text))


def positive(prompt: str, a: str, b: str) -> str:
    """Prefers the answer with more words from a positive-sentiment word list."""
    return _empty_loses(a, b) or _by_score(_positive_words(a), _positive_words(b))


# What an oracle rewards, per answer: simulate reports its mean for the serving adapter
# and for base, so a win rate can be read as "says the keyword more" or "is shorter".
shorter.measure = ("answer chars", len)
positive.measure = ("positive words per answer", _positive_words)

TIEBREAKS = ("shorter", "tie")


def keyword_oracle(keyword: str, tiebreak: str = "tie") -> Oracle:
    """Prefers answers that mention ``keyword``; both or neither: ``tiebreak``.

    Matched as a whole word or phrase, ignoring case and the spacing between a phrase's
    words: 'you' is not in 'young', 'thank you' is in 'Thank\nyou!'.
    ``tiebreak`` 'shorter': the shorter answer wins when the keyword does not decide;
    'tie': a tie (no pairwise training example), so only the keyword teaches.
    """
    if not keyword.strip():
        raise ValueError(f"--keyword {keyword!r} is empty: give the word the oracle should "
                         "prefer, e.g. --keyword because")
    if tiebreak not in TIEBREAKS:
        raise ValueError(f"--keyword-tiebreak {tiebreak!r}: use one of {', '.join(TIEBREAKS)}")
    word = " ".join(keyword.split())
    body = r"\s+".join(map(re.escape, word.split()))  # a phrase matches across any spacing
    pattern = re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)

    def prefers_keyword(prompt: str, a: str, b: str) -> str:
        if verdict := _empty_loses(a, b):
            return verdict
        has_a, has_b = bool(pattern.search(a)), bool(pattern.search(b))
        if has_a != has_b:
            return "a" if has_a else "b"
        return shorter(prompt, a, b) if tiebreak == "shorter" else "tie"

    prefers_keyword.measure = (f"share saying {word!r}",
                               lambda text: float(bool(pattern.search(text))))
    return prefers_keyword


def load_oracle(name: str, keyword: str = "because", tiebreak: str = "tie") -> Oracle:
    """A shipped oracle by name (shorter, keyword, positive) or 'module:function'."""
    if name == "shorter":
        return shorter
    if name == "positive":
        return positive
    if name == "keyword":
        return keyword_oracle(keyword, tiebreak)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--oracle {name!r}: cannot import it ({e}). Use 'shorter', "
                             "'keyword', 'positive' or 'package.module:function'.") from e
        if not callable(fn):
            raise ValueError(f"--oracle {name!r} is not callable")
        return fn
    raise ValueError(f"--oracle {name!r}: unknown. Use 'shorter', 'keyword', 'positive' "
                     "or 'package.module:function' (func(prompt, a, b) -> a|b|tie|both_bad).")


def checked(oracle: Oracle) -> Oracle:
    """Wrap an oracle so a bad return value, or a malformed ``measure``, is a clear error."""
    named = getattr(oracle, "measure", None)
    if named is not None and not (isinstance(named, tuple) and len(named) == 2
                                  and isinstance(named[0], str) and callable(named[1])):
        raise ValueError(f"oracle {getattr(oracle, '__name__', oracle)!r} has measure="
                         f"{named!r}: it must be (name, fn(answer) -> float), or absent")

    @functools.wraps(oracle)  # keeps measure, __name__ and the docstring
    def call(prompt: str, a: str, b: str) -> str:
        out = oracle(prompt, a, b)
        if out not in CHOICES:
            raise ValueError(f"oracle returned {out!r}; it must return one of {CHOICES}")
        return out
    return call


def rank_vote(oracle: Oracle, prompt: str, answers: list[str]
              ) -> tuple[str, int | None, int | None]:
    """A rank vote (choice, best, worst) from a pairwise oracle, as a careful annotator
    marks it on the page. Every two answers are compared (a win scores 1, a tie or
    both-bad ½ each). A unique top score is marked best and a unique bottom score worst;
    a shared one is left unmarked (the rest are equal to it), unless both are shared:
    then one of each is marked, as a person must pick. All scores equal: 'both_bad' if
    every comparison was both-bad, else 'tie'."""
    n = len(answers)
    score = [0.0] * n
    verdicts = []
    for i in range(n):
        for j in range(i + 1, n):
            v = oracle(prompt, answers[i], answers[j])
            verdicts.append(v)
            score[i] += 1.0 if v == "a" else 0.0 if v == "b" else 0.5
            score[j] += 1.0 if v == "b" else 0.0 if v == "a" else 0.5
    top, bottom = max(score), min(score)
    if top == bottom:
        return ("both_bad" if all(v == "both_bad" for v in verdicts) else "tie"), None, None
    first_top, last_bottom = score.index(top), n - 1 - score[::-1].index(bottom)
    unique_top, unique_bottom = score.count(top) == 1, score.count(bottom) == 1
    if not unique_top and not unique_bottom:
        return "rank", first_top, last_bottom
    return ("rank", first_top if unique_top else None,
            last_bottom if unique_bottom else None)
