"""Held-out reward accuracy: does the implicit reward rank the annotator's choice first?

DPO's implicit reward (Rafailov et al. 2023, Eq. 5) is r(x, y) = beta * log(pi(y|x) /
pi_ref(y|x)). On the held-out votes a round scores it before and after training; the
gate (trainer/training/gate.py) compares the two pair by pair.
"""

from __future__ import annotations

import torch

from trainer.config import TrainConfig
from trainer.model.logprobs import build_batch, sequence_logps
from trainer.model.scoring import masked_reference, score
from trainer.training import credit
from trainer.training.data import Example
from trainer.training.losses import needs_length_normalisation


def heldout_accuracy(policy, held: list[Example], version: str, cfg: TrainConfig,
                     ref_version: str | None = None) -> dict:
    """Implicit-reward accuracy on held-out pairs: does beta*log(pi/pi_ref) rank chosen first?

    The reward is the one the round optimises: with ``--length-alpha`` R-DPO's,
    beta*log(pi/pi_ref) + alpha |y|; in a round that credits words (``--credit-weight``,
    held-out pairs marked like the training ones), a pair holding a credited token is
    scored on those tokens in full and its other tokens 1 / (1 + weight)
    (``credit.focused``, reference log-probs under ``ref_version``). Ties (equal
    rewards, e.g. policy == reference) count half.
    """
    paired = [e for e in held if e.rejected is not None]
    if not paired:
        return {"accuracy": None, "n": 0, "margin": None, "hits": []}
    prompts = [e.prompt for e in paired for _ in range(2)]
    texts = [t for e in paired for t in (e.chosen, e.rejected)]
    sums, counts = score(policy, prompts, texts, version, cfg.max_length, cfg.micro_batch * 2)
    refs = [e.ref[t][0] for e in paired for t in (e.chosen, e.rejected)]
    if cfg.credit_weight and ref_version is not None:
        focus_marked(policy, paired, version, ref_version, cfg, sums, refs)
    hits: list[float] = []
    margins = []
    for i, e in enumerate(paired):
        pc, pr = _norm(cfg, sums[2 * i], counts[2 * i]), _norm(cfg, sums[2 * i + 1],
                                                                counts[2 * i + 1])
        rc = _norm(cfg, refs[2 * i], e.ref[e.chosen][1])
        rr = _norm(cfg, refs[2 * i + 1], e.ref[e.rejected][1])
        margin = cfg.beta * ((pc - rc) - (pr - rr))
        margin += cfg.length_alpha * (counts[2 * i] - counts[2 * i + 1])  # R-DPO's reward
        margins.append(margin)
        hits.append(1.0 if margin > 1e-9 else 0.5 if abs(margin) <= 1e-9 else 0.0)
    return {"accuracy": sum(hits) / len(paired), "n": len(paired),
            "margin": sum(margins) / len(margins), "hits": hits}


def focus_marked(policy, paired: list[Example], version: str, ref_version: str,
                 cfg: TrainConfig, sums: list[float], refs: list[float]) -> None:
    """Replace, in place, the summed log-probs (``sums``, under ``version``) and reference
    log-probs (``refs``) of the pairs that hold a credited token (chosen, rejected
    interleaved, as ``heldout_accuracy`` lists them) with ``credit.focused``'s."""
    marked = [i for i, e in enumerate(paired) if any(any(m) for m in e.credit.values())]
    step = max(cfg.micro_batch, 1)
    for j in range(0, len(marked), step):
        idx = marked[j:j + step]
        batch = [paired[i] for i in idx]
        texts = [e.chosen for e in batch] + [e.rejected for e in batch]
        enc = {k: v.to(policy.device) for k, v in build_batch(
            policy.tokenizer, [e.prompt for e in batch] * 2, texts, cfg.max_length,
            policy.tokenizer.pad_token_id).items()}
        mask = credit.credit_weights(enc["response_mask"], batch, texts)  # (2B, T)
        cache = [(t, e.ref_credit) for t, e in zip(texts, batch * 2)]
        ref_credited = masked_reference(policy, enc, [(mask, cache)], ref_version)[0]  # (2B,)
        with policy.lock.hold(), policy.active(version), torch.no_grad():
            _, _, credited = sequence_logps(policy.model, enc["input_ids"],
                                            enc["attention_mask"], enc["response_mask"],
                                            masks=[mask])  # (2B,)
        has = credit.pair_has_credit(mask)  # (2B,)
        rows = [2 * i for i in idx] + [2 * i + 1 for i in idx]  # chosen rows, then rejected
        total = torch.tensor([sums[r] for r in rows], device=mask.device)
        ref = torch.tensor([refs[r] for r in rows], device=mask.device)
        new_sums = credit.focused(total, credited, has, cfg.credit_weight).tolist()
        new_refs = credit.focused(ref, ref_credited, has, cfg.credit_weight).tolist()
        for k, r in enumerate(rows):
            sums[r], refs[r] = new_sums[k], new_refs[k]


def _norm(cfg: TrainConfig, logp: float, n: int) -> float:
    return logp / max(n, 1) if needs_length_normalisation(cfg.loss) else logp
