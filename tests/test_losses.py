"""Every loss against values computed by hand with math.log / math.exp."""

import math

import pytest
import torch

from trainer.losses import (
    LOSSES,
    kto_kl_estimate,
    kto_loss,
    needs_length_normalisation,
    preference_loss,
    reward_accuracy,
)

# one example: policy chosen/rejected and reference chosen/rejected log-probs
PC, PR, RC, RR, BETA = -10.0, -12.0, -11.0, -11.5, 0.1
DELTA = (PC - RC) - (PR - RR)  # 1.0 - (-0.5) = 1.5
RHO_C, RHO_R = BETA * (PC - RC), BETA * (PR - RR)  # 0.1, -0.05


def sig(x):
    return 1 / (1 + math.exp(-x))


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def run(name, eps=0.0, pc=PC, pr=PR, rc=RC, rr=RR, beta=BETA):
    loss, c, r = preference_loss(name, t(pc), t(pr), t(rc), t(rr), beta, eps)
    return loss.item(), c.item(), r.item()


HAND = {
    "sigmoid": -math.log(sig(BETA * DELTA)),
    "ipo": (DELTA - 1 / (2 * BETA)) ** 2,
    "hinge": max(0.0, 1 - BETA * DELTA),
    "nca_pair": -math.log(sig(RHO_C)) - 0.5 * math.log(sig(-RHO_C)) - 0.5 * math.log(sig(-RHO_R)),
    "sppo_hard": ((PC - RC) - 1 / (2 * BETA)) ** 2 + ((PR - RR) + 1 / (2 * BETA)) ** 2,
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_computed_values(name):
    assert run(name)[0] == pytest.approx(HAND[name], rel=1e-9)


def test_bco_pair_uses_the_batch_mean_reward_as_shift():
    shift = (RHO_C + RHO_R) / 2
    want = -math.log(sig(RHO_C - shift)) - math.log(sig(-(RHO_R - shift)))
    assert run("bco_pair")[0] == pytest.approx(want, rel=1e-9)


def test_cdpo_and_robust_with_label_smoothing():
    eps, z = 0.2, BETA * DELTA
    cdpo = -(1 - eps) * math.log(sig(z)) - eps * math.log(sig(-z))
    rdpo = (-(1 - eps) * math.log(sig(z)) + eps * math.log(sig(-z))) / (1 - 2 * eps)
    assert run("sigmoid", eps)[0] == pytest.approx(cdpo, rel=1e-9)
    assert run("robust", eps)[0] == pytest.approx(rdpo, rel=1e-9)
    assert run("robust", 0.0)[0] == pytest.approx(HAND["sigmoid"], rel=1e-9)


def test_sigmoid_is_log2_when_policy_equals_reference():
    loss, c, r = run("sigmoid", pc=RC, pr=RR)
    assert loss == pytest.approx(math.log(2))
    assert c == 0 and r == 0


def test_rewards_are_beta_log_ratios_and_detached():
    pc = t(PC).requires_grad_()
    loss, c, r = preference_loss("sigmoid", pc, t(PR), t(RC), t(RR), BETA)
    assert c.item() == pytest.approx(RHO_C) and r.item() == pytest.approx(RHO_R)
    assert not c.requires_grad and not r.requires_grad and loss.requires_grad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_raising_the_chosen_logp_lowers_the_loss(name):
    # near the reference (Delta ~ 0) every paired loss wants a larger chosen log-prob;
    # IPO and SPPO are squared losses with a target, so past it they push back down.
    pc = t(RC + 0.01, RC - 0.3).requires_grad_()
    loss, _, _ = preference_loss(name, pc, t(RR, RR), t(RC, RC), t(RR, RR), BETA, 0.1)
    loss.sum().backward()
    assert (pc.grad < 0).all(), f"{name}: gradient {pc.grad}"


def test_ipo_pushes_back_past_its_target_margin():
    target = 1 / (2 * BETA)
    pc = t(RC + target + 1).requires_grad_()
    loss, _, _ = preference_loss("ipo", pc, t(RR), t(RC), t(RR), BETA)
    loss.backward()
    assert pc.grad.item() > 0


def test_shapes_and_unknown_name():
    b = 5
    out = preference_loss("sigmoid", torch.zeros(b), torch.zeros(b), torch.zeros(b),
                          torch.zeros(b), 0.1)
    assert all(x.shape == (b,) for x in out)
    with pytest.raises(ValueError, match="unknown loss type 'dop'.*sigmoid"):
        preference_loss("dop", *out, out[0], out[0], 0.1)
    assert needs_length_normalisation("ipo") and not needs_length_normalisation("sigmoid")


def test_kto_by_hand():
    pol, ref, beta = t(-5.0, -6.0), t(-5.5, -5.0), 0.2
    kl = kto_kl_estimate(t(-3.0, -4.0), t(-3.5, -4.1))  # mean(0.5, 0.1) = 0.3
    assert kl.item() == pytest.approx(0.3)
    assert kto_kl_estimate(t(-4.0), t(-3.0)).item() == 0  # clamped at 0
    losses, rewards = kto_loss(pol, ref, torch.tensor([True, False]), kl, beta, 1.0, 2.0)
    want_good = 1 - sig(beta * (0.5 - 0.3))
    want_bad = 2.0 * (1 - sig(beta * (0.3 - (-1.0))))
    assert losses.tolist() == pytest.approx([want_good, want_bad])
    assert rewards.tolist() == pytest.approx([0.1, -0.2])


def test_reward_accuracy():
    assert reward_accuracy(t(1, 2, 3, 0), t(0, 3, 1, 0)) == pytest.approx(0.5)
