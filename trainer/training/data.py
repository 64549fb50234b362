"""Training examples from stored votes: held-out split and cached reference log-probs.

Votes become (prompt, chosen, rejected) pairs in storage (see Store.training_pairs) and
unpaired (prompt, completion, desirable) rows for KTO (Store.kto_rows). Here they get
their template-formatted prompt, a deterministic held-out split, and reference
log-probs, which depend only on (pair, reference version) and so are computed once
and cached in the DB.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from trainer.model.logprobs import Seq
from trainer.model.scoring import score, text_hash


@dataclass
class Example:
    """One row the trainer sees: paired (chosen/rejected) or unpaired (completion/label)."""

    key: str
    pair_id: int | None
    prompt: Seq  # the sampled prompt tokens, else the text formatted with the template
    chosen: Seq  # the sampled answer tokens, else the text framed as generation wrote it
    rejected: Seq | None = None  # None for unpaired rows
    desirable: bool = True  # unpaired rows only
    ref: dict[Seq, tuple[float, int]] = field(default_factory=dict)  # answer -> (logp, n)
    question: str = ""  # the prompt as the annotator saw it (before the template)
    group: str = ""  # rows that share answers (one rank set) share it: held out together
    endings: dict[Seq, int] = field(default_factory=dict)  # answer -> its ending's tokens
    ref_end: dict[Seq, float] = field(default_factory=dict)  # answer -> ref log p(ending)
    ref_empty: dict[Seq, float] = field(default_factory=dict)  # ending -> ref log p(it at once)
    credit: dict[Seq, tuple[float, ...]] = field(default_factory=dict)  # answer -> credited tokens
    ref_credit: dict[Seq, float] = field(default_factory=dict)  # answer -> ref log p(them)
    apart: frozenset[str] = frozenset()  # credited words in one answer only (credit.py)
    weight: float = 1.0  # the pair's weight in the round's loss (--uncredited-weight)


def method_rows(rows: list[dict], method: str) -> list[dict]:
    """The training rows a method learns from: every implied pair (dpo), or only each
    vote's (best, worst) pair (dno; an A/B vote or a written better answer is one)."""
    return rows if method == "dpo" else [r for r in rows if r.get("extreme", True)]


def is_heldout(key: str, fraction: float) -> bool:
    """Deterministic split by key hash: the same vote is always on the same side."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return h % 10_000 < fraction * 10_000


def _prompt(r: dict, fmt) -> Seq:
    ids = r.get("prompt_ids")
    return tuple(ids) if ids else fmt(r["prompt"])


def paired_examples(rows: list[dict], fmt, frame) -> list[Example]:
    """Examples hold what the model saw and wrote: the token ids that were sampled when
    the pair stored them, else texts: ``fmt`` formats a prompt with the template,
    ``frame(answer, end, ids)`` gives an answer its sampled ids, or the text around it that
    generation produced (``Sampler.scored``: the end it really had, none if it was cut
    at the token limit; the chat template's turn tail after an ended turn).
    A written better answer, an imported pair or a pair from before the ids were kept
    takes the text path."""
    return [Example(key=r["key"], pair_id=r["pair_id"], prompt=_prompt(r, fmt),
                    chosen=frame(r["chosen"], r.get("chosen_end"), r.get("chosen_ids")),
                    rejected=frame(r["rejected"], r.get("rejected_end"),
                                   r.get("rejected_ids")),
                    question=r["prompt"], group=r.get("group") or "") for r in rows]


def unpaired_examples(rows: list[dict], fmt, frame) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        key = f"kto:{r.get('pair_id')}:{i}:{text_hash(r['prompt'], r['completion'])[:8]}"
        out.append(Example(key=key, pair_id=r.get("pair_id"), prompt=_prompt(r, fmt),
                           chosen=frame(r["completion"], r.get("end"), r.get("ids")),
                           desirable=bool(r["label"]),
                           question=r["prompt"]))
    return out


def split(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held-out) by the hash of each row's group (its key when it has none): the
    pairs one rank set implies share answers, so they fall on one side together."""
    held = [is_heldout(e.group or e.key, fraction) for e in examples]
    return ([e for e, h in zip(examples, held) if not h],
            [e for e, h in zip(examples, held) if h])


def texts_of(e: Example) -> list[Seq]:
    return [e.chosen] + ([e.rejected] if e.rejected is not None else [])


def attach_reference(examples: list[Example], policy, store, ref_version: str,
                     max_length: int, batch_size: int = 8) -> int:
    """Fill ``e.ref`` for every response from the DB cache, computing what is missing.

    Cache key: (pair_id, ref_version, hash(prompt, framed response)), so a change of
    template or terminator never reuses a stale log-prob. Rows without a pair id
    (imported KTO labels) are computed but not cached. Returns how many were computed.
    """
    wanted = [(e, t) for e in examples for t in texts_of(e)]
    keys = [(e.pair_id, text_hash(e.prompt, t)) for e, t in wanted if e.pair_id is not None]
    cached = store.get_ref_logps(ref_version, keys) if keys else {}
    missing = []
    for e, t in wanted:
        hit = cached.get((e.pair_id, text_hash(e.prompt, t))) if e.pair_id is not None else None
        if hit is not None:
            e.ref[t] = (float(hit[0]), int(hit[1]))
        else:
            missing.append((e, t))
    if missing:
        sums, counts = score(policy, [e.prompt for e, _ in missing], [t for _, t in missing],
                             ref_version, max_length, batch_size)
        rows = []
        for (e, t), s, n in zip(missing, sums, counts):
            e.ref[t] = (s, n)
            if e.pair_id is not None:
                rows.append((e.pair_id, text_hash(e.prompt, t), s, n))
        if rows:
            store.put_ref_logps(ref_version, rows)
    return len(missing)
