"""Preference losses: pure functions of per-sequence log-prob tensors of shape (B,).

Notation (DPO, Rafailov et al. 2023, arXiv 2305.18290). For a prompt x with a chosen
response y_c and a rejected y_r, let pi = log pi_theta(y | x) and ref = log pi_ref(y | x)
(summed over response tokens, or per-token means for IPO), and

    a = pi_c - ref_c,   b = pi_r - ref_r          (log-ratios, (B,))
    Delta = a - b,      rho_c = beta a,  rho_r = beta b

rho is DPO's implicit reward (Eq. 5). Every paired variant is a function
``(a, b, beta, eps) -> losses (B,)`` registered in ``LOSSES``; ``preference_loss`` picks
one by name and also returns the detached rewards. Variants that have no label-noise
parameter ignore eps. ``kto_loss`` covers unpaired (thumbs up / down) rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def sigmoid_loss(a: Tensor, b: Tensor, beta: float, eps: float) -> Tensor:
    """DPO, Rafailov et al. 2023 (arXiv 2305.18290) Eq. 7: -log sigma(beta Delta).

    With label smoothing eps > 0 it is conservative DPO (cDPO; Mitchell 2023, "A note on
    DPO with noisy preferences"): the label is taken as flipped with probability eps,
    -(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta). eps = 0 gives DPO.
    """
    z = beta * (a - b)  # (B,)
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def ipo_loss(a: Tensor, b: Tensor, beta: float, eps: float) -> Tensor:
    """IPO, Azar et al. 2023 (arXiv 2310.12036) Eq. 17: (Delta - 1 / (2 beta))^2.

    beta plays IPO's tau. The CALLER passes per-token MEAN log-probs (length-normalised,
    ``logprobs.mean_logps``), as TRL does; ``needs_length_normalisation("ipo")`` is True.
    A squared loss with a target margin 1/(2 beta): past it, the gradient pushes the
    chosen log-prob back down (not monotone in a).
    """
    return (a - b - 1 / (2 * beta)) ** 2


def hinge_loss(a: Tensor, b: Tensor, beta: float, eps: float) -> Tensor:
    """SLiC-HF, Zhao et al. 2023 (arXiv 2305.10425): its rank-calibration hinge loss
    with margin 1, on reference-normalised log-ratios (as TRL's "hinge"):
    max(0, 1 - beta Delta).
    Zero loss and zero gradient once beta Delta >= 1."""
    return torch.relu(1 - beta * (a - b))


def robust_loss(a: Tensor, b: Tensor, beta: float, eps: float) -> Tensor:
    """Robust DPO (rDPO), Chowdhury et al. 2024 (arXiv 2403.00409): the DPO loss
    de-biased for labels flipped at rate eps < 1/2,
    [-(1 - eps) log sigma(beta Delta) + eps log sigma(-beta Delta)] / (1 - 2 eps).
    eps = 0 gives DPO."""
    z = beta * (a - b)  # (B,)
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def bco_pair_loss(a: Tensor, b: Tensor, beta: float, eps: float) -> Tensor:
    """Binary Classifier Optimization, Jung et al. 2024 (arXiv 2404.04656), paired form:
    each reward rho = beta * log-ratio is classified against a shift delta,
    -log sigma(rho_c - delta) - log sigma(-(rho_r - delta)).

    The paper's delta is a running mean of past rewards (trainer state). To stay pure,
    delta here is the mean of this batch's chosen and rejected rewards, detached (a
    constant for the gradient): an estimate of the same quantity from the batch alone.
    TRL 1.x's "bco_pair" uses no delta at all (delta = 0).
    """
    rho_c, rho_r = beta * a, beta * b  # (B,), (B,)
    delta = torch.cat([rho_c, rho_r]).mean().detach()  # ()
    return -F.logsigmoid(rho_c - delta) - F.logsigmoid(-(rho_r - delta))


def nca_pair_loss(a: Tensor, b: Tensor, beta: float, eps: float) -> Tensor:
    """Noise Contrastive Alignment, Chen et al. 2024 (arXiv 2402.05369), the paired
    (K = 2 responses) NCA loss as in TRL's "nca_pair":
    -log sigma(rho_c) - 1/2 log sigma(-rho_c) - 1/2 log sigma(-rho_r).
    It raises rho_c only while sigma(rho_c) < 2/3, i.e. rho_c < log 2."""
    rho_c, rho_r = beta * a, beta * b  # (B,), (B,)
    return -F.logsigmoid(rho_c) - 0.5 * F.logsigmoid(-rho_c) - 0.5 * F.logsigmoid(-rho_r)


def sppo_hard_loss(a: Tensor, b: Tensor, beta: float, eps: float) -> Tensor:
    """Self-Play Preference Optimization, Wu et al. 2024 (arXiv 2405.00675), the
    squared loss of Algorithm 1 (the update of Eq. 4.7) with hard win probabilities
    (1 for the chosen, 0 for the rejected), as TRL's "sppo_hard":
    (a - 1/(2 beta))^2 + (b + 1/(2 beta))^2.
    Targets are absolute log-ratios: a is pushed up only while a < 1/(2 beta)."""
    half = 1 / (2 * beta)
    return (a - half) ** 2 + (b + half) ** 2


LOSSES: dict[str, Callable[[Tensor, Tensor, float, float], Tensor]] = {
    "sigmoid": sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "robust": robust_loss,
    "bco_pair": bco_pair_loss,
    "nca_pair": nca_pair_loss,
    "sppo_hard": sppo_hard_loss,
}


def needs_length_normalisation(loss_type: str) -> bool:
    """True when the caller must pass per-token MEAN log-probs instead of sums (IPO)."""
    return loss_type == "ipo"


def _check(loss_type: str, beta: float, label_smoothing: float) -> None:
    if loss_type not in LOSSES:
        raise ValueError(f"unknown loss type {loss_type!r}: use one of "
                         f"{', '.join(LOSSES)} (or kto_loss for unpaired rows)")
    if beta <= 0:
        raise ValueError(f"beta={beta}: must be > 0 (try 0.1)")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 0.5)")


def preference_loss(loss_type: str, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                    ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, beta: float,
                    label_smoothing: float = 0.0, length_alpha: float = 0.0,
                    chosen_lengths: Tensor | None = None,
                    rejected_lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair loss of variant ``loss_type`` and the implicit rewards.

    All inputs (B,). Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,))
    with rewards = beta * (policy - ref), DETACHED (for logging and reward accuracy).
    ``label_smoothing`` is the assumed label-flip rate eps of cDPO ("sigmoid") and
    rDPO ("robust"); the other variants ignore it.

    ``length_alpha`` > 0 is R-DPO's length term (Park et al. 2024, arXiv 2403.19159,
    Eq. 8-9): the reward of an answer of |y| tokens is rho + alpha |y|, so the DPO margin
    becomes beta Delta + alpha (|y_c| - |y_r|). A preference that is explained by
    length alone needs no change of the policy; every variant gets the same reward
    shift (a += alpha |y_c| / beta, b += alpha |y_r| / beta). Needs both lengths (B,).
    """
    _check(loss_type, beta, label_smoothing)
    a = policy_chosen_logps - ref_chosen_logps  # (B,)
    b = policy_rejected_logps - ref_rejected_logps  # (B,)
    rewards = (beta * a).detach(), (beta * b).detach()
    if length_alpha:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("length_alpha > 0 needs chosen_lengths and rejected_lengths")
        a = a + length_alpha / beta * chosen_lengths  # (B,)
        b = b + length_alpha / beta * rejected_lengths  # (B,)
    losses = LOSSES[loss_type](a, b, beta, label_smoothing)  # (B,)
    return losses, *rewards


