"""Held-out reward accuracy: does the implicit reward rank the annotator's choice first?

DPO's implicit reward (Rafailov et al. 2023, Eq. 5) is r(x, y) = beta * log(pi(y|x) /
pi_ref(y|x)). On the held-out votes a round scores it before and after training; the
gate (trainer/training/gate.py) compares the two pair by pair.
"""

from __future__ import annotations

import torch

from trainer.config import TrainConfig
from trainer.model.logprobs import build_batch, sequence_logps
from trainer.model.scoring import masked_reference
from trainer.training import credit
from trainer.training.data import Example
from trainer.training.losses import needs_length_normalisation


def heldout_accuracy(policy, held: list[Example], version: str, cfg: TrainConfig,
                     ref_version: str) -> dict:
    """Implicit-reward accuracy on held-out pairs: does beta*log(pi/pi_ref) rank chosen first?

    The reward is the one the round optimises: with ``--length-alpha`` R-DPO's,
    beta*log(pi/pi_ref) + alpha |y|; in a round that credits words (held-out pairs marked
    like the training ones, ``credit.mark_credit``), a pair with credited tokens is
    scored on them in full and on its other tokens 1 / (1 + ``--credit-weight``)
    (``credit.focused``). ``accuracy_whole`` is the accuracy of the whole answers'
    reward, for the record. Ties count half; with ``version`` = ``ref_version`` the
    reward is 0 and every pair is a tie.
    """
    paired = [e for e in held if e.rejected is not None]
    if not paired:
        return {"accuracy": None, "accuracy_whole": None, "n": 0, "margin": None, "hits": []}
    if version == ref_version:
        return {"accuracy": 0.5, "accuracy_whole": 0.5, "n": len(paired), "margin": 0.0,
                "hits": [0.5] * len(paired)}
    margins, whole = [], []
    for e, s in zip(paired, _scored(policy, paired, version, ref_version, cfg)):
        ref_n = (e.ref[e.chosen][1], e.ref[e.rejected][1])
        margins.append(_margin(cfg, s["focused"], s["ref_focused"], s["n"], ref_n))
        whole.append(_margin(cfg, s["whole"], s["ref_whole"], s["n"], ref_n))
    hits = [_hit(m) for m in margins]
    return {"accuracy": sum(hits) / len(paired),
            "accuracy_whole": sum(_hit(m) for m in whole) / len(paired), "n": len(paired),
            "margin": sum(margins) / len(margins), "hits": hits}


def _scored(policy, paired: list[Example], version: str, ref_version: str,
            cfg: TrainConfig) -> list[dict[str, tuple]]:
    """Per pair, (chosen, rejected) of: the summed log-probs under ``version`` and the
    reference, whole ("whole", "ref_whole", the latter from ``e.ref``) and focused on the
    credited tokens ("focused", "ref_focused"; the whole ones where nothing is credited),
    and the token counts ("n"), from one pass per micro-batch."""
    out = []
    step = max(cfg.micro_batch, 1)
    tok = policy.tokenizer
    for i in range(0, len(paired), step):
        batch = paired[i:i + step]
        texts = [e.chosen for e in batch] + [e.rejected for e in batch]
        enc = {k: v.to(policy.device) for k, v in build_batch(
            tok, [e.prompt for e in batch] * 2, texts, cfg.max_length, tok.pad_token_id).items()}
        mask = credit.credit_weights(enc["response_mask"], batch, texts)  # (2B, T)
        with policy.lock.hold(), policy.active(version), torch.no_grad():
            total, n, credited = sequence_logps(policy.model, enc["input_ids"],
                                                enc["attention_mask"], enc["response_mask"],
                                                masks=[mask])  # (2B,) each
        ref = torch.tensor([e.ref[t][0] for t, e in zip(texts, batch * 2)], device=total.device)
        focused, ref_focused = total, ref
        has = credit.pair_has_credit(mask)  # (2B,)
        if cfg.credit_weight and bool(has.any()):
            cache = [(t, e.ref_credit) for t, e in zip(texts, batch * 2)]
            ref_credited = masked_reference(policy, enc, [(mask, cache)], ref_version)[0]
            focused = credit.focused(total, credited, has, cfg.credit_weight)
            ref_focused = credit.focused(ref, ref_credited, has, cfg.credit_weight)
        cols = {"focused": focused, "ref_focused": ref_focused, "whole": total,
                "ref_whole": ref, "n": n}
        b = len(batch)
        for j in range(b):
            out.append({k: (v[j].item(), v[b + j].item()) for k, v in cols.items()})
    return out


def _margin(cfg: TrainConfig, pol: tuple, ref: tuple, n: tuple, ref_n: tuple) -> float:
    """r(chosen) - r(rejected) from (chosen, rejected) log-probs under the policy and the
    reference and their token counts (per token for IPO; R-DPO's length term added)."""
    chosen = _norm(cfg, pol[0], n[0]) - _norm(cfg, ref[0], ref_n[0])
    rejected = _norm(cfg, pol[1], n[1]) - _norm(cfg, ref[1], ref_n[1])
    return cfg.beta * (chosen - rejected) + cfg.length_alpha * (n[0] - n[1])


def _hit(margin: float) -> float:
    return 1.0 if margin > 1e-9 else 0.5 if abs(margin) <= 1e-9 else 0.0


def _norm(cfg: TrainConfig, logp: float, n: int) -> float:
    return logp / max(n, 1) if needs_length_normalisation(cfg.loss) else logp
