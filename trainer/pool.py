"""The ready-pair pool: a background producer that keeps pairs queued in the DB.

Pairs are sampled from the CURRENT serving policy (on-policy, iterated DPO), several
prompts per batched generate call, least-served prompts first. A share of pairs are
"arena" pairs: the serving adapter against base (or the previous version), sides
shuffled, versions recorded per side and revealed only after the vote. With
``--vote-mode rank`` it makes rank-of-N sets instead (trainer/ranksets.py). After a
hot-swap, queued pairs from older versions are retired so annotators judge the
current policy. Errors are logged, counted, shown in status and retried with backoff;
they never kill the producer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from storage.common import version_number
from trainer.config import PoolConfig
from trainer.model.decode import SamplingAborted
from trainer.model.generate import Sample, Sampler
from trainer.model.policy import BASE
from trainer.model.scoring import implicit_rewards
from trainer.ranksets import sample_sets

log = logging.getLogger(__name__)


@dataclass
class PlannedPair:
    prompt_id: int
    prompt: str
    arena: bool


def refill_size(cfg: PoolConfig) -> int:
    """How many of ``ready_pairs`` must be missing before the pool samples again: half a
    batch (at least 1). On a CPU a decode step of a few rows costs nearly what one of
    many rows costs, so topping up pair by pair keeps the model busy with tiny batches
    (in the capacity benchmark, 1-8 prompts every 15-30 s), time training rounds then
    wait for; refilling half a batch at a time keeps batches large and the queue at
    least half full. Once started, a refill goes on up to ``ready_pairs``."""
    return max(1, min(cfg.batch_prompts, cfg.ready_pairs) // 2)


class PairPool:
    """Producer thread plus the on-demand path for user-typed prompts."""

    def __init__(self, policy, store, sampler: Sampler, cfg: PoolConfig, *,
                 reference, beta: float, max_length: int, seed: int = 0) -> None:
        self.policy, self.store, self.sampler, self.cfg = policy, store, sampler, cfg
        self.reference = reference  # callable: serving version -> reference version
        self.beta, self.max_length = beta, max_length
        self.rng = random.Random(seed)
        self._seed = seed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._replace = False  # a new version serves: sample its pairs, then retire
        self._filling = False  # topping the queue up to ready_pairs
        self._thread: threading.Thread | None = None
        self.produced = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_batch: dict = {}

    # --- thread -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="pair-pool", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self.store.release_stale_assignments(self.cfg.release_after_s)
                if self._replace:  # the new version's first batch, then the old pairs go
                    self.fill_once(self.cfg.batch_prompts)
                    self._replace = False
                    self.retire_stale()
                    continue
                need = self.cfg.ready_pairs - self.store.ready_pair_count(
                    kind=self.cfg.vote_mode)
                # Start at half a batch missing, then go on up to ready_pairs.
                self._filling = need > 0 and (self._filling or need >= refill_size(self.cfg))
                if not self._filling:
                    self._wake.wait(5.0)
                    self._wake.clear()
                    continue
                self.fill_once(min(need, self.cfg.batch_prompts))
                backoff = 1.0
            except SamplingAborted:
                return  # the service is stopping
            except Exception as e:  # noqa: BLE001 - the producer must survive anything
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("pair generation failed; retrying in %.0f s", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)

    def status(self) -> dict:
        return {"running": bool(self._thread and self._thread.is_alive()),
                "produced": self.produced, "errors": self.errors,
                "last_error": self.last_error, "last_batch": self.last_batch}

    # --- production -----------------------------------------------------------------
    def opponent(self) -> str | None:
        """The arena opponent of the serving version, or None (serving is base)."""
        serving = self.policy.serving
        if serving == BASE:
            return None
        if self.cfg.arena_opponent == "previous":
            row = self.store.get_adapter(serving) or {}
            parent = row.get("parent_version") or BASE
            if parent != BASE:
                prev = self.store.get_adapter(parent)
                if not prev:
                    return BASE
                self.policy.load_version(parent, prev["path"])
            return parent
        return BASE

    def fill_once(self, k: int) -> list[int]:
        """Generate pairs for up to ``k`` least-served prompts in batched calls."""
        prompts = self.store.least_served_prompts(k, rng=self.rng)
        if not prompts:
            return []
        with self.policy.lock.hold(priority=True):  # serving and opponent stay loaded
            opp = self.opponent()
            plan = [PlannedPair(p["id"], p["text"], opp is not None
                                and self.rng.random() < self.cfg.arena_fraction)
                    for p in prompts]
            return self.produce_items(plan, opp)

    def produce_items(self, plan: list[PlannedPair], opponent: str | None,
                      status: str = "queued") -> list[int]:
        """A/B pairs or rank sets for ``plan``, as ``vote_mode`` says; returns the ids."""
        if self.cfg.vote_mode == "rank":
            return self.produce_sets(plan, opponent, status)
        return self.produce(plan, opponent, status)

    def produce(self, plan: list[PlannedPair], opponent: str | None,
                status: str = "queued") -> list[int]:
        """Sample and store one pair per planned prompt; returns the new pair ids.

        The model lock (re-entrant) is held for the whole batch: a hot-swap between its
        sampling calls would otherwise unload the version the batch is sampling from.
        """
        t0 = time.perf_counter()
        seed = self._next_seed()
        ids = []
        with self.policy.lock.hold(priority=True):
            serving = self.policy.serving
            sides = self._sample_sides(plan, serving, opponent, seed)
            for item, (a, b, va, vb) in zip(plan, sides):
                if a is None:
                    log.warning("prompt %d gave two identical samples (or two empty ones); skipped",
                                item.prompt_id)
                    continue
                ra, rb = self._rewards(item.prompt, a, b, va, vb, serving)
                ids.append(self.store.record_pair(
                    item.prompt_id, a.text, b.text, va, vb, gen_config=self._gen_config(ra, rb),
                    seed=seed, arena=item.arena, status=status, end_a=a.scored_end,
                    end_b=b.scored_end, prompt_ids=a.prompt_ids or b.prompt_ids,
                    ids_a=a.token_ids, ids_b=b.token_ids))
        dt = time.perf_counter() - t0
        self.produced += len(ids)
        self.last_batch = {"pairs": len(ids), "seconds": round(dt, 2),
                           **{k: round(v, 2) for k, v in self.sampler.last_stats.items()}}
        return ids

    def produce_sets(self, plan: list[PlannedPair], opponent: str | None,
                     status: str = "queued") -> list[int]:
        """Sample and store one rank set of ``cfg.rank_size`` answers per planned prompt
        (each answer's implicit reward under serving when it differs from its
        reference); returns the new ids."""
        t0 = time.perf_counter()
        seed, n = self._next_seed(), self.cfg.rank_size
        ids = []
        with self.policy.lock.hold(priority=True):
            serving = self.policy.serving
            sets = sample_sets(self.sampler, [p.prompt for p in plan], [p.arena for p in plan],
                               serving, opponent, n, seed, self.rng)
            for item, answers in zip(plan, sets):
                if answers is None:
                    log.warning("prompt %d gave fewer than 3 different answers; skipped",
                                item.prompt_id)
                    continue
                rewards = self._set_rewards(item.prompt, answers, serving)
                rows = [{"text": s.text, "version": v, "end": s.scored_end,
                         "ids": s.token_ids, "reward": r}
                        for (s, v), r in zip(answers, rewards)]
                ids.append(self.store.record_rank_set(
                    item.prompt_id, rows, gen_config={**self._gen_config(None, None),
                                                      "rank_size": n},
                    seed=seed, arena=item.arena, status=status,
                    prompt_ids=next((s.prompt_ids for s, _ in answers if s.prompt_ids), None)))
        dt = time.perf_counter() - t0
        self.produced += len(ids)
        self.last_batch = {"sets": len(ids), "seconds": round(dt, 2),
                           **{k: round(v, 2) for k, v in self.sampler.last_stats.items()}}
        return ids

    def _set_rewards(self, prompt: str, answers: list, serving: str) -> list[float | None]:
        """Implicit rewards of (sample, version) answers under serving, scored on the
        tokens sampled when known (None: another version wrote one, or serving is its
        own reference)."""
        ref = self.reference(serving)
        if serving == ref or any(v != serving for _, v in answers):
            return [None] * len(answers)
        fmt = self.sampler.format(prompt)
        prompts = [s.prompt_ids or fmt for s, _ in answers]
        texts = [self.sampler.scored(s.text, s.scored_end, s.token_ids) for s, _ in answers]
        return implicit_rewards(self.policy, prompts, texts, serving, ref, self.beta,
                                self.max_length)

    def _next_seed(self) -> int:
        """Deterministic per batch: the base seed and how many pairs exist so far."""
        return self._seed * 1_000_003 + self.store.counts()["pairs"] * 16

    def _sample_sides(self, plan, serving, opponent, seed, retries: int = 2):
        """(a, b, version_a, version_b) per plan item, a and b ``Sample``s; a is None if
        no distinct pair."""
        regular = [i for i, p in enumerate(plan) if not p.arena]
        arena = [i for i, p in enumerate(plan) if p.arena]
        out: list = [None] * len(plan)
        todo = regular
        for attempt in range(retries + 1):
            if not todo:
                break
            texts = self.sampler.sample([plan[i].prompt for i in todo for _ in range(2)],
                                        serving, seed + attempt)
            again = []
            for j, i in enumerate(todo):
                a, b = texts[2 * j], texts[2 * j + 1]
                if a.text != b.text:  # one empty side is kept: the vote against it is the signal
                    out[i] = (a, b, serving, serving)
                else:
                    again.append(i)
            todo = again
        for i in todo:
            out[i] = (None, None, serving, serving)
        if arena:
            mine = self.sampler.sample([plan[i].prompt for i in arena], serving, seed + 101)
            theirs = self.sampler.sample([plan[i].prompt for i in arena], opponent, seed + 102)
            for i, m, t in zip(arena, mine, theirs):
                if m.text == t.text:
                    out[i] = (None, None, serving, opponent)
                elif self.rng.random() < 0.5:
                    out[i] = (m, t, serving, opponent)
                else:
                    out[i] = (t, m, opponent, serving)
        return out

    def _rewards(self, prompt: str, a: Sample, b: Sample, va: str, vb: str, serving: str):
        """Implicit rewards of both sides under the serving policy (None for arena/base)."""
        return tuple(self._set_rewards(prompt, [(a, va), (b, vb)], serving))

    def _gen_config(self, reward_a, reward_b) -> dict:
        c = self.sampler.cfg
        return {"max_new_tokens": c.max_new_tokens, "temperature": c.temperature,
                "top_p": c.top_p, "top_k": c.top_k, "template": c.template,
                "system_prompt": c.system_prompt, "chat": self.sampler.chat,
                "reward_a": reward_a, "reward_b": reward_b, "beta": self.beta}

    # --- after a hot-swap --------------------------------------------------------------
    def new_version(self) -> None:
        """The serving version changed: its pairs replace the queued ones. With the
        producer running, the queued pairs stay on offer until it has sampled a batch
        from the new version, so annotators are not left without pairs for that batch's
        time (tens of seconds on a CPU); without it, they expire now."""
        if self._thread is not None and self._thread.is_alive():
            self._replace = True
            self.wake()
        else:
            self.retire_stale()

    def retire_stale(self) -> int:
        """Expire queued pairs not produced by the serving version (or within staleness)."""
        keep = {self.policy.serving}
        if self.cfg.staleness:
            versions = [a["version"] for a in self.store.list_adapters()
                        if a["status"] == "ready"]
            keep |= set(sorted(versions, key=version_number)[-self.cfg.staleness - 1:])
        n = self.store.retire_pairs(keep)
        self.wake()
        return n
