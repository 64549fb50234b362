"""Answer health: does a draft adapter still write answers that end?

Held-out reward accuracy (``rounds.heldout_accuracy``) scores the answers stored with
the votes; it cannot see what the draft will WRITE. On Gemma 3 270M a sigmoid-DPO round
passed that check and then rambled past its stop string: answers went from 15 to 276
characters and the oracle's win rate from 76% to 28% (README, "Does it learn?", run 3).
The failure is visible in samples at once: almost no answer ended by itself.

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

    Both, because a draft can trade empty answers for run-on ones: on Gemma (sigmoid,
    round 4) serving had 33% empty and 8% cut answers, the draft 0% and 50%. Its healthy
    share barely moved (58% -> 50%) while its answers rambled (win rate 74% -> 44%).
    """
    return (after.healthy >= before.healthy - tolerance - 1e-9
            and after.unfinished <= before.unfinished + tolerance + 1e-9)
