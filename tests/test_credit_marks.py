"""Punctuation marks and symbols as words of the credit test (trainer/training/credit.py):
a preference about form ("ask me a question", "use lists") is credited like one about
wording, and its marks' tokens are the ones a round then trains."""

import random

from trainer.training import credit

FILLER = "tea moon cart lamp hill boat coin fern drum kite".split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def test_words_are_lower_cased_whole_words_and_single_marks():
    assert credit.words("Because it's raining, BECAUSE-2x!") == [
        "because", "it's", "raining", ",", "because", "-", "2x", "!"]
    assert credit.words("Why (not)?\n- **yes**") == [
        "why", "(", "not", ")", "?", "-", "*", "*", "yes", "*", "*"]


def test_a_mark_of_form_is_credited_like_a_word():
    """Chosen answers that ask a question back: "?" is credited, and the words around it
    (drawn alike on both sides) are not."""
    rng = random.Random(5)
    pairs = [(_sentence(rng, 8) + ". Does " + _sentence(rng, 2) + " help?",
              _sentence(rng, 8) + ". " + _sentence(rng, 4) + ".") for _ in range(12)]
    got = credit.credited_words(pairs)
    assert "?" in [c.word for c in got] and "." not in [c.word for c in got]
    assert next(c for c in got if c.word == "?").favoured


def test_token_mask_marks_a_credited_mark_and_a_token_that_holds_it():
    pieces = {1: "Why", 2: " not", 3: "?", 4: " Yes", 5: ".", 6: " (see", 7: " it)?\n"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    assert credit.token_mask((1, 2, 3, 4, 5), {"?"}, decode) == (0.0, 0.0, 1.0, 0.0, 0.0)
    assert credit.token_mask((4, 6, 7), {"?", "("}, decode) == (0.0, 1.0, 1.0)
