"""bench/credit.py's pairing of stored base answers into the oracle's decisive A/B votes
(bench/focus.py trains on the same pairs)."""

from bench.credit import decisive_ab_pairs, decisive_votes, rows_by_prompt


def longer(prompt: str, a: str, b: str) -> str:
    return "a" if len(a) > len(b) else "b" if len(b) > len(a) else "tie"


ROWS = [{"prompt": "p", "text": "xx"}, {"prompt": "q", "text": "y"},
        {"prompt": "p", "text": "x"}, {"prompt": "q", "text": "z"},
        {"prompt": "p", "text": "x"}, {"prompt": "p", "text": "xxx"},
        {"prompt": "q", "text": "odd one out"}]


def test_answers_pair_in_order_and_ties_are_dropped():
    pairs = decisive_ab_pairs(longer, rows_by_prompt(ROWS))
    # q: "y" vs "z" is a tie, and its third answer has no partner
    assert [(p, c["text"], r["text"]) for p, c, r in pairs] == [("p", "xx", "x"),
                                                               ("p", "xxx", "x")]
    assert decisive_votes(longer, ROWS) == [("xx", "x"), ("xxx", "x")]


def test_only_the_prompts_asked_for():
    assert decisive_ab_pairs(longer, rows_by_prompt(ROWS), ["q"]) == []
