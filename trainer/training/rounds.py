"""One DPO round: votes -> a new adapter version, accepted only if it does not hurt.

A round (1) turns the stored votes into examples with a deterministic held-out slice,
(2) fills reference log-probs from the DB cache (reference = base with adapters
disabled, or the serving version for sDPO), (3) starts the draft adapter from the
serving version and trains it with AdamW for E epochs of micro-batches with gradient
accumulation, holding the model lock one micro-batch at a time so generation can cut
in, (4) scores held-out reward accuracy before and after, (5) has the draft and the
serving version answer the same prompts (trainer/training/health.py: do answers still end?), and
(6) if the losses were finite, held-out accuracy did not significantly drop
(trainer/training/gate.py) and the answers stayed healthy, saves the draft atomically as the next version and
hot-swaps it into serving.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from storage.failpoints import failpoint
from trainer.config import TrainConfig
from trainer.model import adapters
from trainer.model.decode import SamplingAborted
from trainer.model.logprobs import build_batch, sequence_logps
from trainer.model.policy import BASE, TRAIN
from trainer.model.scoring import masked_reference, score
from trainer.progress import NullProgress, Progress
from trainer.training import credit, endings, gate, health, span
from trainer.training.data import (
    Example,
    attach_reference,
    is_heldout,
    method_rows,
    paired_examples,
    split,
    unpaired_examples,
)
from trainer.training.heldout import heldout_accuracy
from trainer.training.losses import (
    chosen_nll,
    empty_guard,
    ending_anchor,
    kto_kl_estimate,
    kto_loss,
    needs_length_normalisation,
    preference_loss,
)

log = logging.getLogger(__name__)
MIN_TRAIN_EXAMPLES = 2
READING_THROUGH = "round_reads_through_vote"  # the newest vote the running round has read
HELDOUT_MAX = 128  # the most recent held-out pairs: scored twice a round, so round time stays flat
CREDITS_SHOWN = 20  # credited words a round records (strongest first)


class RoundError(RuntimeError):
    """A round could not run or diverged; the message says why and what to change."""


@dataclass
class RoundOutcome:
    round_id: int
    status: str  # accepted | rejected | failed
    version: str | None
    metrics: dict
    error: str | None = None


def reference_version(cfg: TrainConfig, serving: str) -> str:
    """base (adapters disabled), or the serving version: for sDPO (--reference previous)
    and for DNO, whose reference is the previous iterate (--method dno)."""
    return serving if cfg.reference == "previous" or cfg.method == "dno" else BASE


def _micro_step(policy, batch: list[Example], cfg: TrainConfig, ref_version: str) -> tuple:
    """Forward + backward of one micro-batch of the draft adapter; returns (loss, stats)."""
    tok = policy.tokenizer
    if cfg.loss == "kto":
        return _kto_micro_step(policy, batch, cfg, ref_version)
    prompts = [e.prompt for e in batch] * 2
    texts = [e.chosen for e in batch] + [e.rejected for e in batch]
    enc = {k: v.to(policy.device) for k, v in
           build_batch(tok, prompts, texts, cfg.max_length, tok.pad_token_id).items()}
    rows = list(zip(texts, batch * 2))
    end_mask = endings.anchor_mask(enc, batch, texts) if cfg.end_anchor else None  # (2B, T)
    credited = (credit.credit_weights(enc["response_mask"], batch, texts)
                if cfg.credit_weight else None)  # (2B, T)
    wanted = [(m, [(t, getattr(e, cache)) for t, e in rows])
              for m, cache in ((end_mask, "ref_end"), (credited, "ref_credit")) if m is not None]
    ref_masked = masked_reference(policy, enc, wanted, ref_version)  # one pass for both
    ref_end = ref_masked[0] if end_mask is not None else None
    ref_credit = ref_masked[-1] if credited is not None else None
    empty = (endings.empty_inputs(policy, batch, ref_version, cfg.max_length)
             if cfg.empty_guard else None)
    masks = [m for m, _ in wanted]
    with policy.lock.hold(), policy.active(TRAIN, train=True):
        sums, n, *masked = sequence_logps(policy.model, enc["input_ids"], enc["attention_mask"],
                                          enc["response_mask"], masks=masks)  # (2B,) each
        end = masked[:1] if end_mask is not None else []
        ref = torch.tensor([e.ref[t][0] for t, e in rows], device=sums.device)
        ref_n = torch.tensor([e.ref[t][1] for t, e in rows], device=sums.device)
        b = len(batch)
        logps = sums  # summed log-probs, for the NLL term and the stats
        if credited is not None:  # other tokens of a credited pair count less (credit.py)
            has = credit.pair_has_credit(credited)
            sums = credit.focused(sums, masked[-1], has, cfg.credit_weight)
            ref = credit.focused(ref, ref_credit, has, cfg.credit_weight)
        if needs_length_normalisation(cfg.loss):
            sums, ref = sums / n.clamp(min=1), ref / ref_n.clamp(min=1)
        losses, cr, rr = preference_loss(cfg.loss, sums[:b], sums[b:], ref[:b], ref[b:],
                                         cfg.beta, cfg.label_smoothing, cfg.length_alpha,
                                         n[:b].float(), n[b:].float())
        weight = torch.tensor([e.weight for e in batch], device=losses.device)  # (B,)
        loss = (losses * weight).mean()
        anchor = (ending_anchor(end[0], ref_end, end_mask.any(-1)) if end
                  else torch.zeros((), device=loss.device))
        loss = loss + cfg.end_anchor * anchor
        guard = torch.zeros((), device=loss.device)
        if empty is not None:
            e_enc, ref_empty = empty
            empty_logps, _ = sequence_logps(policy.model, e_enc["input_ids"],
                                            e_enc["attention_mask"], e_enc["response_mask"])
            guard = empty_guard(empty_logps, ref_empty)
        loss = loss + cfg.empty_guard * guard
        nll = chosen_nll(logps[:b] * weight, n[:b].float())
        loss = loss + cfg.sft_weight * nll
        if not torch.isfinite(loss):
            raise RoundError(f"non-finite loss ({loss.item()}); the round is aborted. Lower "
                             f"--lr (now {cfg.lr}) or --beta (now {cfg.beta}).")
        (loss / cfg.grad_accum).backward()
    stats = {"loss": loss.item(), "rewards/chosen": cr.mean().item(),
             "rewards/rejected": rr.mean().item(), "rewards/margins": (cr - rr).mean().item(),
             "rewards/accuracies": (cr > rr).float().mean().item(),
             "logps/chosen": logps[:b].mean().item(), "logps/rejected": logps[b:].mean().item(),
             "end_anchor": anchor.item(), "empty_guard": guard.item(), "nll/chosen": nll.item(),
             "credited_tokens": float(credited.sum()) if credited is not None else 0.0,
             "tokens": int(enc["attention_mask"].sum())}
    return loss, stats


def _kto_micro_step(policy, batch: list[Example], cfg: TrainConfig, ref_version: str):
    """KTO (unpaired): matched rows plus mismatched ones (completion of the next row) for
    the KL reference point z0."""
    tok = policy.tokenizer
    shifted = batch[1:] + batch[:1]
    kl_prompts, kl_texts = [e.prompt for e in batch], [s.chosen for s in shifted]
    ref_kl, _ = score(policy, kl_prompts, kl_texts, ref_version, cfg.max_length)
    prompts = [e.prompt for e in batch] + kl_prompts
    texts = [e.chosen for e in batch] + kl_texts
    enc = {k: v.to(policy.device) for k, v in
           build_batch(tok, prompts, texts, cfg.max_length, tok.pad_token_id).items()}
    b = len(batch)
    with policy.lock.hold(), policy.active(TRAIN, train=True):
        sums, _ = sequence_logps(policy.model, enc["input_ids"], enc["attention_mask"],
                                 enc["response_mask"])  # (2B,)
        ref = torch.tensor([e.ref[e.chosen][0] for e in batch], device=sums.device)
        z0 = kto_kl_estimate(sums[b:], torch.tensor(ref_kl, device=sums.device))
        desirable = torch.tensor([e.desirable for e in batch], device=sums.device)
        losses, rewards = kto_loss(sums[:b], ref, desirable, z0, cfg.beta,
                                   cfg.desirable_weight, cfg.undesirable_weight)
        loss = losses.mean()
        if not torch.isfinite(loss):
            raise RoundError(f"non-finite KTO loss ({loss.item()}); lower --lr (now {cfg.lr}).")
        (loss / cfg.grad_accum).backward()
    good, bad = rewards[desirable], rewards[~desirable]
    stats = {"loss": loss.item(), "kl": float(z0),
             "rewards/chosen": good.mean().item() if len(good) else 0.0,
             "rewards/rejected": bad.mean().item() if len(bad) else 0.0,
             "tokens": int(enc["attention_mask"].sum())}
    stats["rewards/margins"] = stats["rewards/chosen"] - stats["rewards/rejected"]
    return loss, stats


def passes(steps_per_pass: int, epochs: int, min_steps: int) -> int:
    """Passes over the training votes: ``epochs``, or more until ``min_steps`` optimizer
    steps (few decisive votes still move the policy)."""
    return max(epochs, math.ceil(min_steps / max(steps_per_pass, 1)))


def train_draft(policy, store, train: list[Example], cfg: TrainConfig, round_id: int,
                ref_version: str, progress: Progress) -> dict:
    """AdamW over the draft adapter for ``passes(...)`` passes; records per-step metrics."""
    params = policy.train_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed + round_id)
    per_epoch = math.ceil(len(train) / (cfg.micro_batch * cfg.grad_accum))
    epochs = passes(per_epoch, cfg.epochs, cfg.min_steps)
    total, step, t_start, seen = per_epoch * epochs, 0, time.perf_counter(), 0
    last: dict = {}
    for epoch in range(epochs):
        order = train[:]
        rng.shuffle(order)
        micro = [order[i:i + cfg.micro_batch] for i in range(0, len(order), cfg.micro_batch)]
        for g in range(0, len(micro), cfg.grad_accum):
            t0 = time.perf_counter()
            group = micro[g:g + cfg.grad_accum]
            stats = [_micro_step(policy, mb, cfg, ref_version)[1] for mb in group]
            with policy.lock.hold():
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            seen += sum(len(mb) for mb in group)
            dt = time.perf_counter() - t0
            last = _mean_stats(stats)
            last.update({"grad_norm": float(norm), "lr": cfg.lr, "epoch": epoch,
                         "tokens_per_s": last.pop("tokens") * len(stats) / dt,
                         "pairs_per_s": sum(len(mb) for mb in group) / dt})
            store.record_step(round_id, step, last)
            progress.update(step, total, f"Round {round_id}: training")
            failpoint("round.step")  # crash tests: a kill between optimizer steps
    elapsed = time.perf_counter() - t_start
    return {"steps": step, "train_seconds": round(elapsed, 2),
            "pairs_per_s": seen / elapsed if elapsed else 0.0, "final": last}


def _mean_stats(stats: list[dict]) -> dict:
    keys = stats[0].keys()
    return {k: (sum(s[k] for s in stats) if k == "tokens" else
                sum(s[k] for s in stats) / len(stats)) for k in keys}


def load_examples(store, cfg: TrainConfig, fmt, frame, decode: span.Decode | None = None,
                  vectors: credit.Vectors | None = None
                  ) -> tuple[list[Example], list[Example], dict]:
    """(train, held-out, counts) from the votes stored so far (see ``paired_examples``).

    The held-out votes come from ALL rounds so far (the split is a hash of each vote's
    key, so a vote never changes side), the latest ``HELDOUT_MAX`` of them: the gate
    judges each draft on the held-out votes of many rounds, not on the few of the latest
    one. ``--window`` keeps the latest training pairs, counted in pairs that teach
    something (a tie teaches DPO nothing and takes no place), so a rare preference keeps
    its decisive votes for many rounds; the credit test (``--credit-weight``) reads every
    training-side vote so far, and the pairs that hold none of its words count
    ``--uncredited-weight`` times (``credit.focus_round``; counts' ``uncredited``: how
    many training-side pairs hold none). KTO trains on every vote. ``--answer-span`` other
    than full cuts what is scored of a pair (``span.span_rows``, which needs ``decode``:
    the tokenizer's ids -> text); ``vectors`` (word -> input embedding) lets the credit
    test pool a word with its neighbours (``--credit-similarity``)."""
    max_vote = store.last_vote_id()
    voted = store.training_pairs(max_vote_id=max_vote, disagreement=cfg.disagreement)
    rows = method_rows(voted, cfg.method)
    needs = ([f"--answer-span {cfg.answer_span}"] if cfg.answer_span != "full" else []) + (
        [f"--end-anchor {cfg.end_anchor}"] if cfg.end_anchor else []) + (
        [f"--empty-guard {cfg.empty_guard}"] if cfg.empty_guard else []) + (
        [f"--credit-weight {cfg.credit_weight}"] if cfg.credit_weight else [])
    if needs and decode is None:
        raise ValueError(f"{' and '.join(needs)} need the tokenizer's decode")
    rows = span.span_rows(rows, cfg.answer_span, decode)
    paired = paired_examples(rows, fmt, frame)
    train, held = split(paired, cfg.heldout_fraction)
    held = held[-HELDOUT_MAX:]
    credits, uncredited = [], 0
    if cfg.credit_weight and cfg.loss != "kto":  # what every training-side vote says in words
        credits = credit.credited_words(credit.vote_sides(
            [r for r in voted if not is_heldout(r.get("group") or r["key"], cfg.heldout_fraction)]),
            cfg.credit_alpha, vectors, cfg.credit_similarity)
    if credits:  # marked before the window: a pair left out takes no place in it
        for pairs in (train, held):
            credit.mark_credit(pairs, {c.word for c in credits}, decode)
        train, held, uncredited = credit.focus_round(train, held, cfg.uncredited_weight,
                                                     MIN_TRAIN_EXAMPLES)
    train = train[-cfg.window:] if cfg.window else train  # pair order: oldest first
    if cfg.end_anchor or cfg.empty_guard:  # training terms: only the pairs trained on
        endings.mark_endings(rows, train, decode)
    if cfg.loss == "kto":
        held_pairs = {e.pair_id for e in held}
        rows = [r for r in store.kto_rows(max_vote_id=max_vote)
                if r.get("pair_id") is None or r["pair_id"] not in held_pairs]
        train = unpaired_examples(rows, fmt, frame)
    counts = {"max_vote_id": max_vote, "train": len(train), "heldout": len(held),
              "pairs": len(paired), "uncredited": uncredited,
              "credited": [{"word": c.word, "favoured": c.favoured, "chosen_only": c.chosen_only,
                            "rejected_only": c.rejected_only, "p": c.p_value,
                            "group": list(c.group)} for c in credits[:CREDITS_SHOWN]]}
    return train, held, counts


def run_round(policy, store, cfg: TrainConfig, *, fmt, frame, adapters_dir: Path,
              trigger: str = "auto", progress: Progress | None = None,
              on_accept=None, sampler=None,
              health_cache: health.AnswerCache | None = None) -> RoundOutcome:
    """Run one full round; never raises for training problems (they are recorded).

    ``sampler`` (a ``generate.Sampler``) runs the answer-health check; without one, or
    with ``cfg.health_samples == 0``, the round is judged on held-out accuracy alone.
    ``health_cache`` keeps the check's answers of base and saved versions for later
    rounds (the service passes one; without it each check samples everything).
    """
    progress = progress or NullProgress()
    serving = policy.serving
    waited = policy.lock.waited_seconds()  # to tell the time generation cut in
    round_id = store.start_round(config=dataclasses.asdict(cfg), trigger=trigger)
    counts: dict = {}
    version: str | None = None
    try:
        progress.update(0, 1, f"Round {round_id}: preparing data")
        tok = policy.tokenizer
        train, held, counts = load_examples(
            store, cfg, fmt, frame, lambda ids: tok.decode(ids, skip_special_tokens=True),
            credit.model_vectors(tok, policy.model))
        store.set_state(READING_THROUGH, counts["max_vote_id"])  # from now on: no undo
        if len(train) < MIN_TRAIN_EXAMPLES:
            raise RoundError(f"only {len(train)} usable training examples (need at least "
                             f"{MIN_TRAIN_EXAMPLES}); collect more A/B votes first.")
        ref_version = reference_version(cfg, serving)
        progress.update(0, 1, f"Round {round_id}: reference log-probs ({ref_version})")
        t0 = time.perf_counter()
        counts["ref_computed"] = attach_reference(train + held, policy, store, ref_version,
                                                  cfg.max_length, cfg.micro_batch * 2)
        ref_s, t0 = time.perf_counter() - t0, time.perf_counter()
        before = heldout_accuracy(policy, held, serving, cfg, ref_version)
        held_s = time.perf_counter() - t0
        policy.reset_train_adapter(serving)
        fit = train_draft(policy, store, train, cfg, round_id, ref_version, progress)
        t0 = time.perf_counter()
        after = heldout_accuracy(policy, held, TRAIN, cfg, ref_version)
        held_s += time.perf_counter() - t0
        metrics = {"heldout_before": before, "heldout_after": after, **fit,
                   "reference_seconds": round(ref_s, 2), "heldout_seconds": round(held_s, 2)}
        verdict = gate.compare(before["hits"], after["hits"], cfg.accept_tolerance,
                               cfg.accept_alpha)
        metrics["heldout_test"] = dataclasses.asdict(verdict)
        reason = None
        if verdict.got_worse:
            reason = (f"held-out accuracy fell from {before['accuracy']:.3f} to "
                      f"{after['accuracy']:.3f} on {after['n']} pairs: {verdict.worse} got "
                      f"worse, {verdict.better} better (sign test p = {verdict.p_value:.3f} < "
                      f"{cfg.accept_alpha}; tolerance {cfg.accept_tolerance}); serving stays "
                      f"{serving}")
        elif sampler is not None and cfg.health_samples:
            progress.update(0, 1, f"Round {round_id}: answer health ({cfg.health_samples} "
                            "answers each)")
            recent = store.recent_voted_prompts(cfg.health_samples * health.MAX_BATCHES,
                                                counts["max_vote_id"])
            reason = health.draft_problem(sampler, train, held, serving, cfg, round_id,
                                          metrics, recent, health_cache)
        metrics["lock_wait_seconds"] = round(policy.lock.waited_seconds() - waited, 2)
        if reason:
            store.finish_round(round_id, "rejected", counts=counts, metrics=metrics,
                               error=reason)
            return RoundOutcome(round_id, "rejected", None, metrics, reason)
        t_save = time.perf_counter()
        version = store.next_adapter_version()
        meta = {"version": version, "parent_version": serving, "round": round_id,
                "method": cfg.method, "loss": cfg.loss, "beta": cfg.beta, "reference": ref_version,
                "counts": counts, "metrics": metrics, "created": time.time()}
        path = adapters.write_version(adapters_dir, version,
                                      lambda d: policy.save_train_adapter(d, meta))
        failpoint("adapter.before_record")  # crash tests: dir in place, no DB row yet
        # 'saved' until it serves: a failed swap never leaves a 'ready' version behind.
        store.add_adapter(version, str(path), parent_version=serving, round_id=round_id,
                          status="saved", metrics=metrics)
        with policy.switching:  # an admin's rollback cannot slip in between
            if policy.serving != serving:
                reason = health.serving_changed(serving, policy.serving)
                with store.write():
                    store.set_adapter_status(version, "rejected")
                    store.finish_round(round_id, "rejected", counts=counts,
                                       metrics=metrics, error=reason)
                return RoundOutcome(round_id, "rejected", None, metrics, reason)
            policy.swap(version, path)
            metrics["hotswap_seconds"] = round(time.perf_counter() - t_save, 3)  # save -> serving
            with store.write():  # ready, serving and accepted in one transaction
                store.set_adapter_status(version, "ready")
                store.set_serving_adapter(version)
                store.finish_round(round_id, "accepted", counts=counts, metrics=metrics,
                                   adapter_version=version)
    except SamplingAborted:
        raise  # the service is stopping: like a kill, the next start marks it interrupted
    except Exception as e:  # noqa: BLE001 - any failure is recorded; serving stays
        msg = _explain(e)
        log.exception("round %d failed", round_id)
        with store.write():
            if version and store.get_adapter(version):
                store.set_adapter_status(version, "failed")
            store.finish_round(round_id, "failed", counts=counts, error=msg)
        return RoundOutcome(round_id, "failed", None, {}, msg)
    progress.update(1, 1, f"Round {round_id}: accepted as {version}")
    if on_accept:  # after the commit: a failure here cannot un-accept a serving round
        try:
            on_accept(version)
        except Exception:  # noqa: BLE001 - the version serves; housekeeping is retried
            log.exception("round %d: after-swap housekeeping failed", round_id)
    return RoundOutcome(round_id, "accepted", version, metrics)


def _explain(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
        return (f"{text} -- out of memory: lower --micro-batch (try 1) and raise --grad-accum, "
                "or lower --max-length.")
    return text