def ending_anchor(policy_end_logps: Tensor, ref_end_logps: Tensor, has_end: Tensor) -> Tensor:
    """Hinge that keeps answers ending: mean over the answers that ended (``has_end``
    (B,) bool) of max(0, ref_end - policy_end), where *_end (B,) is the log-prob of the
    answer's own ending (stop string or end-of-sequence token) at the place it ended.

    The form is DPO-Positive's penalty (Pal et al. 2024, "Smaug", arXiv 2402.13228,
    Eq. 3: lambda max(0, log pi_ref(y_w|x) / pi_theta(y_w|x))), applied to the ending
    tokens of every sampled answer that ended, chosen or rejected, instead of to the
    whole chosen answer: a round may make an ending likelier (shorter answers are
    learnt) but not less likely than under the reference, so a preference whose
    preferred answers run longer is not learnt as "never stop". 0 when none ended.
    """
    if not bool(has_end.any()):
        return policy_end_logps.sum() * 0.0  # keeps the graph, adds nothing
    gap = torch.relu(ref_end_logps - policy_end_logps)  # (B,)
    return gap[has_end].mean()


def empty_guard(policy_empty_logps: Tensor, ref_empty_logps: Tensor) -> Tensor:
    """Hinge that keeps answers from coming out empty: the mean over rows of
    max(0, log pi_theta(e | x) - log pi_ref(e | x)), where e is an ending the model
    sampled for prompt x (stop string, end-of-sequence token, a chat turn's tail) placed
    right after the prompt, and *_logps (R,) are its summed log-probs.

    DPO-Positive's hinge (Pal et al. 2024, arXiv 2402.13228, Eq. 3) turned the other
    way: a round may make an empty answer less likely than under the reference, never
    more. Votes never judge empty answers (they are sampled again before anyone sees
    them), so a round has no evidence to move them by.
    """
    return torch.relu(policy_empty_logps - ref_empty_logps).mean()


