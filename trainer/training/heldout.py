"""Held-out reward accuracy: does the implicit reward rank the annotator's choice first?

DPO's implicit reward (Rafailov et al. 2023, Eq. 5) is r(x, y) = beta * log(pi(y|x) /
pi_ref(y|x)). On the held-out votes a round scores it before and after training; the
gate (trainer/training/gate.py) compares the two pair by pair.
"""

from __future__ import annotations

from trainer.config import TrainConfig
from trainer.model.scoring import score
from trainer.training.data import Example
from trainer.training.losses import needs_length_normalisation


def heldout_accuracy(policy, held: list[Example], version: str, cfg: TrainConfig) -> dict:
    """Implicit-reward accuracy on held-out pairs: does beta*log(pi/pi_ref) rank chosen first?

    With ``--length-alpha`` the reward is R-DPO's, beta*log(pi/pi_ref) + alpha |y|, the
    one the round optimises. Ties (equal rewards, e.g. policy == reference) count half.
    """
    paired = [e for e in held if e.rejected is not None]
    if not paired:
        return {"accuracy": None, "n": 0, "margin": None, "hits": []}
    prompts = [e.prompt for e in paired for _ in range(2)]
    texts = [t for e in paired for t in (e.chosen, e.rejected)]
    sums, counts = score(policy, prompts, texts, version, cfg.max_length, cfg.micro_batch * 2)
    hits: list[float] = []
    margins = []
    for i, e in enumerate(paired):
        pc, pr = _norm(cfg, sums[2 * i], counts[2 * i]), _norm(cfg, sums[2 * i + 1],
                                                                counts[2 * i + 1])
        rc, rr = _norm(cfg, *e.ref[e.chosen]), _norm(cfg, *e.ref[e.rejected])
        margin = cfg.beta * ((pc - rc) - (pr - rr))
        margin += cfg.length_alpha * (counts[2 * i] - counts[2 * i + 1])  # R-DPO's reward
        margins.append(margin)
        hits.append(1.0 if margin > 1e-9 else 0.5 if abs(margin) <= 1e-9 else 0.0)
    return {"accuracy": sum(hits) / len(paired), "n": len(paired),
            "margin": sum(margins) / len(margins), "hits": hits}


def _norm(cfg: TrainConfig, logp: float, n: int) -> float:
    return logp / max(n, 1) if needs_length_normalisation(cfg.loss) else logp
