"""Every loss against values computed by hand with math.log / math.exp, plus gradient
directions, special points and the API contract (shapes, detached rewards, errors)."""

import math

import pytest
import torch

from trainer.training.losses import (
    LOSSES,
    kto_kl_estimate,
    kto_loss,
    needs_length_normalisation,
    preference_loss,
    reward_accuracy,
)

BETA = 0.1
# two pairs: (policy chosen, policy rejected, ref chosen, ref rejected) log-probs
ROWS = [(-10.0, -12.0, -11.0, -11.5), (-20.0, -18.0, -19.0, -19.5)]


def sig(x):
    return 1 / (1 + math.exp(-x))


def logsig(x):
    return math.log(sig(x))


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def columns(rows=ROWS):
    return [t(*c) for c in zip(*rows)]


def ratios(row):
    pc, pr, rc, rr = row
    return pc - rc, pr - rr  # a, b


def by_hand(name, a, b, eps=0.0, beta=BETA, delta=None):
    z, ca, cb = beta * (a - b), beta * a, beta * b
    half = 1 / (2 * beta)
    return {
        "sigmoid": -(1 - eps) * logsig(z) - eps * logsig(-z),
        "ipo": (a - b - half) ** 2,
        "hinge": max(0.0, 1 - z),
        "robust": (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps),
        "bco_pair": None if delta is None else -logsig(ca - delta) - logsig(-(cb - delta)),
        "nca_pair": -logsig(ca) - 0.5 * logsig(-ca) - 0.5 * logsig(-cb),
        "sppo_hard": (a - half) ** 2 + (b + half) ** 2,
    }[name]


def test_hand_table_covers_every_registered_variant():
    assert set(LOSSES) == {"sigmoid", "ipo", "hinge", "robust", "bco_pair", "nca_pair",
                           "sppo_hard"}


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_hand_computed_values(name, eps):
    rs = [ratios(r) for r in ROWS]
    # BCO's shift: mean of the batch's chosen and rejected rewards
    delta = sum(BETA * a + BETA * b for a, b in rs) / (2 * len(rs))
    want = [by_hand(name, a, b, eps, delta=delta) for a, b in rs]
    losses, _, _ = preference_loss(name, *columns(), BETA, eps)
    assert losses.tolist() == pytest.approx(want, rel=1e-12)


def test_specific_numbers():
    # row 0: a = 1, b = -0.5, Delta = 1.5, beta Delta = 0.15
    (loss,), _, _ = preference_loss("sigmoid", *columns(ROWS[:1]), BETA)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.15)), rel=1e-12)
    (loss,), _, _ = preference_loss("ipo", *columns(ROWS[:1]), BETA)
    assert loss.item() == pytest.approx((1.5 - 5.0) ** 2)  # 12.25
    (loss,), _, _ = preference_loss("hinge", *columns(ROWS[:1]), BETA)
    assert loss.item() == pytest.approx(0.85)
    (loss,), _, _ = preference_loss("sppo_hard", *columns(ROWS[:1]), BETA)
    assert loss.item() == pytest.approx((1 - 5) ** 2 + (-0.5 + 5) ** 2)  # 36.25


def test_bco_single_pair_shift_is_the_mean_of_its_two_rewards():
    a, b = ratios(ROWS[0])
    delta = (BETA * a + BETA * b) / 2
    (loss,), _, _ = preference_loss("bco_pair", *columns(ROWS[:1]), BETA)
    assert loss.item() == pytest.approx(by_hand("bco_pair", a, b, delta=delta), rel=1e-12)


def test_sigmoid_is_log2_when_policy_equals_reference():
    rc, rr = t(-11.0, -3.0), t(-11.5, -7.0)
    loss, c, r = preference_loss("sigmoid", rc, rr, rc, rr, BETA)
    assert loss.tolist() == pytest.approx([math.log(2)] * 2)
    assert c.tolist() == [0, 0] and r.tolist() == [0, 0]