def chosen_nll(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """RPO's NLL term (Pang et al. 2024, "Iterative Reasoning Preference Optimization",
    arXiv 2404.19733, Eq. 1-3: L = L_DPO + alpha L_NLL): the mean over the batch of the
    chosen answer's negative log-likelihood per response token,
    -log pi_theta(y_c | x) / |y_c|. ``policy_chosen_logps`` (B,) are summed log-probs,
    ``chosen_lengths`` (B,) their token counts. Against likelihood displacement: DPO's
    margin can grow while the chosen answer itself gets less likely."""
    return (-policy_chosen_logps / chosen_lengths.clamp(min=1)).mean()


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z0 (Ethayarajh et al. 2024, arXiv 2402.01306).

    z0 estimates KL(pi_theta || pi_ref) from MISMATCHED (prompt, completion) rows, whose
    log-probs are given here ((B,) each): the trainer pairs each prompt x_i with the
    completion of the next row, y_{(i+1) mod B} (a shift by one within the batch), so
    the policy is measured on text it was not asked to prefer. Returns the scalar
    mean(policy - ref), clamped at >= 0, detached (no gradient flows through z0).
    """
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, kl_ref_point: Tensor,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[Tensor, Tensor]:
    """KTO, Ethayarajh et al. 2024 (arXiv 2402.01306) Eq. 8, for unpaired rows.

    r = log pi_theta(y|x) - log pi_ref(y|x) per row (B,); z0 = ``kl_ref_point`` (a scalar,
    see ``kto_kl_estimate``), detached and clamped at >= 0 here as well. Desirable rows
    (``desirable`` (B,) bool) lose lambda_D (1 - sigma(beta (r - z0))), undesirable rows
    lambda_U (1 - sigma(beta (z0 - r))). Returns (losses (B,), rewards beta r detached (B,)).
    """
    if beta <= 0:
        raise ValueError(f"beta={beta}: must be > 0 (try 0.1)")
    r = policy_logps - ref_logps  # (B,)
    z0 = kl_ref_point.detach().clamp(min=0)  # ()
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))  # (B,)
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))  # (B,)
    return torch.where(desirable.bool(), good, bad), (beta * r).detach()


def reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Share of pairs whose implicit reward ranks the chosen response first (ties count
    as wrong); nan for an empty batch."""
    if chosen_rewards.numel() == 0:
        return float("nan")
    return (chosen_rewards > rejected_rewards).float().mean().item()
