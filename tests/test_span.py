"""--answer-span: which tokens of a voted pair are scored (observed, common, content)."""

from trainer.training.span import (
    common_rows,
    common_span,
    content_length,
    observed_rows,
    span_rows,
)

# One character per token id; 0 is end-of-sequence (skipped when decoding).
VOCAB = {0: "", **{i: chr(96 + i) for i in range(1, 27)}, 30: "\n", 31: "Q", 32: ":", 33: " "}


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def ids(text: str, end: tuple[int, ...] = ()) -> list[int]:
    inv = {v: k for k, v in VOCAB.items() if v}
    return [inv[c] for c in text] + list(end)


def test_content_length_stops_before_the_ending():
    assert content_length(ids("abc", (0,)), "abc", decode) == 3  # EOS
    assert content_length(ids("abc", (30, 31, 32)), "abc", decode) == 3  # stop string
    assert content_length(ids("abc "), "abc", decode) == 3  # trailing space, stripped
    assert content_length(ids("abcd"), "abcd", decode) == 4  # cut at the limit: all


def test_longer_chosen_is_cut_and_the_rejected_ending_is_never_scored():
    chosen = ids("abcdefgh")  # cut at the token limit
    rejected = ids("xyz", (0,))  # ended after 3 tokens
    c, r = common_span(chosen, "abcdefgh", rejected, "xyz", decode)
    assert (decode(c), decode(r)) == ("abc", "xyz")
    assert 0 not in r


def test_shorter_chosen_keeps_its_ending():
    chosen = ids("ab", (0,))
    rejected = ids("wxyz", (0,))
    c, r = common_span(chosen, "ab", rejected, "wxyz", decode)
    assert list(c) == chosen and len(r) == 3 and decode(r) == "wxy"


def test_content_span_scores_no_ending_at_all():
    chosen = ids("ab", (0,))
    rejected = ids("wxyz", (0,))
    c, r = common_span(chosen, "ab", rejected, "wxyz", decode, endings=False)
    assert (decode(c), decode(r)) == ("ab", "wx") and 0 not in c


def test_rows_without_sampled_ids_stay_whole():
    rows = [{"chosen": "abc", "rejected": "x", "chosen_ids": None, "rejected_ids": ids("x")},
            {"chosen": "abcd", "rejected": "x", "chosen_ids": ids("abcd"),
             "rejected_ids": ids("x", (0,))}]
    out = common_rows(rows, decode)
    assert out[0] is rows[0]
    assert out[1]["chosen_ids"] == ids("a") and out[1]["rejected_ids"] == ids("x")
    assert rows[1]["chosen_ids"] == ids("abcd")  # the stored rows are not changed


def _row(chosen, chosen_end, rejected, rejected_end, with_ids=True):
    """A training row; a cut answer ('' end) has no ending ids, an ended one EOS."""
    def side(text, end):
        return ids(text, () if end == "" else (0,)) if with_ids else None
    return {"chosen": chosen, "chosen_end": chosen_end, "chosen_ids": side(chosen, chosen_end),
            "rejected": rejected, "rejected_end": rejected_end,
            "rejected_ids": side(rejected, rejected_end)}


def test_observed_span_drops_the_rejected_ending_only_after_a_cut_chosen_answer():
    cut_wins = _row("abcdefgh", "", "xyz", "<eos>")  # a long, cut answer beat one that ended
    both_ended = _row("abcdef", "<eos>", "xyz", "<eos>")
    ended_wins = _row("ab", "<eos>", "wxyz", "")  # the ended one beat a cut one
    out = observed_rows([cut_wins, both_ended, ended_wins], decode)
    assert out[0]["rejected_ids"] == ids("xyz") and out[0]["rejected_end"] == ""
    assert out[0]["chosen_ids"] == cut_wins["chosen_ids"]  # the chosen content stays whole
    assert out[1] == both_ended and out[2] == ended_wins  # every observed ending is scored
    assert cut_wins["rejected_ids"] == ids("xyz", (0,))  # the stored rows are not changed


def test_observed_span_frames_a_text_only_rejected_answer_without_its_terminator():
    row = _row("abcdefgh", "", "xyz", None, with_ids=False)  # unknown end: usual terminator
    (out,) = observed_rows([row], decode)
    assert out["rejected_end"] == "" and out["rejected_ids"] is None


def test_span_rows_picks_the_rule_by_name():
    row = _row("abcdefgh", "", "xyz", "<eos>")
    assert span_rows([row], "full", decode) == [row]
    assert span_rows([row], "observed", decode)[0]["rejected_ids"] == ids("xyz")
    assert span_rows([row], "common", decode)[0]["chosen_ids"] == ids("abc")
