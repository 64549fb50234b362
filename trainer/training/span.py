"""Which tokens of a voted pair are scored: ``--answer-span full | observed | common | content``.

DPO's implicit reward is a sum over an answer's tokens (paper Eq. 5), so when the chosen
answers of a round are longer than the rejected ones, "be longer" explains the votes as
well as what the annotator meant, and it is the easier thing to learn: the policy pushes
up the chosen answers' extra tokens and pushes down the rejected answers' endings, and
its answers stop ending. LD-DPO (Liu et al. 2024, arXiv 2409.06411, Eq. 9) splits each
log-likelihood at the shorter answer's length and down-weights the excess by alpha; with
alpha = 0 both answers are scored on their first ``m`` tokens only. Here ``m`` also stops
before the rejected answer's ending (its stop string or end-of-sequence token), so an
ending is never pushed down; a chosen answer that ends first keeps its ending, so a
preference for shorter answers is still learnt (``--answer-span content`` drops that
ending too: no ending is scored, and length is left to the reference policy).

``--answer-span observed`` keeps whole answers and removes only one thing: the rejected
answer's ending when the chosen answer was cut at the token limit. A cut answer's
ending was never seen, so such a vote says which content the annotator preferred, not
that an answer should not stop; scoring the rejected ending anyway pushes the shared
terminator down on every pair a longer, cut answer wins, and the policy learns to ramble
(docs/learning.md). An ending is still pushed up wherever a chosen answer ended, and
pushed down wherever a rejected one ended after a chosen one that ended too, so a
preference for shorter (or longer) answers is still learnt from the endings it shows.
Written answers and text-only rows lose the rejected terminator the same way (their
``rejected_end`` becomes '': framed as cut).

Only pairs whose answers kept their sampled token ids are cut (written and imported
answers are texts and are scored whole). The reference log-probs and the held-out gate
see the same cut sequences, so the reward a round optimises is the one it is judged on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]  # token ids -> text, special tokens skipped


def content_length(ids: Sequence[int], text: str, decode: Decode) -> int:
    """Tokens before an answer's ending: the fewest leading ids whose text holds all of
    ``text`` (the answer as stored, stop string and surrounding space removed).

    Covering grows with the number of ids, so this is a binary search (about 7 decodes
    for 96 tokens). An answer cut at the token limit has no ending: all its ids.
    """
    want = text.strip()
    if not want or want not in decode(ids):
        return len(ids)
    lo, hi = 1, len(ids)  # decode(ids[:hi]) covers it; find the smallest such hi
    while lo < hi:
        mid = (lo + hi) // 2
        if want in decode(ids[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return hi


def common_span(chosen: Sequence[int], chosen_text: str, rejected: Sequence[int],
                rejected_text: str, decode: Decode, endings: bool = True
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chosen, rejected) ids cut to the length they share, never past the start of the
    rejected answer's ending (``endings=False``: nor of the chosen answer's, so no ending
    is scored at all). A pair with nothing left to compare is returned whole."""
    m = min(len(chosen), len(rejected))
    m = min(m, content_length(rejected, rejected_text, decode))
    if not endings:
        m = min(m, content_length(chosen, chosen_text, decode))
    if m < 1:
        return tuple(chosen), tuple(rejected)
    return tuple(chosen[:m]), tuple(rejected[:m])


def cut(end: str | None) -> bool:
    """True when a stored answer was cut at the token limit ('' end; None = unknown)."""
    return end == ""


def observed_rows(rows: list[dict], decode: Decode) -> list[dict]:
    """Training rows with the rejected answer's ending removed where the chosen answer
    was cut at the token limit (``--answer-span observed``); other rows unchanged."""
    out = []
    for r in rows:
        if cut(r.get("chosen_end")) and not cut(r.get("rejected_end")):
            r = {**r, "rejected_end": ""}
            if r.get("rejected_ids"):
                n = content_length(r["rejected_ids"], r["rejected"], decode)
                r["rejected_ids"] = list(r["rejected_ids"][:n])
        out.append(r)
    return out


def ending_tokens(ids: Sequence[int], text: str, end: str | None, decode: Decode) -> int:
    """How many of an answer's last ``ids`` are its ending (stop string, end-of-sequence
    token, a chat turn's tail): 0 for an answer cut at the token limit."""
    return 0 if cut(end) else len(ids) - content_length(ids, text, decode)


def span_rows(rows: list[dict], span: str, decode: Decode) -> list[dict]:
    """The rows of a round as ``--answer-span`` scores them (full: unchanged)."""
    if span == "observed":
        return observed_rows(rows, decode)
    if span in ("common", "content"):
        return common_rows(rows, decode, endings=span == "common")
    return rows


def common_rows(rows: list[dict], decode: Decode, endings: bool = True) -> list[dict]:
    """Training rows (``Store.training_pairs``) with both answers' sampled ids cut by
    ``common_span``; rows without ids on both sides are left as they are."""
    out = []
    for r in rows:
        if r.get("chosen_ids") and r.get("rejected_ids"):
            c, j = common_span(r["chosen_ids"], r["chosen"], r["rejected_ids"],
                               r["rejected"], decode, endings)
            r = {**r, "chosen_ids": list(c), "rejected_ids": list(j)}
        out.append(r)
    return out
