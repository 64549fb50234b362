"""Answer health: does a draft adapter still write answers that end?

Held-out reward accuracy (``rounds.heldout_accuracy``) scores the answers stored with
the votes; it cannot see what the draft will WRITE. A draft can pass that check and
still ramble past its stop string (over-optimisation: docs/learning.md shows it on the
default model). That failure is visible in samples at once: few answers end by
themselves.

So before a draft serves, the draft and the serving version answer the same prompts
with the same seed, and the round is rejected when the share of healthy answers (ended
by a stop string or EOS, and not empty) fell by more than ``health_tolerance``.
Sharing prompts and seed makes the two shares move together, so the check sees the
adapter's effect rather than sampling noise.
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


def health_prompts(held_prompts: list[str], train_prompts: list[str], n: int) -> list[str]:
    """``n`` prompts: distinct ones, held-out first (the draft never trained on them),
    repeated in turn when there are fewer than ``n``."""
    distinct = list(dict.fromkeys([*held_prompts, *train_prompts]))
    if not distinct or n <= 0:
        return []
    return [distinct[i % len(distinct)] for i in range(n)]


def of(sampler, prompts: list[str], version: str, seed: int) -> AnswerHealth:
    """One version's answer health on ``prompts`` (the users' texts: the sampler applies
    the template). Empty answers are NOT resampled here: an adapter that learned to stop
    at once must show it."""
    return measure(sampler.sample(prompts, version, seed, empty_retries=0))


def compare(sampler, prompts: list[str], serving: str, draft: str,
            seed: int) -> tuple[AnswerHealth, AnswerHealth]:
    """(serving's health, draft's health) on the same prompts with the same seed."""
    return of(sampler, prompts, serving, seed), of(sampler, prompts, draft, seed)


def healthy_enough(before: AnswerHealth, after: AnswerHealth, tolerance: float) -> bool:
    """The draft may lose at most ``tolerance`` of healthy answers, and gain at most
    ``tolerance`` of answers cut at the token limit (1.0: never rejects).

    Both, because a draft can trade empty answers for run-on ones: then its healthy
    share barely moves while the share of answers cut at the token limit jumps.
    """
    return (after.healthy >= before.healthy - tolerance - 1e-9
            and after.unfinished <= before.unfinished + tolerance + 1e-9)
