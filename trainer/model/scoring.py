"""Per-sequence log-probs of (prompt, response) texts under a policy version.

Used for DPO's implicit reward r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) (the paper's
"your language model is secretly a reward model", Eq. 5), for reference log-probs that
the trainer caches, and for KL estimates of samples.
"""

from __future__ import annotations

import hashlib

import torch

from trainer.model.logprobs import (
    Seq,
    body_head_softcap,
    build_batch,
    response_hidden,
    sequence_logps,
    token_kl,
)


def text_hash(prompt: Seq, response: Seq) -> str:
    """Stable key of a (formatted prompt, response) pair for the reference-logp cache;
    token ids (``Seq`` tuples) key as ``ids:1,2,3``."""
    def canon(x: Seq) -> str:
        return x if isinstance(x, str) else "ids:" + ",".join(map(str, x))
    return hashlib.sha256(f"{canon(prompt)}\x00{canon(response)}".encode()).hexdigest()[:32]


def score(policy, prompts: list[Seq], responses: list[Seq], version: str, max_length: int,
          batch_size: int = 8, priority: bool = False) -> tuple[list[float], list[int]]:
    """Summed log-prob and token count of each response given its (formatted) prompt.

    Responses are scored as given: pass them framed (``Sampler.scored``), or as the
    token ids they were sampled as.

    Runs under the model lock, one micro-batch at a time, without gradients.
    """
    sums: list[float] = []
    counts: list[int] = []
    tok = policy.tokenizer
    for i in range(0, len(prompts), batch_size):
        batch = build_batch(tok, prompts[i:i + batch_size], responses[i:i + batch_size],
                            max_length, tok.pad_token_id)
        batch = {k: v.to(policy.device) for k, v in batch.items()}
        with policy.lock.hold(priority=priority), policy.active(version), torch.no_grad():
            s, n = sequence_logps(policy.model, batch["input_ids"], batch["attention_mask"],
                                  batch["response_mask"])
        sums.extend(float(x) for x in s)
        counts.extend(int(x) for x in n)
    return sums, counts


def implicit_rewards(policy, prompts: list[Seq], responses: list[Seq], version: str,
                     ref_version: str, beta: float, max_length: int) -> list[float]:
    """beta * (log pi_version(y|x) - log pi_ref(y|x)) for each row (0 when version == ref)."""
    if version == ref_version:
        return [0.0] * len(prompts)
    pol, _ = score(policy, prompts, responses, version, max_length, priority=True)
    ref, _ = score(policy, prompts, responses, ref_version, max_length, priority=True)
    return [beta * (p - r) for p, r in zip(pol, ref)]


def mean_token_kl(policy, prompts: list[str], responses: list[str], version: str,
                  base: str, max_length: int, batch_size: int = 4) -> tuple[float, int]:
    """Mean over response tokens of the exact KL(pi_version || pi_base) of the next-token
    distribution at each position (see ``logprobs.token_kl``), and the token count.

    Both passes of a micro-batch run under one hold of the model lock, without gradients.
    """
    tok = policy.tokenizer
    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        batch = build_batch(tok, prompts[i:i + batch_size], responses[i:i + batch_size],
                            max_length, tok.pad_token_id)
        args = [batch[k].to(policy.device) for k in
                ("input_ids", "attention_mask", "response_mask")]
        with policy.lock.hold(), torch.no_grad():
            with policy.active(version):
                h_p, _ = response_hidden(policy.model, *args)  # (R, H)
            with policy.active(base):
                h_q, _ = response_hidden(policy.model, *args)  # (R, H)
            _, head, softcap = body_head_softcap(policy.model)
            kl = token_kl(head, h_p, h_q, softcap)  # (R,)
        total += float(kl.sum())
        count += int(kl.numel())
    return total / max(count, 1), count


def masked_reference(policy, enc: dict, wanted: list[tuple[torch.Tensor, list]], version: str
                     ) -> list[torch.Tensor]:
    """For each (mask (B, T), cache) of ``wanted``: the (B,) log-prob sums of the tokens
    the mask marks, under ``version``, per row of the encoded batch ``enc``. A cache gives
    each row's (answer, dict answer -> value): values found there are reused, and one
    no-grad pass fills in every row that marked tokens but has no value yet (a reference
    value depends only on the answer)."""
    def missing(mask, cache):
        return any(m and t not in store for m, (t, store) in zip(mask.any(-1).tolist(), cache))

    if any(missing(mask, cache) for mask, cache in wanted):
        with policy.lock.hold(), policy.active(version), torch.no_grad():
            _, _, *refs = sequence_logps(policy.model, enc["input_ids"], enc["attention_mask"],
                                         enc["response_mask"],
                                         masks=[mask for mask, _ in wanted])  # (B,) each
        for (_, cache), ref in zip(wanted, refs):
            for (t, store), value in zip(cache, ref.tolist()):
                store.setdefault(t, value)
    return [torch.tensor([store.get(t, 0.0) for t, store in cache], device=mask.device)
            for mask, cache in wanted]
