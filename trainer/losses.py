"""Preference losses: pure functions of per-sequence log-prob tensors of shape (B,).

Notation (DPO paper, Rafailov et al. 2023, arXiv 2305.18290): for a prompt x with a
chosen response y_w and a rejected y_l, pi = log pi_theta(y|x) and r = log pi_ref(y|x),

    Delta = (pi_c - r_c) - (pi_r - r_r),     rho_c = beta (pi_c - r_c),  rho_r = beta (pi_r - r_r)

rho is DPO's implicit reward (Eq. 5). Every paired loss returns (losses (B,),
chosen_rewards (B,), rejected_rewards (B,)) with the rewards detached. Pick one by name
with ``preference_loss(loss_type, ...)``; ``LOSSES`` is the registry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
logsig = F.logsigmoid


def dpo_sigmoid(delta: Tensor, rc: Tensor, rr: Tensor, beta: float, eps: float) -> Tensor:
    """DPO, Rafailov et al. 2023 Eq. 7: -log sigma(beta Delta).

    With label smoothing eps > 0 this is conservative DPO (cDPO, Mitchell 2023): the
    label is assumed flipped with probability eps,
    -(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta).
    """
    z = beta * delta
    return -(1 - eps) * logsig(z) - eps * logsig(-z)


def ipo(delta: Tensor, rc: Tensor, rr: Tensor, beta: float, eps: float) -> Tensor:
    """IPO, Azar et al. 2023 (arXiv 2310.12036) Eq. 17: (Delta - 1/(2 beta))^2.

    The caller passes per-token MEAN log-probs (length-normalised), as the IPO authors
    and TRL do; see ``needs_length_normalisation``. Here beta is IPO's tau.
    """
    return (delta - 1 / (2 * beta)) ** 2


def hinge(delta: Tensor, rc: Tensor, rr: Tensor, beta: float, eps: float) -> Tensor:
    """SLiC-HF calibration loss, Zhao et al. 2023 (arXiv 2305.10425) Eq. 1 with the
    reference log-ratio of DPO: max(0, 1 - beta Delta)."""
    return torch.relu(1 - beta * delta)


def robust(delta: Tensor, rc: Tensor, rr: Tensor, beta: float, eps: float) -> Tensor:
    """Robust DPO (rDPO), Chowdhury et al. 2024 (arXiv 2403.00409) Eq. 8: an unbiased
    loss under label-flip rate eps,
    [-(1 - eps) log sigma(beta Delta) + eps log sigma(-beta Delta)] / (1 - 2 eps)."""
    z = beta * delta
    return (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps)


def bco_pair(delta: Tensor, rc: Tensor, rr: Tensor, beta: float, eps: float) -> Tensor:
    """Binary Classifier Optimization, Jung et al. 2024 (arXiv 2404.04656) Eq. 9, paired:
    -log sigma(rho_c - delta) - log sigma(-(rho_r - delta)).

    The reward shift delta is a running mean of rewards in the paper and TRL; to stay a
    pure function we use the mean of this batch's chosen and rejected rewards (detached).
    """
    shift = torch.cat([rc, rr]).mean().detach()
    return -logsig(rc - shift) - logsig(-(rr - shift))


def nca_pair(delta: Tensor, rc: Tensor, rr: Tensor, beta: float, eps: float) -> Tensor:
    """Noise Contrastive Alignment, Chen et al. 2024 (arXiv 2402.05369) Eq. 12, paired:
    -log sigma(rho_c) - 1/2 log sigma(-rho_c) - 1/2 log sigma(-rho_r)."""
    return -logsig(rc) - 0.5 * logsig(-rc) - 0.5 * logsig(-rr)


def sppo_hard(delta: Tensor, rc: Tensor, rr: Tensor, beta: float, eps: float) -> Tensor:
    """Self-Play Preference Optimization, Wu et al. 2024 (arXiv 2405.00675) Eq. 4.8 with
    hard labels (winner prob 1, loser 0): (a - 1/(2 beta))^2 + (b + 1/(2 beta))^2 with
    a = pi_c - r_c, b = pi_r - r_r (the log-ratios, i.e. rewards / beta)."""
    a, b = rc / beta, rr / beta
    return (a - 1 / (2 * beta)) ** 2 + (b + 1 / (2 * beta)) ** 2


LOSSES: dict[str, Callable[..., Tensor]] = {
    "sigmoid": dpo_sigmoid, "ipo": ipo, "hinge": hinge, "robust": robust,
    "bco_pair": bco_pair, "nca_pair": nca_pair, "sppo_hard": sppo_hard,
}


def needs_length_normalisation(loss_type: str) -> bool:
    """True when the caller must pass per-token mean log-probs (IPO)."""
    return loss_type == "ipo"


def preference_loss(loss_type: str, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                    ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, beta: float,
                    label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(losses, chosen_rewards, rejected_rewards), all (B,); rewards are detached."""
    fn = LOSSES.get(loss_type)
    if fn is None:
        raise ValueError(f"unknown loss type {loss_type!r}: use one of "
                         f"{', '.join(LOSSES)} (or kto for unpaired data)")
    chosen = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected = policy_rejected_logps - ref_rejected_logps  # (B,)
    rc, rr = beta * chosen, beta * rejected
    losses = fn(chosen - rejected, rc, rr, beta, label_smoothing)
    return losses, rc.detach(), rr.detach()


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z0: KL(pi || pi_ref) estimated on MISMATCHED pairs.

    The trainer pairs each prompt with the completion of another row of the batch (a
    shift by one), so z0 measures how far the policy drifts on text it was not asked
    to prefer. Mean of (policy - ref), clamped at 0, detached (Ethayarajh et al. 2024,
    arXiv 2402.01306, section 4.1).
    """
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl_ref_point: Tensor,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[Tensor, Tensor]:
    """KTO, Ethayarajh et al. 2024 (arXiv 2402.01306) Eq. 8, for unpaired rows.

    r = log pi/pi_ref of each (prompt, completion); desirable rows lose
    lambda_D (1 - sigma(beta (r - z0))), undesirable rows lambda_U (1 - sigma(beta (z0 - r))).
    Returns (losses (B,), rewards beta * r detached (B,)).
    """
    r = policy_logps - ref_logps  # (B,)
    z0 = kl_ref_point.detach()
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable.bool(), good, bad), (beta * r).detach()


def reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Share of pairs whose implicit reward ranks the chosen response first."""
    return (chosen_rewards > rejected_rewards).float().mean().item()
