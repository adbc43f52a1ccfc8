"""The BMC objectives of bmc_train.losses against hand-computed values and the textbook formulas."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from loss_batches import float64_default  # noqa: F401  (autouse fixture)
from loss_batches import random_batch as _batch

from bmc_train.losses import (
    LOSS_TYPES,
    LossTypeSpec,
    PreferenceLossOutput,
    bmc_dpo_loss,
    bmc_ipo_loss,
    bmc_orpo_loss,
    bmc_rdpo_loss,
    bmc_simpo_loss,
    bmc_token_weights,
    compute_preference_loss,
    figa_loss,
    get_loss_type,
    register_loss_type,
    token_weight_stats,
)

# --- λ ---------------------------------------------------------------------------------------------------------


def test_token_weights_hand_computed():
    logps = torch.log(torch.tensor([[0.5, 0.1, 0.9, 0.25, 0.2]]))
    diff = torch.tensor([[True, True, False, True, True]])
    loss_mask = torch.tensor([[True, True, True, True, False]])
    w = bmc_token_weights(logps, diff, loss_mask, delta=3.0)
    # 1/π = 2, 10 (capped at 3), not diff, 4 (capped at 3), outside the completion
    assert torch.allclose(w, torch.tensor([[3.0, 4.0, 1.0, 4.0, 0.0]]))
    w = bmc_token_weights(logps, diff, None, delta=2.5)
    assert torch.allclose(w, torch.tensor([[3.0, 3.5, 1.0, 3.5, 3.5]]))


def test_delta_one_gives_constant_weight_two_on_diff_tokens():
    pc, _, _, _, dc, _, mc, _ = _batch()
    w = bmc_token_weights(pc, dc, mc, delta=1.0)  # 1/π ≥ 1 always, so min(1/π, 1) = 1
    assert torch.equal(w[dc], torch.full_like(w[dc], 2.0))
    assert torch.equal(w[mc & ~dc], torch.ones_like(w[mc & ~dc]))
    assert torch.equal(w[~mc], torch.zeros_like(w[~mc]))


def test_weights_are_finite_for_extreme_log_probs_and_detached():
    logps = torch.tensor([[-1e4, -200.0, 0.0, float("-inf")]], requires_grad=True)
    w = bmc_token_weights(logps, torch.ones(1, 4, dtype=torch.bool), None, delta=2.0)
    assert torch.equal(w, torch.tensor([[3.0, 3.0, 2.0, 3.0]]))
    assert not w.requires_grad
    assert torch.equal(bmc_token_weights(logps, torch.ones(1, 4, dtype=torch.bool), None, delta=None), torch.ones(1, 4))
    with pytest.raises(ValueError, match="delta"):
        bmc_token_weights(logps, None, None, delta=-1.0)


def test_token_weight_stats():
    logps = torch.log(torch.tensor([[0.5, 0.1, 0.9, 0.25]]))
    diff = torch.tensor([[True, True, False, False]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    w = bmc_token_weights(logps, diff, mask, delta=3.0)
    stats = token_weight_stats(w, diff, mask, delta=3.0)
    assert stats["lambda_sum"].item() == pytest.approx(7.0)
    assert stats["diff_tokens"].item() == 2 and stats["tokens"].item() == 4 and stats["capped"].item() == 1


# --- DPO-BMC ---------------------------------------------------------------------------------------------------


def test_dpo_bmc_hand_computed():
    # one pair, two chosen tokens and two rejected tokens; δ = 3, β = 0.5
    pc = torch.log(torch.tensor([[0.5, 0.8]]))
    rc = torch.log(torch.tensor([[0.4, 0.8]]))
    pr = torch.log(torch.tensor([[0.2, 0.6]]))
    rr = torch.log(torch.tensor([[0.25, 0.5]]))
    dc = torch.tensor([[True, False]])
    dr = torch.tensor([[True, True]])
    m = torch.ones(1, 2, dtype=torch.bool)
    out = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, m, m, beta=0.5, delta=3.0)
    chosen = 3.0 * math.log(0.5 / 0.4) + 1.0 * math.log(0.8 / 0.8)  # λ = 1 + 1/0.5
    rejected = 4.0 * math.log(0.2 / 0.25) + (1 + 1 / 0.6) * math.log(0.6 / 0.5)  # λ = 1 + min(5, 3), 1 + 1/0.6
    expected = -math.log(1 / (1 + math.exp(-0.5 * (chosen - rejected))))
    assert isinstance(out, PreferenceLossOutput)
    assert out.losses.item() == pytest.approx(expected, rel=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.5 * chosen)
    assert out.rejected_rewards.item() == pytest.approx(0.5 * rejected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_false_masks_equal_trl_sigmoid_dpo(seed):
    pc, pr, rc, rr, _, _, mc, mr = _batch(seed)
    beta = 0.1
    # TRL 1.16 DPOTrainer, loss_type="sigmoid": per-token log-probs are zero outside the completion and summed
    chosen_logratios = (pc * mc).sum(1) - (rc * mc).sum(1)
    rejected_logratios = (pr * mr).sum(1) - (rr * mr).sum(1)
    trl_loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    none = torch.zeros_like(mc)
    for delta in (2.0, None):
        out = bmc_dpo_loss(pc, pr, rc, rr, none, none, mc, mr, beta=beta, delta=delta)
        assert torch.allclose(out.losses, trl_loss, atol=1e-12)
        assert torch.allclose(out.chosen_rewards, beta * chosen_logratios)
    # and with delta=None the diff masks are ignored altogether
    _, _, _, _, dc, dr, _, _ = _batch(seed)
    assert torch.allclose(bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, delta=None).losses, trl_loss)


def test_gradient_treats_lambda_as_a_constant():
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(3)
    beta, delta = 0.2, 30.0  # a large δ leaves most weights uncapped, where d(1/π)/dlogπ ≠ 0
    pc = pc.clone().requires_grad_(True)
    pr = pr.clone().requires_grad_(True)
    out = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, delta=delta)
    out.losses.sum().backward()

    lam_c = torch.where(dc, 1 + torch.clamp(torch.exp(-pc.detach()), max=delta), torch.ones_like(pc)) * mc
    lam_r = torch.where(dr, 1 + torch.clamp(torch.exp(-pr.detach()), max=delta), torch.ones_like(pr)) * mr
    h = beta * (((pc.detach() - rc) * lam_c).sum(1) - ((pr.detach() - rr) * lam_r).sum(1))
    coeff = -beta * torch.sigmoid(-h)  # d(−log σ(h))/dh · dh/d(margin)
    assert torch.allclose(pc.grad, coeff[:, None] * lam_c, atol=1e-12)
    assert torch.allclose(pr.grad, -coeff[:, None] * lam_r, atol=1e-12)
    # sanity: had λ carried gradient, the chosen grad would differ on uncapped diff tokens
    assert (dc & (torch.exp(-pc.detach()) < delta)).any()


def test_reference_required():
    pc, pr, _, _, dc, dr, mc, mr = _batch()
    with pytest.raises(ValueError, match="reference"):
        bmc_dpo_loss(pc, pr, None, None, dc, dr, mc, mr, beta=0.1, delta=2.0)


# --- variants --------------------------------------------------------------------------------------------------


def _lam(p, d, m, delta):
    return torch.where(d, 1 + torch.clamp(torch.exp(-p), max=delta), torch.ones_like(p)) * m


@pytest.mark.parametrize("delta", [None, 2.5])
def test_ipo(delta):
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(4)
    tau = 0.1
    out = bmc_ipo_loss(pc, pr, rc, rr, dc, dr, mc, mr, tau=tau, delta=delta)
    d = delta if delta is not None else 0.0
    lc = _lam(pc, dc, mc, d) if delta is not None else mc.double()
    lr = _lam(pr, dr, mr, d) if delta is not None else mr.double()
    h = ((pc - rc) * lc).sum(1) / mc.sum(1) - ((pr - rr) * lr).sum(1) / mr.sum(1)
    assert torch.allclose(out.losses, (h - 1 / (2 * tau)) ** 2, atol=1e-12)


@pytest.mark.parametrize("delta", [None, 2.0])
def test_rdpo(delta):
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(5)
    beta, alpha = 0.1, 0.05
    out = bmc_rdpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, alpha=alpha, delta=delta)
    lc = _lam(pc, dc, mc, delta) if delta is not None else mc.double()
    lr = _lam(pr, dr, mr, delta) if delta is not None else mr.double()
    h = beta * (((pc - rc) * lc).sum(1) - ((pr - rr) * lr).sum(1)) - (alpha * mc.sum(1) - alpha * mr.sum(1))
    assert torch.allclose(out.losses, -F.logsigmoid(h), atol=1e-12)


@pytest.mark.parametrize("delta", [None, 3.0])
def test_simpo(delta):
    pc, pr, _, _, dc, dr, mc, mr = _batch(6)
    beta, gamma = 2.0, 1.2
    out = bmc_simpo_loss(pc, pr, None, None, dc, dr, mc, mr, beta=beta, gamma=gamma, delta=delta)
    lc = _lam(pc, dc, mc, delta) if delta is not None else mc.double()
    lr = _lam(pr, dr, mr, delta) if delta is not None else mr.double()
    h = beta / mc.sum(1) * (pc * lc).sum(1) - beta / mr.sum(1) * (pr * lr).sum(1) - gamma
    assert torch.allclose(out.losses, -F.logsigmoid(h), atol=1e-12)


def test_orpo_plain_matches_textbook():
    pc, pr, _, _, dc, dr, mc, mr = _batch(7)
    lam = 0.1
    out = bmc_orpo_loss(pc, pr, None, None, dc, dr, mc, mr, lam=lam, delta=None)
    avg_c = (pc * mc).sum(1) / mc.sum(1)
    avg_r = (pr * mr).sum(1) / mr.sum(1)
    p_c, p_r = avg_c.exp(), avg_r.exp()
    odds = torch.log(p_c / (1 - p_c)) - torch.log(p_r / (1 - p_r))
    nll = -(pc * mc).sum() / mc.sum()  # token mean over the micro-batch's chosen tokens (official CrossEntropyLoss)
    expected = nll - lam * torch.log(torch.sigmoid(odds))
    assert torch.allclose(out.losses, expected, atol=1e-10)


def test_orpo_bmc_weights_the_odds_ratio_only():
    pc, pr, _, _, dc, dr, mc, mr = _batch(8)
    lam, delta = 0.5, 2.0
    out = bmc_orpo_loss(pc, pr, None, None, dc, dr, mc, mr, lam=lam, delta=delta)
    avg_c = (pc * _lam(pc, dc, mc, delta)).sum(1) / mc.sum(1)
    avg_r = (pr * _lam(pr, dr, mr, delta)).sum(1) / mr.sum(1)
    log_odds = lambda a: a - torch.log1p(-torch.exp(a))  # noqa: E731
    nll = -(pc * mc).sum() / mc.sum()
    expected = nll - lam * F.logsigmoid(log_odds(avg_c) - log_odds(avg_r))
    assert torch.allclose(out.losses, expected, atol=1e-10)


def test_figa_hand_computed():
    pc = torch.log(torch.tensor([[0.5, 0.8, 0.1]]))
    pr = torch.log(torch.tensor([[0.2, 0.6, 0.9]]))
    dc = torch.tensor([[True, False, True]])
    dr = torch.tensor([[False, True, False]])
    m = torch.ones(1, 3, dtype=torch.bool)
    out = figa_loss(pc, pr, None, None, dc, dr, m, m, alpha=1.0, beta=0.5)  # official BMC baseline: sums
    expected = -1.0 * (math.log(0.5) + math.log(0.1)) + 0.5 * math.log(0.6)
    assert out.losses.item() == pytest.approx(expected)
    per_token = figa_loss(pc, pr, None, None, dc, dr, m, m, alpha=1.0, beta=0.5, normalization="diff_tokens")
    assert per_token.losses.item() == pytest.approx(expected / 3)  # FIGA's own code: over the 3 diff tokens
    # it raises the added tokens' probability and lowers the deleted one's
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    figa_loss(pc, pr, None, None, dc, dr, m, m, alpha=1.0, beta=0.5).losses.sum().backward()
    assert (pc.grad[dc] < 0).all() and (pr.grad[dr] > 0).all()
    assert (pc.grad[~dc] == 0).all() and (pr.grad[~dr] == 0).all()


@pytest.mark.parametrize("name", ["ipo", "rdpo", "simpo", "orpo"])
def test_bmc_variant_with_all_false_masks_is_the_plain_variant(name):
    pc, pr, rc, rr, _, _, mc, mr = _batch(9)
    cfg = SimpleNamespace(beta=0.1, delta=2.0, ipo_tau=0.1, rdpo_alpha=0.05, simpo_gamma=1.0, orpo_lambda=0.1,
                          label_smoothing=0.0)
    none = torch.zeros_like(mc)
    plain = compute_preference_loss(name, cfg, pc, pr, rc, rr, none, none, mc, mr)
    weighted = compute_preference_loss(f"{name}_bmc", cfg, pc, pr, rc, rr, none, none, mc, mr)
    assert torch.allclose(plain.losses, weighted.losses, atol=1e-12)


# --- the switch ------------------------------------------------------------------------------------------------


def test_registry_contents_and_dispatch():
    expected = {"dpo", "bmc", "dpo_bmc", "ipo", "ipo_bmc", "simpo", "simpo_bmc", "rdpo", "rdpo_bmc", "orpo",
                "orpo_bmc", "figa"}
    assert expected <= set(LOSS_TYPES)
    assert get_loss_type("bmc").token_weighted and not get_loss_type("dpo").token_weighted
    assert get_loss_type("simpo_bmc").reference_free and get_loss_type("figa").reference_free
    assert not get_loss_type("ipo_bmc").reference_free
    with pytest.raises(ValueError, match="unknown loss_type"):
        get_loss_type("kto")
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(10)
    cfg = SimpleNamespace(beta=0.1, delta=2.0)
    a = compute_preference_loss("bmc", cfg, pc, pr, rc, rr, dc, dr, mc, mr)
    b = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=0.1, delta=2.0)
    assert torch.equal(a.losses, b.losses)


def test_register_a_new_objective():
    def hinge_bmc(pc, pr, rc, rr, dc, dr, mc, mr, *, beta, delta):
        out = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, delta=delta)
        margin = (out.chosen_rewards - out.rejected_rewards)
        chosen = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, delta=delta)
        return PreferenceLossOutput(torch.relu(1 - margin), chosen.chosen_rewards, chosen.rejected_rewards)

    spec = LossTypeSpec("test_hinge_bmc", hinge_bmc, {"beta": "beta", "delta": "delta"}, token_weighted=True,
                        uses_diff_mask=True)
    register_loss_type(spec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_loss_type(spec)
        pc, pr, rc, rr, dc, dr, mc, mr = _batch(11)
        out = compute_preference_loss("test_hinge_bmc", SimpleNamespace(beta=0.1, delta=2.0), pc, pr, rc, rr, dc, dr,
                                      mc, mr)
        assert out.losses.shape == (3,)
    finally:
        LOSS_TYPES.pop("test_hinge_bmc")
