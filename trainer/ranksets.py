"""Rank-of-N sets for ``--vote-mode rank``: N answers to one prompt, sampled together.

All the batch's prompts, N rows each, go through ONE batched decode (the sampler's
loop), so a set of four costs about what two pairs cost. Identical answers are kept
once; a prompt with fewer than ``MIN_RANK`` different answers is sampled again, then
skipped. An arena set mixes the serving version's answers with its opponent's (half
each, shuffled, versions recorded per answer and revealed after the vote).
"""

from __future__ import annotations

import random

from storage.ranking import MIN_RANK
from trainer.model.generate import Sample


def distinct(samples: list[tuple[Sample, str]], n: int) -> list[tuple[Sample, str]]:
    """The first ``n`` samples with different texts, in order."""
    seen: set[str] = set()
    out = []
    for s, version in samples:
        if s.text not in seen:
            seen.add(s.text)
            out.append((s, version))
    return out[:n]


def sample_sets(sampler, prompts: list[str], arena: list[bool], serving: str,
                opponent: str | None, n: int, seed: int, rng: random.Random,
                retries: int = 2) -> list[list[tuple[Sample, str]] | None]:
    """Per prompt: up to ``n`` distinct (sample, version) answers, or None when fewer than
    MIN_RANK differ. Arena prompts (needs an ``opponent``) get n - n//2 answers from
    serving and n//2 from the opponent, shuffled."""
    found: list[list[tuple[Sample, str]]] = [[] for _ in prompts]
    regular = [i for i, a in enumerate(arena) if not a or opponent is None]
    todo = regular
    for attempt in range(retries + 1):
        if not todo:
            break
        texts = sampler.sample([prompts[i] for i in todo for _ in range(n)], serving,
                               seed + attempt)
        for k, i in enumerate(todo):
            found[i] = distinct(found[i] + [(s, serving) for s in texts[k * n:(k + 1) * n]], n)
        todo = [i for i in todo if len(found[i]) < n]
    mixed = [i for i in range(len(prompts)) if i not in set(regular)]
    if mixed:
        mine_n, theirs_n = n - n // 2, n // 2
        mine = sampler.sample([prompts[i] for i in mixed for _ in range(mine_n)], serving,
                              seed + 101)
        theirs = sampler.sample([prompts[i] for i in mixed for _ in range(theirs_n)], opponent,
                                seed + 102)
        for k, i in enumerate(mixed):
            both = ([(s, serving) for s in mine[k * mine_n:(k + 1) * mine_n]]
                    + [(s, opponent) for s in theirs[k * theirs_n:(k + 1) * theirs_n]])
            found[i] = distinct(both, n)
            rng.shuffle(found[i])
    return [f if len(f) >= MIN_RANK else None for f in found]
