"""Answer health: does a draft adapter still write answers that end?

Held-out reward accuracy (``rounds.heldout_accuracy``) scores the answers stored with
the votes; it cannot see what the draft will WRITE. A draft can pass that check and
still ramble past its stop string (over-optimisation: docs/learning.md shows it on the
default model). That failure is visible in samples at once: few answers end by
themselves.

So before a draft serves, the draft and the serving version answer the same prompts
with the same seed, and the round is rejected when the share of healthy answers (ended
by a stop string or EOS, and not empty) fell, or the share cut at the token limit rose,
by more than ``health_tolerance``. Sharing prompts and seed makes the two shares move
together, so the check sees the adapter's effect rather than sampling noise.

A batch of 12 answers is a small sample: at a 61% healthy base, a draft whose answers
end only 30% of the time shows a drop within 0.25 about half the time. So the check is
sequential (``step``): a clear batch decides at once, a borderline one asks for another
batch (new prompts where there are enough, new seed), up to ``MAX_BATCHES``; after the
last, a drop above the tolerance rejects. Modelled as independent draws at that base with the default tolerance 0.15
(``python bench/health_gate.py``), a healthy draft is rejected 11% of the time, and a
draft at 30% (20%) passes 9% (1%) of the time, on about 22 answers per version.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.model.generate import Sample


@dataclass(frozen=True)
class AnswerHealth:
    healthy: float  # share of answers that ended by themselves and are not empty
    unfinished: float  # share that ran out of tokens (max_new_tokens)
    empty: float  # share that came out empty
    mean_chars: float
    n: int


def measure(samples: list[Sample]) -> AnswerHealth:
    """Shares of finished, unfinished and empty answers among ``samples``."""
    n = len(samples)
    if n == 0:
        raise ValueError("answer health needs at least one sample")
    return AnswerHealth(
        healthy=sum(s.finished and bool(s.text) for s in samples) / n,
        unfinished=sum(not s.finished for s in samples) / n,
        empty=sum(not s.text for s in samples) / n,
        mean_chars=sum(len(s.text) for s in samples) / n,
        n=n)


def health_prompts(held_prompts: list[str], train_prompts: list[str], n: int,
                   other_prompts: list[str] = ()) -> list[str]:
    """``n`` prompts: distinct ones, held-out first (the draft never trained on them), then
    the training votes', then ``other_prompts`` (recently voted ones: when few votes were
    decisive, a handful of prompts repeated would not show how the draft answers), repeated
    in turn when there are fewer than ``n``."""
    distinct = list(dict.fromkeys([*held_prompts, *train_prompts, *other_prompts]))
    if not distinct or n <= 0:
        return []
    return [distinct[i % len(distinct)] for i in range(n)]


def batch_prompts(prompts: list[str], batch: int, n: int) -> list[str]:
    """The ``n`` prompts of batch ``batch`` (1-based): each batch takes the next ``n`` of
    ``prompts`` (``health_prompts`` for all batches), so a borderline draft is judged on
    more prompts, not on the same few again: how long a prompt's answers run varies more
    between prompts than between samples of one."""
    start = (batch - 1) * n
    return [prompts[(start + i) % len(prompts)] for i in range(n)] if prompts else []


def answers(sampler, prompts: list[str], version: str, seed: int) -> list[Sample]:
    """One version's answers to ``prompts`` (the users' texts: the sampler applies the
    template). Empty answers are NOT resampled here: an adapter that learned to stop at
    once must show it."""
    return sampler.sample(prompts, version, seed, empty_retries=0)


def of(sampler, prompts: list[str], version: str, seed: int) -> AnswerHealth:
    """One version's answer health on ``prompts`` (see ``answers``)."""
    return measure(answers(sampler, prompts, version, seed))


def compare(sampler, prompts: list[str], serving: str, draft: str,
            seed: int) -> tuple[AnswerHealth, AnswerHealth]:
    """(serving's health, draft's health) on the same prompts with the same seed."""
    return of(sampler, prompts, serving, seed), of(sampler, prompts, draft, seed)


MAX_BATCHES = 3
# (reject if the drop is above, pass if at or below) after batches 1 and 2, as offsets
# from the tolerance; after the last batch, a drop above the tolerance rejects.
EARLY = ((0.19, -0.20), (0.09, -0.10))


def drop(before: AnswerHealth, after: AnswerHealth) -> float:
    """How much worse the draft is: the larger of its loss of healthy answers and its
    gain of answers cut at the token limit."""
    return max(before.healthy - after.healthy, after.unfinished - before.unfinished)


def step(worse_by: float, batch: int, tolerance: float) -> str:
    """'reject', 'pass' or 'more' after ``batch`` (1-based) batches of answers."""
    if tolerance >= 1.0:
        return "pass"  # measure only
    if batch >= MAX_BATCHES:
        return "reject" if worse_by > tolerance + 1e-9 else "pass"
    reject_above, pass_at = EARLY[batch - 1]
    if worse_by > tolerance + reject_above + 1e-9:
        return "reject"
    return "pass" if worse_by <= tolerance + pass_at + 1e-9 else "more"
