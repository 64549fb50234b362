"""The two training terms on answer endings, and what they need from a micro-batch.

- The ending anchor (``--end-anchor``) keeps a sampled answer's own ending at least as
  likely as under the reference, so votes for longer answers do not teach "never stop".
- The empty-answer guard (``--empty-guard``) keeps an ending right after the prompt (an
  empty answer) at most as likely as under the reference. The pool samples an empty
  answer again before anyone sees it (``--empty-retries``), so no vote says anything
  about empty answers; without the guard, votes for shorter answers raise every
  ending, the immediate one included (a round's draft then stops at once on a fifth of
  the prompts, and the answer-health check rejects it).

Both are hinges on endings the model really sampled (``mark_endings``); reference
values are computed once per answer or prompt and kept on its example.
"""

from __future__ import annotations

import torch

from trainer.model.logprobs import build_batch, ending_mask, sequence_logps
from trainer.training import span
from trainer.training.data import Example


def mark_endings(rows: list[dict], examples: list[Example], decode: span.Decode) -> None:
    """Record each sampled answer's ending length on its example; answers scored as
    text, and answers cut at the token limit, have none. ``rows`` are the training rows
    the examples were made from (matched by key)."""
    by_key = {r["key"]: r for r in rows}
    for e in examples:
        r = by_key[e.key]
        for side, seq in (("chosen", e.chosen), ("rejected", e.rejected)):
            if isinstance(seq, tuple):
                e.endings[seq] = span.ending_tokens(seq, r[side], r.get(f"{side}_end"),
                                                    decode)


def anchor_mask(enc: dict, batch: list[Example], texts: list) -> torch.Tensor:
    """(2B, T) bool: the ending tokens of each answer of the batch, for ``--end-anchor``
    (its reference values: ``scoring.masked_reference`` with ``Example.ref_end``)."""
    lengths = [len(t) if isinstance(t, tuple) else -1 for t in texts]
    return ending_mask(enc["response_mask"], lengths,
                       [e.endings.get(t, 0) for t, e in zip(texts, batch * 2)])


def empty_answers(batch: list[Example]) -> list[tuple[Example, tuple[int, ...]]]:
    """(example, ending ids) for each distinct ending among an example's sampled answers
    that ended: that ending placed right after the prompt is an empty answer."""
    out = []
    for e in batch:
        seen = set()
        for seq in (e.chosen, e.rejected):
            k = e.endings.get(seq, 0) if isinstance(seq, tuple) else 0
            if k and (end := tuple(seq[-k:])) not in seen:
                seen.add(end)
                out.append((e, end))
    return out


def empty_inputs(policy, batch: list[Example], ref_version: str, max_length: int
                 ) -> tuple[dict, torch.Tensor] | None:
    """(encoded prompt + ending rows, reference log p of each (R,)) for
    ``--empty-guard``, or None when no answer of the batch ended."""
    rows = empty_answers(batch)
    if not rows:
        return None
    tok = policy.tokenizer
    enc = {k: v.to(policy.device) for k, v in
           build_batch(tok, [e.prompt for e, _ in rows], [end for _, end in rows],
                       max_length, tok.pad_token_id).items()}
    if any(end not in e.ref_empty for e, end in rows):
        with policy.lock.hold(), policy.active(ref_version), torch.no_grad():
            ref, _ = sequence_logps(policy.model, enc["input_ids"], enc["attention_mask"],
                                    enc["response_mask"])  # (R,)
        for (e, end), value in zip(rows, ref.tolist()):
            e.ref_empty.setdefault(end, value)
    ref = torch.tensor([e.ref_empty[end] for e, end in rows], device=enc["input_ids"].device)
    return enc, ref