@pytest.mark.parametrize("name", ["robust", "sigmoid"])
def test_zero_label_smoothing_is_plain_dpo(name):
    plain = -torch.nn.functional.logsigmoid(BETA * t(1.5, -2.5))  # Delta per row
    losses, _, _ = preference_loss(name, *columns(), BETA, 0.0)
    assert torch.allclose(losses, plain, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_rewards_are_beta_log_ratios_detached_and_shapes_are_b(name):
    pc, pr, rc, rr = columns()
    pc.requires_grad_()
    losses, c, r = preference_loss(name, pc, pr, rc, rr, BETA)
    assert losses.shape == c.shape == r.shape == (2,)
    assert c.tolist() == pytest.approx([BETA * ratios(x)[0] for x in ROWS])
    assert r.tolist() == pytest.approx([BETA * ratios(x)[1] for x in ROWS])
    assert losses.requires_grad and not c.requires_grad and not r.requires_grad


# (name, eps, chosen log-ratio a where d loss / d pi_c < 0, a past which it is >= 0)
# with b = 0. Where the loss has a target the push reverses or stops past it:
# ipo at Delta = 1/(2 beta), sppo_hard at a = 1/(2 beta), hinge at beta Delta = 1 (flat),
# nca_pair at beta a = log 2, cDPO at sigma(beta Delta) = 1 - eps.
MONOTONE = [
    ("sigmoid", 0.0, 0.5, None), ("robust", 0.0, 0.5, None), ("robust", 0.2, 0.5, None),
    ("sigmoid", 0.2, 0.5, math.log(0.8 / 0.2) / BETA + 1),
    ("ipo", 0.0, 0.5, 1 / (2 * BETA) + 1), ("sppo_hard", 0.0, 0.5, 1 / (2 * BETA) + 1),
    ("hinge", 0.0, 0.5, 1 / BETA + 1), ("nca_pair", 0.0, 0.5, math.log(2) / BETA + 1),
    ("bco_pair", 0.0, 0.5, None),
]


@pytest.mark.parametrize("name,eps,below,past", MONOTONE)
def test_raising_the_chosen_logp_lowers_the_loss_where_it_should(name, eps, below, past):
    def grad_at(a):
        pc = t(-11.0 + a).requires_grad_()
        loss, _, _ = preference_loss(name, pc, t(-11.5), t(-11.0), t(-11.5), BETA, eps)
        loss.sum().backward()
        return pc.grad.item()

    assert grad_at(below) < 0, name
    if past is not None:
        assert grad_at(past) >= 0, name
    if name in ("ipo", "sppo_hard", "nca_pair") or (name, eps) == ("sigmoid", 0.2):
        assert grad_at(past) > 0, f"{name} pushes back past its target"


@pytest.mark.parametrize("name", ["sigmoid", "robust", "hinge", "ipo", "bco_pair"])
def test_raising_the_rejected_logp_raises_the_loss(name):
    pr = t(-11.5).requires_grad_()
    loss, _, _ = preference_loss(name, t(-11.0), pr, t(-11.0), t(-11.5), BETA)
    loss.backward()
    assert pr.grad.item() > 0


def test_unknown_name_and_bad_parameters():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unknown loss type 'dop'.*sigmoid.*sppo_hard"):
        preference_loss("dop", z, z, z, z, 0.1)
    with pytest.raises(ValueError, match="beta"):
        preference_loss("sigmoid", z, z, z, z, 0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss("robust", z, z, z, z, 0.1, 0.5)


def test_only_ipo_needs_length_normalisation():
    assert needs_length_normalisation("ipo")
    assert not any(needs_length_normalisation(n) for n in LOSSES if n != "ipo")


def test_kto_kl_estimate_is_clamped_detached_mean():
    pol = t(-3.0, -4.0).requires_grad_()
    kl = kto_kl_estimate(pol, t(-3.5, -4.1))  # mean(0.5, 0.1) = 0.3
    assert kl.shape == () and kl.item() == pytest.approx(0.3) and not kl.requires_grad
    assert kto_kl_estimate(t(-4.0, -5.0), t(-3.0, -4.0)).item() == 0  # mean -1: clamped


def test_kto_by_hand():
    pol, ref, beta, z0 = t(-5.0, -6.0, -7.0), t(-5.5, -5.0, -7.2), 0.2, t(0.3)
    r = [0.5, -1.0, 0.2]
    losses, rewards = kto_loss(pol.requires_grad_(), ref, torch.tensor([True, False, False]),
                               z0, beta, desirable_weight=1.5, undesirable_weight=2.0)
    want = [1.5 * (1 - sig(beta * (r[0] - 0.3))), 2.0 * (1 - sig(beta * (0.3 - r[1]))),
            2.0 * (1 - sig(beta * (0.3 - r[2])))]
    assert losses.tolist() == pytest.approx(want, rel=1e-12)
    assert rewards.tolist() == pytest.approx([beta * x for x in r])
    assert losses.shape == (3,) and not rewards.requires_grad
    losses.sum().backward()  # desirable: raise its log-prob; undesirable: lower it
    assert pol.grad[0] < 0 and pol.grad[1] > 0 and pol.grad[2] > 0


def test_kto_reference_point_is_detached_and_clamped():
    z0 = t(-1.0).requires_grad_()
    losses, _ = kto_loss(t(-5.0).requires_grad_(), t(-5.0), torch.tensor([True]), z0, 0.1)
    assert losses.item() == pytest.approx(0.5)  # z0 clamped to 0, r = 0: 1 - sigma(0)
    losses.sum().backward()
    assert z0.grad is None


def test_reward_accuracy():
    assert reward_accuracy(t(1, 2, 3, 0), t(0, 3, 1, 0)) == pytest.approx(0.5)  # tie: wrong
    assert math.isnan(reward_accuracy(t(), t()))


def test_length_alpha_is_r_dpo_margin_by_hand():
    """R-DPO: -log sigma(beta Delta + alpha (|y_c| - |y_r|)) for the sigmoid loss."""
    pc, pr, rc, rr = ROWS[0]
    alpha, lc, lr = 0.01, 40.0, 10.0
    losses, cr, rj = preference_loss("sigmoid", t(pc), t(pr), t(rc), t(rr), BETA, 0.0, alpha,
                                     t(lc), t(lr))
    delta = (pc - rc) - (pr - rr)
    assert losses.item() == pytest.approx(-logsig(BETA * delta + alpha * (lc - lr)))
    assert cr.item() == pytest.approx(BETA * (pc - rc))  # rewards stay the policy's own
    plain, *_ = preference_loss("sigmoid", t(pc), t(pr), t(rc), t(rr), BETA)
    assert losses.item() < plain.item()  # a longer chosen answer needs less change


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_length_alpha_equal_lengths_changes_only_per_answer_losses(name):
    """With equal lengths the margin is unchanged, so margin losses are unchanged."""
    cols = columns()
    same = t(20.0, 20.0)
    plain, *_ = preference_loss(name, *cols, BETA)
    shifted, *_ = preference_loss(name, *cols, BETA, 0.0, 0.01, same, same)
    if name in ("sigmoid", "ipo", "hinge", "robust"):
        assert torch.allclose(plain, shifted)
    assert torch.isfinite(shifted).all()
    with pytest.raises(ValueError, match="needs chosen_lengths and rejected_lengths"):
        preference_loss(name, *cols, BETA, 0.0, 0.01)


def test_ending_anchor_is_the_mean_hinge_over_answers_that_ended():
    from trainer.training.losses import ending_anchor
    pol = torch.tensor([-3.0, -1.0, -5.0, -9.0])
    ref = torch.tensor([-2.0, -2.0, -4.0, -1.0])
    has_end = torch.tensor([True, True, True, False])  # the last answer was cut
    # gaps max(0, ref - pol): 1, 0 (likelier than the reference: free), 1; the cut one ignored
    assert ending_anchor(pol, ref, has_end).item() == pytest.approx(2 / 3)
    none = ending_anchor(pol.requires_grad_(), ref, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def test_empty_guard_is_the_mean_hinge_on_immediate_endings_above_the_reference():
    from trainer.training.losses import empty_guard
    pol = torch.tensor([-3.0, -1.0, -6.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0, -4.0])
    # gaps max(0, pol - ref): 0 (less likely than the reference: free), 1, 0
    out = empty_guard(pol, ref)
    assert out.item() == pytest.approx(1 / 3)
    out.backward()
    assert pol.grad.tolist() == pytest.approx([0.0, 1 / 3, 0.0])  # only the likelier one


def test_chosen_nll_is_the_mean_per_token_negative_log_likelihood():
    from trainer.training.losses import chosen_nll
    logps = torch.tensor([-4.0, -9.0, 0.0])
    lengths = torch.tensor([2.0, 3.0, 0.0])  # an empty answer counts as one token
    assert chosen_nll(logps, lengths).item() == pytest.approx((2.0 + 3.0 + 0.0) / 3)
    grad = torch.tensor([-4.0, -9.0], requires_grad=True)
    chosen_nll(grad, torch.tensor([2.0, 3.0])).backward()
    assert grad.grad.tolist() == pytest.approx([-1 / 4, -1 / 6])  # raises the chosen answer
