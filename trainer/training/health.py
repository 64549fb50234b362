"""Answer health: does a draft adapter still write answers that end?

Held-out reward accuracy (``heldout.heldout_accuracy``) scores the answers stored with
the votes; it cannot see what the draft will WRITE. A draft can pass that check and
still ramble past its stop string (over-optimisation: docs/learning.md shows it on the
default model). That failure is visible in samples at once: few answers end by
themselves.

So before a draft serves, the draft, the serving version and base answer the same
prompts, and the round is rejected when the share of healthy answers (ended by a stop
string or EOS, and not empty) fell, or the share cut at the token limit or the share of
empty answers rose, by more than ``health_tolerance``. Sharing prompts makes the shares
move together (how long answers run varies more between prompts than between samples
of one), so the check sees the adapter's effect rather than the prompts'.

A batch of 12 answers is a small sample: at a 61% healthy base, a draft whose answers
end only 30% of the time shows a drop within 0.25 about half the time. So the check is
sequential (``step``): a clear batch decides at once, a borderline one asks for another
batch (new prompts where there are enough, new seed), up to ``MAX_BATCHES``; after the
last, a drop above the tolerance rejects. Modelled as independent draws at that base with the default tolerance 0.15
(``python bench/health_gate.py``), a healthy draft is rejected 11% of the time, and a
draft at 30% (20%) passes 9% (1%) of the time, on about 22 answers per version.

Base and every saved version never change, so their answers are kept (``AnswerCache``)
and a later round samples only what it has not drawn before: once rounds ask the same
prompts again, the draft alone. The kept answers are one fixed sample per version, so
successive rounds are judged against the same base sample (each round's error rates
are as modelled; they are not independent between rounds). The check takes the model lock one
version's batch at a time, queued like a training step, so the pool's batches go first
and annotators keep getting pairs while a draft is checked.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass

from trainer.config import TrainConfig
from trainer.model.generate import Sample
from trainer.model.policy import BASE, TRAIN


@dataclass(frozen=True)
class AnswerHealth:
    healthy: float  # share of answers that ended by themselves and are not empty
    unfinished: float  # share that ran out of tokens (max_new_tokens)
    empty: float  # share that came out empty
    mean_chars: float
    n: int


def serving_changed(started_from: str, now: str) -> str:
    """Why a draft is not served when an admin changed the serving version meanwhile."""
    return (f"serving changed from {started_from} to {now} during the round (a rollback?); "
            f"this draft started from {started_from}, so it is not served; its votes stay "
            "in the next round's data.")


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


class AnswerCache:
    """Answer-health samples of versions that never change, for later rounds' checks.

    A version's adapter is written once and never rewritten (base has none), so an answer
    it gave to a prompt under one set of sampling settings is as good a sample in a later
    round as a new one. Keys: (sampling settings, version, prompt, k), k counting that
    prompt's answers within a check. The draft is never kept: its answers are new every
    round, and a draft accepted on its own check's answers would be judged later on the
    very sample that passed it (a flattering one), so a new version is sampled afresh in
    the first check it serves in. Only what ``measure`` reads is kept (no token ids).
    Beyond ``limit`` answers, the least recently used go first.
    """

    def __init__(self, limit: int = 8192) -> None:
        self.limit = limit
        self._answers: dict[tuple, Sample] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def draw(self, sampler, prompts: list[str], ks: list[int], version: str,
             seed: int) -> tuple[list[Sample], int]:
        """(``version``'s answers to ``prompts``, how many came from the cache); what is
        missing is sampled in one batch (``answers``) and kept, unless the sampling
        settings changed meanwhile (an admin's edit) or it is the draft."""
        cfg = sampler.cfg
        cacheable = version != TRAIN
        keys = [(cfg, version, p, k) for p, k in zip(prompts, ks)]
        out: list[Sample | None] = [self._answers.get(key) if cacheable else None
                                    for key in keys]
        missing = [i for i, got in enumerate(out) if got is None]
        new = answers(sampler, [prompts[i] for i in missing], version, seed) if missing else []
        store = cacheable and sampler.cfg is cfg  # settings unchanged while sampling
        for i, smp in zip(missing, new):
            out[i] = smp
        for key, smp in zip(keys, out):
            if store or key in self._answers:  # newest last: used ones move to the end
                self._answers.pop(key, None)
                self._answers[key] = Sample(smp.text, smp.n_tokens, smp.finished)
        while len(self._answers) > self.limit:
            del self._answers[next(iter(self._answers))]
        return out, len(keys) - len(missing)


MAX_BATCHES = 3
# (reject if the drop is above, pass if at or below) after batches 1 and 2, as offsets
# from the tolerance; after the last batch, a drop above the tolerance rejects.
EARLY = ((0.19, -0.20), (0.09, -0.10))


def worsening(before: AnswerHealth, after: AnswerHealth) -> dict[str, float]:
    """How much worse the draft is, by what went wrong: its loss of healthy answers
    ("answers stopped ending by themselves"), its gain of answers cut at the token
    limit (the same failure, seen from the other side) and its gain of empty answers
    (a draft that stops at once on a fifth of the prompts is broken even where its
    other answers end more often than base's)."""
    return {"answers stopped ending by themselves": max(before.healthy - after.healthy,
                                                        after.unfinished - before.unfinished),
            "answers came out empty": after.empty - before.empty}


def drop(before: AnswerHealth, after: AnswerHealth) -> float:
    """The largest of ``worsening``'s terms."""
    return max(worsening(before, after).values())


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


def draft_problem(sampler, train: list, held: list, serving: str, cfg: TrainConfig,
                  round_id: int, metrics: dict, recent_prompts: list[str] = (),
                  cache: AnswerCache | None = None) -> str | None:
    """Why the draft must not serve after sampling it against serving and base (its
    answers stopped ending, or serving changed under the round), or None. ``train`` and
    ``held`` are the round's examples: their ``question`` texts are asked first.

    Against base too, because each round may lose up to the tolerance against the one
    before: a slow drift (each step within the tolerance) would otherwise add up to
    answers that never end. Batches of ``health_samples`` answers per version are drawn
    until ``step`` decides. Records each version's answer health in ``metrics``, and
    how many answers came from ``cache`` (a fresh one, used only by this check, without).
    """
    cache = AnswerCache() if cache is None else cache
    prompts = health_prompts([e.question for e in held], [e.question for e in train],
                                    cfg.health_samples * MAX_BATCHES, recent_prompts)
    versions = [serving, TRAIN] + ([BASE] if serving != BASE else [])
    drawn: dict[str, list] = {v: [] for v in versions}
    asked: Counter = Counter()  # answers per prompt so far in this check (every version)
    reused = 0
    t0 = time.perf_counter()
    lock = sampler.policy.lock
    for batch in range(1, MAX_BATCHES + 1):
        seed = cfg.seed + round_id + 7919 * (batch - 1)
        these = batch_prompts(prompts, batch, cfg.health_samples)
        ks = []
        for p in these:
            ks.append(asked[p])
            asked[p] += 1
        for v in versions:
            # One version's batch per hold, queued like a training step: the pool's
            # batches go first in between (annotators keep getting pairs), and serving
            # cannot change within a hold.
            with lock.hold():
                if sampler.policy.serving != serving:
                    return serving_changed(serving, sampler.policy.serving)
                got, hits = cache.draw(sampler, these, ks, v, seed)
            drawn[v] += got
            reused += hits
        was, now = measure(drawn[serving]), measure(drawn[TRAIN])
        base = measure(drawn[BASE]) if serving != BASE else was
        verdicts = {name: step(drop(ref, now), batch, cfg.health_tolerance)
                    for ref, name in ((was, serving), (base, BASE))}
        if "reject" in verdicts.values() or set(verdicts.values()) == {"pass"}:
            break
    metrics["health_seconds"] = round(time.perf_counter() - t0, 2)
    metrics["health_batches"] = batch
    metrics["health_reused"] = reused  # answers of serving or base kept from earlier checks
    metrics["health_before"] = dataclasses.asdict(was)
    metrics["health_after"] = dataclasses.asdict(now)
    metrics["health_base"] = dataclasses.asdict(base)
    for ref, name in ((was, serving), (base, BASE)):
        if verdicts[name] == "reject":
            drift = (f" ({was.healthy:.0%} for {serving}: each round may lose up to the "
                     "tolerance against the last, not against base)" if ref is not was else "")
            terms = worsening(ref, now)
            what = max(terms, key=terms.get)
            return (f"{what}: {now.healthy:.0%} of {now.n} "
                    f"draft answers ended (not empty, not cut at max tokens) vs "
                    f"{ref.healthy:.0%} for {name}{drift}; cut at max tokens "
                    f"{ref.unfinished:.0%} -> {now.unfinished:.0%}, empty {ref.empty:.0%} -> "
                    f"{now.empty:.0%}, mean length "
                    f"{ref.mean_chars:.0f} -> {now.mean_chars:.0f} chars (health tolerance "
                    f"{cfg.health_tolerance}, {batch} batch(es) of {cfg.health_samples}); serving "
                    f"stays {serving}")
    return None
