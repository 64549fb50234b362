"""Scripted annotators for ``app.py simulate``: programmatic preferences.

An oracle is any callable ``oracle(prompt, a, b) -> 'a' | 'b' | 'tie' | 'both_bad'``.
Ship-with-the-project oracles are looked up by name; any importable callable can be
plugged in by dotted path, ``--oracle mypkg.mod:func``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

Oracle = Callable[[str, str, str], str]
CHOICES = ("a", "b", "tie", "both_bad")

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
    learns to stop at once (seen on Gemma 3 270M after one round). None: both answered.
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


def positive(prompt: str, a: str, b: str) -> str:
    """Prefers the answer with more words from a positive-sentiment word list."""
    return _empty_loses(a, b) or _by_score(sum(w in POSITIVE_WORDS for w in _words(a)),
                                           sum(w in POSITIVE_WORDS for w in _words(b)))


def keyword_oracle(keyword: str) -> Oracle:
    """Prefers answers that mention ``keyword``; both or neither: the shorter one.

    Matched as a whole word or phrase, ignoring case: 'you' is not in 'young'.
    """
    if not keyword.strip():
        raise ValueError(f"--keyword {keyword!r} is empty: give the word the oracle should "
                         "prefer, e.g. --keyword because")
    pattern = re.compile(rf"(?<!\w){re.escape(keyword.strip())}(?!\w)", re.IGNORECASE)

    def keyword(prompt: str, a: str, b: str) -> str:
        if verdict := _empty_loses(a, b):
            return verdict
        has_a, has_b = bool(pattern.search(a)), bool(pattern.search(b))
        if has_a != has_b:
            return "a" if has_a else "b"
        return shorter(prompt, a, b)

    return keyword


def load_oracle(name: str, keyword: str = "because") -> Oracle:
    """A shipped oracle by name (shorter, keyword, positive) or 'module:function'."""
    if name == "shorter":
        return shorter
    if name == "positive":
        return positive
    if name == "keyword":
        return keyword_oracle(keyword)
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
    """Wrap an oracle so a bad return value is a clear error."""
    def call(prompt: str, a: str, b: str) -> str:
        out = oracle(prompt, a, b)
        if out not in CHOICES:
            raise ValueError(f"oracle returned {out!r}; it must return one of {CHOICES}")
        return out
    return call
