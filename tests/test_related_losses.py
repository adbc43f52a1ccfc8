"""BPO, γ-PO, AMaPO, RePO and MADPO (bmc_train.losses) against their formulas written out by hand, their limiting
cases, gradient checks, and `python -m bmc_train --loss_type <each>` on a tiny model (docs/related-objectives.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from loss_batches import float64_default, random_batch  # noqa: F401  (autouse fixture)

from bmc_train.losses import (
    LOSS_TYPES,
    REWARD_MARGIN,
    amapo_loss,
    amapo_margins,
    bmc_dpo_loss,
    bmc_simpo_loss,
    bpo_loss,
    compute_preference_loss,
    gammapo_loss,
    gammapo_target_margins,
    get_loss_type,
    madpo_loss,
    madpo_weights,
    repo_loss,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"
NEW_NAMES = ["bpo", "gammapo", "amapo", "repo", "madpo"]
NEW_TYPES = [n for name in NEW_NAMES for n in (name, f"{name}_bmc")]
AUTHOR_FORMS = ["bpo_hinge_bmc", "gammapo_simpo_bmc"]  # tests/test_official_forms.py checks their formulas





_batch = partial(random_batch, b=4)  # four pairs: enough for the batch statistics of γ-PO and AMaPO


def _lam(p, d, m, delta):
    """λ by hand: 1 + min(1/π, δ) on diff tokens, 1 elsewhere in the completion, 0 outside (delta=None: the mask)."""
    if delta is None:
        return m.double()
    return torch.where(d, 1 + torch.clamp(torch.exp(-p), max=delta), torch.ones_like(p)) * m


def _logratios(pc, pr, rc, rr, dc, dr, mc, mr, delta):
    return ((pc - rc) * _lam(pc, dc, mc, delta)).sum(1), ((pr - rr) * _lam(pr, dr, mr, delta)).sum(1)


def _avg_logps(pc, pr, dc, dr, mc, mr, delta):
    return (pc * _lam(pc, dc, mc, delta)).sum(1) / mc.sum(1), (pr * _lam(pr, dr, mr, delta)).sum(1) / mr.sum(1)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# --- BPO --------------------------------------------------------------------------------------------------------


def test_bpo_hand_computed_one_pair():
    # Δ_w = log(0.5/0.4) + log(0.8/0.8), Δ_l = log(0.2/0.25) + log(0.6/0.5): plain, β = 0.5, α = 0.3
    pc, rc = torch.log(torch.tensor([[0.5, 0.8]])), torch.log(torch.tensor([[0.4, 0.8]]))
    pr, rr = torch.log(torch.tensor([[0.2, 0.6]])), torch.log(torch.tensor([[0.25, 0.5]]))
    m = torch.ones(1, 2, dtype=torch.bool)
    out = bpo_loss(pc, pr, rc, rr, None, None, m, m, beta=0.5, alpha=0.3, delta=None)
    d_w = math.log(0.5 / 0.4)  # 0.2231
    d_l = math.log(0.2 / 0.25) + math.log(0.6 / 0.5)  # −0.0408
    balanced = min(d_w, -0.3 * d_l)  # 0.01224: the rejected side is the minimum here
    assert balanced == pytest.approx(-0.3 * d_l)
    assert out.losses.item() == pytest.approx(-_log_sigmoid(0.5 * balanced), rel=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.5 * d_w)
    assert out.rejected_rewards.item() == pytest.approx(0.5 * d_l)


@pytest.mark.parametrize("delta", [None, 2.0])
def test_bpo_batch_formula(delta):
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(1)
    beta, alpha = 0.2, 0.3
    out = bpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, alpha=alpha, delta=delta)
    c, r = _logratios(pc, pr, rc, rr, dc, dr, mc, mr, delta)
    assert torch.allclose(out.losses, -F.logsigmoid(beta * torch.minimum(c, -alpha * r)), atol=1e-12)


def test_bpo_equals_dpo_at_half_beta_on_balanced_pairs_and_bounds_it():
    # BPO has no setting that is DPO; at α = 1, min(a, −b) = (a − b)/2 exactly when a = −b, and ≤ (a − b)/2 always.
    pc, pr, rc, rr, _, _, mc, mr = _batch(2)
    beta = 0.4
    c, _ = _logratios(pc, pr, rc, rr, None, None, mc, mr, None)
    # choose the rejected policy log-probs so that Σ(π_θ − π_ref)(y_l) = −Σ(π_θ − π_ref)(y_w) on every pair
    first = torch.arange(pr.shape[1])[None, :] == 0
    pr_bal = torch.where(first, rr - c[:, None], rr)
    bpo = bpo_loss(pc, pr_bal, rc, rr, None, None, mc, mr, beta=beta, alpha=1.0, delta=None)
    dpo_half = bmc_dpo_loss(pc, pr_bal, rc, rr, None, None, mc, mr, beta=beta / 2, delta=None)
    assert torch.allclose(bpo.losses, dpo_half.losses, atol=1e-12)
    bpo = bpo_loss(pc, pr, rc, rr, None, None, mc, mr, beta=beta, alpha=1.0, delta=None)
    dpo_half = bmc_dpo_loss(pc, pr, rc, rr, None, None, mc, mr, beta=beta / 2, delta=None)
    assert (bpo.losses >= dpo_half.losses - 1e-12).all()


def test_bpo_gradient_goes_only_to_the_minimum_side():
    pc, pr, rc, rr, _, _, mc, mr = _batch(3)
    pc, pr = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    out = bpo_loss(pc, pr, rc, rr, None, None, mc, mr, beta=0.3, alpha=0.3, delta=None)
    out.losses.sum().backward()
    c, r = _logratios(pc.detach(), pr.detach(), rc, rr, None, None, mc, mr, None)
    chosen_side = c < -0.3 * r
    assert chosen_side.any() and (~chosen_side).any()  # the batch exercises both branches
    assert (pc.grad[~chosen_side] == 0).all() and (pr.grad[chosen_side] == 0).all()
    assert (pc.grad[chosen_side][mc[chosen_side]] < 0).all()  # raise the chosen log-probs
    assert (pr.grad[~chosen_side][mr[~chosen_side]] > 0).all()  # lower the rejected ones
    with pytest.raises(ValueError, match="alpha"):
        bpo_loss(pc, pr, rc, rr, None, None, mc, mr, beta=0.3, alpha=0.0, delta=None)
    with pytest.raises(ValueError, match="reference"):
        bpo_loss(pc, pr, None, None, None, None, mc, mr, beta=0.3, alpha=0.3, delta=None)


# --- γ-PO -------------------------------------------------------------------------------------------------------


def _gamma_reference(r: torch.Tensor, gamma0: float, tau: float) -> torch.Tensor:
    """γ-PO's in-batch solver written the way the paper states it: multiplicative (mirror-descent) updates of p on
    (1/B) Σ −log σ(r_i − γ0 B p_i) + τ KL(p‖U), 20 gradient evaluations, γ of the last one."""
    n = r.numel()
    p = torch.full_like(r, 1 / n)
    lr = min(0.5 / tau, 1.0)
    for _ in range(20):
        gamma = gamma0 * n * p
        grad = tau * (1 + torch.log(n * p)) + gamma0 * torch.sigmoid(gamma - r)
        p = p * torch.exp(-lr * grad)
        p = p / p.sum()
    return gamma


@pytest.mark.parametrize("tau", [0.1, 1.0, 10.0])
def test_gammapo_margins_match_the_mirror_descent_and_are_ordered(tau):
    r = torch.tensor([-1.0, 0.2, 0.5, 3.0, 1.5])
    gamma = gammapo_target_margins(r, gamma0=0.8, tau=tau)
    assert torch.allclose(gamma, _gamma_reference(r, 0.8, tau), atol=1e-12)
    assert gamma.mean().item() == pytest.approx(0.8, abs=1e-12)  # Σγ = γ0·B
    order = torch.argsort(r)
    assert (gamma[order].diff() > 0).all()  # larger reward gap → larger target margin


def test_gammapo_margins_limits():
    r = torch.tensor([-1.0, 0.2, 3.0])
    assert torch.allclose(gammapo_target_margins(r, gamma0=0.8, tau=1e8), torch.full((3,), 0.8), atol=1e-6)
    assert torch.equal(gammapo_target_margins(r, gamma0=0.0, tau=1.0), torch.zeros(3))
    assert gammapo_target_margins(r[:1], gamma0=0.8, tau=1.0).item() == pytest.approx(0.8)
    # a smaller τ spreads the margins further apart
    assert gammapo_target_margins(r, gamma0=0.8, tau=0.1).std() > gammapo_target_margins(r, gamma0=0.8, tau=10).std()
    with pytest.raises(ValueError, match="tau"):
        gammapo_target_margins(r, gamma0=0.8, tau=0.0)


@pytest.mark.parametrize("delta", [None, 2.5])
def test_gammapo_formula_and_dpo_limits(delta):
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(4)
    beta, ratio, tau = 0.1, 0.4, 2.0
    out = gammapo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, gamma_beta_ratio=ratio, tau=tau, delta=delta)
    c, r = _logratios(pc, pr, rc, rr, dc, dr, mc, mr, delta)
    gaps = beta * (c - r)
    expected = -F.logsigmoid(gaps - _gamma_reference(gaps, ratio * beta, tau))
    assert torch.allclose(out.losses, expected, atol=1e-10)
    # neutral setting: γ0 = 0 is DPO
    dpo = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, delta=delta)
    zero = gammapo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, gamma_beta_ratio=0.0, tau=tau, delta=delta)
    assert torch.allclose(zero.losses, dpo.losses, atol=1e-12)
    # τ → ∞: DPO with the constant margin γ0
    const = gammapo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=beta, gamma_beta_ratio=ratio, tau=1e9, delta=delta)
    assert torch.allclose(const.losses, -F.logsigmoid(gaps - ratio * beta), atol=1e-8)


def test_gammapo_gradient_treats_the_margins_as_constants():
    pc, pr, rc, rr, _, _, mc, mr = _batch(5)
    beta, ratio, tau = 0.5, 0.6, 0.5
    pc, pr = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    gammapo_loss(pc, pr, rc, rr, None, None, mc, mr, beta=beta, gamma_beta_ratio=ratio, tau=tau,
                 delta=None).losses.sum().backward()
    c, r = _logratios(pc.detach(), pr.detach(), rc, rr, None, None, mc, mr, None)
    gaps = beta * (c - r)
    coeff = -beta * torch.sigmoid(-(gaps - _gamma_reference(gaps, ratio * beta, tau)))
    assert torch.allclose(pc.grad, coeff[:, None] * mc, atol=1e-12)
    assert torch.allclose(pr.grad, -coeff[:, None] * mr, atol=1e-12)


# --- AMaPO ------------------------------------------------------------------------------------------------------


def test_amapo_margins_hand_computed():
    m = torch.tensor([0.5, 1.0, 2.0, 0.1])
    mu = 0.9
    s = math.sqrt(((0.5 - mu) ** 2 + (1.0 - mu) ** 2 + (2.0 - mu) ** 2 + (0.1 - mu) ** 2) / 3)  # unbiased
    expected = [2.0 * math.exp((mu - 0.5) / s * mu), 0.0, 0.0, 2.0 * math.exp((mu - 0.1) / s * mu)]
    assert torch.allclose(amapo_margins(m, beta=2.0), torch.tensor(expected), atol=1e-12)
    assert torch.equal(amapo_margins(torch.tensor([0.3]), beta=2.0), torch.zeros(1))  # a batch of one
    assert torch.equal(amapo_margins(torch.full((3,), 0.1), beta=2.0), torch.zeros(3))  # all equal
    huge = amapo_margins(torch.tensor([-300.0, 300.0, 300.0, 300.0, 300.0]), beta=1.0)
    assert torch.isfinite(huge).all()  # capped exponent


@pytest.mark.parametrize("delta", [None, 3.0])
def test_amapo_formula(delta):
    pc, pr, _, _, dc, dr, mc, mr = _batch(6, b=4)
    beta = 2.0
    out = amapo_loss(pc, pr, None, None, dc, dr, mc, mr, beta=beta, delta=delta)
    a_c, a_r = _avg_logps(pc, pr, dc, dr, mc, mr, delta)
    m = a_c - a_r
    mu, s = m.mean(), m.std()
    gamma = torch.where(m < mu, beta * torch.exp((mu - m) / s * mu), torch.zeros_like(m))
    assert (gamma > 0).any() and (gamma == 0).any()
    assert torch.allclose(out.losses, -F.logsigmoid(beta * m - gamma), atol=1e-12)
    assert torch.allclose(out.chosen_rewards, beta * a_c)
    # pairs at or above the batch mean have no margin: there it is SimPO with γ = 0
    simpo = bmc_simpo_loss(pc, pr, None, None, dc, dr, mc, mr, beta=beta, gamma=0.0, delta=delta)
    assert torch.allclose(out.losses[gamma == 0], simpo.losses[gamma == 0], atol=1e-12)
    assert (out.losses[gamma > 0] > simpo.losses[gamma > 0]).all()


def test_amapo_gradient_treats_the_margins_as_constants():
    pc, pr, _, _, _, _, mc, mr = _batch(7)
    beta = 2.0
    pc, pr = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    amapo_loss(pc, pr, None, None, None, None, mc, mr, beta=beta, delta=None).losses.sum().backward()
    a_c, a_r = _avg_logps(pc.detach(), pr.detach(), None, None, mc, mr, None)
    m = a_c - a_r
    gamma = amapo_margins(m, beta=beta)
    coeff = -beta * torch.sigmoid(-(beta * m - gamma))
    assert torch.allclose(pc.grad, coeff[:, None] * mc / mc.sum(1, keepdim=True), atol=1e-12)
    assert torch.allclose(pr.grad, -coeff[:, None] * mr / mr.sum(1, keepdim=True), atol=1e-12)


# --- RePO -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [None, 2.0])
def test_repo_formula(delta):
    pc, pr, _, _, dc, dr, mc, mr = _batch(8)
    gamma = 0.6
    out = repo_loss(pc, pr, None, None, dc, dr, mc, mr, gamma=gamma, delta=delta, beta=2.5)
    a_c, a_r = _avg_logps(pc, pr, dc, dr, mc, mr, delta)
    expected = torch.clamp(gamma - (a_c - a_r), min=0)
    assert torch.allclose(out.losses, expected, atol=1e-12)
    assert (expected == 0).any() and (expected > 0).any()  # both regimes exercised
    assert torch.allclose(out.chosen_rewards, 2.5 * a_c)


@pytest.mark.parametrize("delta", [None, 2.0])
def test_repo_is_the_beta_to_infinity_limit_of_simpo(delta):
    pc, pr, _, _, dc, dr, mc, mr = _batch(9)
    a_c, a_r = _avg_logps(pc, pr, dc, dr, mc, mr, delta)
    gamma = (a_c - a_r)[0].item() + 0.01  # pair 0 sits just inside the margin, where the two losses differ most
    repo = repo_loss(pc, pr, None, None, dc, dr, mc, mr, gamma=gamma, delta=delta).losses
    gaps = []
    for beta in (1e1, 1e2, 1e4):
        # SimPO with γ_SimPO = β·γ, divided by β: softplus(β(γ − m))/β → ReLU(γ − m), error ≤ log(2)/β
        simpo = bmc_simpo_loss(pc, pr, None, None, dc, dr, mc, mr, beta=beta, gamma=beta * gamma, delta=delta)
        gaps.append((simpo.losses / beta - repo).abs().max().item())
        assert gaps[-1] <= math.log(2) / beta + 1e-12
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-4


# --- MADPO ------------------------------------------------------------------------------------------------------


def test_madpo_weights_hand_computed():
    c_max, c_min, lam, tau = 2.0, 0.5, 1.0, math.log(999)
    h = [-8.0, -3.0, 0.0, 0.5, 3.0, tau, 20.0]
    w = madpo_weights(torch.tensor(h), c_max=c_max, c_min=c_min, lam=lam, tau=tau)
    expected = []
    for x in h:
        c = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * math.exp(lam * (abs(x) - tau)))
        sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
        expected.append(sig(c * x) / sig(x) if x > -tau else 1.0)
    assert torch.allclose(w, torch.tensor(expected), atol=1e-12)
    assert w[5].item() == pytest.approx(1.0, abs=1e-12)  # c(τ) = 1
    assert w[3].item() > 1.0 and w[1].item() < 1.0  # a hard agreeing pair is up-weighted, a disagreeing one down
    # neutral: c_max = 1 (or c_min = 1) gives weight 1 everywhere
    assert torch.equal(madpo_weights(torch.tensor(h), c_max=1.0, c_min=0.5, lam=1.0, tau=tau), torch.ones(7))
    assert torch.equal(madpo_weights(torch.tensor(h), c_max=2.0, c_min=1.0, lam=1.0, tau=tau), torch.ones(7))
    with pytest.raises(ValueError, match="c_min"):
        madpo_weights(torch.tensor(h), c_max=0.5, c_min=0.2, lam=1.0, tau=tau)


@pytest.mark.parametrize("delta", [None, 2.0])
def test_madpo_formula_and_dpo_limit(delta):
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(10)
    h = torch.tensor([0.3, -2.0, 9.0, 4.0])
    kw = dict(beta=0.1, c_max=2.0, c_min=0.5, lam=1.0, tau=math.log(999), delta=delta)
    out = madpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, reward_margin=h, **kw)
    dpo = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=0.1, delta=delta)
    w = madpo_weights(h, c_max=2.0, c_min=0.5, lam=1.0, tau=math.log(999))
    assert torch.allclose(out.losses, w * dpo.losses, atol=1e-12)
    assert not torch.allclose(w, torch.ones(4))
    ones = madpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, reward_margin=h, **{**kw, "c_max": 1.0})
    assert torch.allclose(ones.losses, dpo.losses, atol=1e-12)
    with pytest.raises(ValueError, match="one `reward_margin` per pair"):
        madpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, reward_margin=h[:2], **kw)


def test_compute_preference_loss_passes_the_reward_margin_and_names_it_when_missing():
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(11)
    cfg = SimpleNamespace(beta=0.1, delta=2.0, madpo_c_max=2.0, madpo_c_min=0.5, madpo_lambda=1.0, madpo_tau=3.0)
    h = torch.tensor([0.3, -2.0, 9.0, 4.0])
    out = compute_preference_loss("madpo_bmc", cfg, pc, pr, rc, rr, dc, dr, mc, mr, {REWARD_MARGIN: h, "other": h})
    direct = madpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, reward_margin=h, beta=0.1, c_max=2.0, c_min=0.5, lam=1.0,
                        tau=3.0, delta=2.0)
    assert torch.equal(out.losses, direct.losses)
    with pytest.raises(ValueError, match=r"loss_type='madpo' needs the per-example input `reward_margin`"):
        compute_preference_loss("madpo", cfg, pc, pr, rc, rr, dc, dr, mc, mr)
    assert dict(get_loss_type("madpo").batch_inputs) == {"reward_margin": REWARD_MARGIN}
    assert not get_loss_type("bpo").batch_inputs


# --- shared: registry, `_bmc` twins, gradient checks ------------------------------------------------------------


_CFG = SimpleNamespace(beta=0.3, delta=2.0, bpo_alpha=0.3, gammapo_gamma_beta_ratio=0.4, gammapo_tau=1.0,
                       repo_gamma=0.2, madpo_c_max=2.0, madpo_c_min=0.5, madpo_lambda=1.0, madpo_tau=3.0)


def test_registry():
    assert set(NEW_TYPES) <= set(LOSS_TYPES)
    for name in NEW_NAMES:
        plain, twin = get_loss_type(name), get_loss_type(f"{name}_bmc")
        assert not plain.token_weighted and twin.token_weighted and twin.uses_diff_mask
        assert plain.fn is twin.fn and plain.reference_free == twin.reference_free
    assert {n for n in NEW_NAMES if get_loss_type(n).reference_free} == {"amapo", "repo"}


@pytest.mark.parametrize("name", NEW_NAMES)
def test_bmc_twin_with_all_false_masks_is_the_plain_objective(name):
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(12)
    none = torch.zeros_like(mc)
    extra = {REWARD_MARGIN: torch.tensor([0.3, -2.0, 9.0, 4.0])}
    plain = compute_preference_loss(name, _CFG, pc, pr, rc, rr, none, none, mc, mr, extra)
    twin = compute_preference_loss(f"{name}_bmc", _CFG, pc, pr, rc, rr, none, none, mc, mr, extra)
    assert torch.allclose(plain.losses, twin.losses, atol=1e-12)
    # and with diff tokens, the twin is a different objective
    weighted = compute_preference_loss(f"{name}_bmc", _CFG, pc, pr, rc, rr, dc, dr, mc, mr, extra)
    assert not torch.allclose(plain.losses, weighted.losses)


@pytest.mark.parametrize("name", ["bpo_bmc", "repo_bmc", "madpo_bmc", "gammapo_bmc"])
def test_gradcheck(name):
    """torch.autograd.gradcheck in float64 where the objective has no batch statistic (γ-PO: a batch of one, whose
    margin is the constant γ0). λ is a stop-gradient constant, so it is computed once from the base point."""
    b = 1 if name.startswith("gammapo") else 4
    pc, pr, rc, rr, dc, dr, mc, mr = _batch(13, b=b)
    spec = get_loss_type(name)
    kwargs = spec.kwargs_from(_CFG)
    kwargs["delta"] = None  # λ fixed below: gradcheck's perturbations must not move it
    lam_c, lam_r = _lam(pc, dc, mc, 2.0), _lam(pr, dr, mr, 2.0)
    extra = {"reward_margin": torch.tensor([0.3, -2.0, 9.0, 4.0])[:b]} if spec.batch_inputs else {}

    def f(pc_, pr_):
        # λ-scaled log-probs through the plain objective = the `_bmc` objective with λ held constant
        ref_c = None if spec.reference_free else rc * lam_c
        ref_r = None if spec.reference_free else rr * lam_r
        return spec.fn(pc_ * lam_c, pr_ * lam_r, ref_c, ref_r, dc, dr, mc, mr, **extra, **kwargs).losses

    inputs = (pc.clone().requires_grad_(True), pr.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    # and the real `_bmc` objective has exactly that gradient
    a = (pc.clone().requires_grad_(True), pr.clone().requires_grad_(True))
    b_ = (pc.clone().requires_grad_(True), pr.clone().requires_grad_(True))
    spec.fn(*a, None if spec.reference_free else rc, None if spec.reference_free else rr, dc, dr, mc, mr, **extra,
            **spec.kwargs_from(_CFG)).losses.sum().backward()
    f(*b_).sum().backward()
    assert torch.allclose(a[0].grad, b_[0].grad, atol=1e-12) and torch.allclose(a[1].grad, b_[1].grad, atol=1e-12)


# --- `python -m bmc_train --loss_type <each>` on a tiny model ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if not SHARED_QA.exists():
        pytest.skip(f"QA data not found at {SHARED_QA}")
    from bmc_train.testing import build_tiny_model, qa_bridged_rows, read_qa_rows

    qa = read_qa_rows(SHARED_QA, limit=24)
    model = build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), [r["problem"] + "\n" + r["solution"] for r in qa])
    rows = [r for r in qa_bridged_rows(qa) if r["bmc_status"] == "bridged"][:12]
    # MADPO reads a reward-model margin per pair; here a made-up one that spans the weight schedule
    for i, row in enumerate(rows):
        row[REWARD_MARGIN] = [-8.0, -1.0, 0.0, 0.5, 3.0, 12.0][i % 6]
    data = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, data


@pytest.mark.parametrize("loss_type", NEW_TYPES + AUTHOR_FORMS)
def test_cli_three_steps(tmp_path, tiny_run, loss_type):
    model, data = tiny_run
    out = tmp_path / "run"
    beta = "2.0" if loss_type.startswith(("amapo", "repo")) else "0.1"
    # gammapo_simpo reads its own β (a changed --beta would be refused as ignored)
    beta_flag = "--gammapo_simpo_beta" if loss_type.startswith("gammapo_simpo") else "--beta"
    cmd = [
        sys.executable, "-m", "bmc_train", "--loss_type", loss_type, "--model_name_or_path", str(model),
        "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size",
        "4", "--learning_rate", "1e-3", beta_flag, beta, "--delta", "2.0", "--logging_steps", "1", "--bf16", "false",
        "--dtype", "float32", "--gradient_checkpointing", "false", "--max_length", "256", "--disable_tqdm", "true",
        "--report_to", "none", "--save_strategy", "no", "--warmup_steps", "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(logs) == 3
    assert all(math.isfinite(h["loss"]) for h in logs)
    spec = get_loss_type(loss_type)
    assert all(("bmc/lambda_chosen_mean" in h) == spec.token_weighted for h in logs)
    if spec.token_weighted:
        assert all(2.0 <= h["bmc/lambda_chosen_mean"] <= 3.0 for h in logs)
    assert (out / "model.safetensors").exists()


def test_cli_rejects_madpo_without_reward_margin_before_loading_a_model(tmp_path, capsys):
    import re

    from bmc_train.cli import main as cli_main

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    assert cli_main(["--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(data),
                     "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--loss_type", "madpo_bmc"]) == 2
    assert re.search(r"missing column\(s\) \['reward_margin'\].*loss_type='madpo_bmc'", capsys.readouterr().err)


def test_trainer_rejects_madpo_without_reward_margin(tmp_path, tiny_run):
    from bmc_train import BMCConfig, BMCTrainer

    model, data = tiny_run
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    ds = Dataset.from_list(rows).remove_columns([REWARD_MARGIN])
    args = BMCConfig(output_dir=str(tmp_path / "o"), report_to="none", loss_type="madpo", max_length=256,
                     gradient_checkpointing=False)
    with pytest.raises(ValueError, match=r"loss_type='madpo' reads the per-example column\(s\) \['reward_margin'\]"):
        BMCTrainer(str(model), args=args, train_dataset=ds)


def test_collator_returns_the_reward_margin_and_refuses_a_bad_value():
    from bmc_train import DataCollatorForBMC

    examples = [{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5], REWARD_MARGIN: 1.5},
                {"prompt_ids": [6], "chosen_ids": [7, 8], "rejected_ids": [9], REWARD_MARGIN: -2}]
    out = DataCollatorForBMC(pad_token_id=0, float_columns=(REWARD_MARGIN,))(examples)
    assert out[REWARD_MARGIN].dtype == torch.float32 and out[REWARD_MARGIN].tolist() == [1.5, -2.0]
    assert REWARD_MARGIN not in DataCollatorForBMC(pad_token_id=0)(examples)
    with pytest.raises(ValueError, match=r"batch example 1: `reward_margin` must be a finite number, got None"):
        DataCollatorForBMC(pad_token_id=0, float_columns=(REWARD_MARGIN,))([examples[0], {**examples[1],
                                                                                           REWARD_MARGIN: None}])


def test_cli_rejects_a_bad_reward_margin_value_before_loading_a_model(tmp_path, capsys):
    # before: only the column was checked; a missing or NaN margin on some row failed in the collator when that row's
    # batch came up, mid-training, as a bug (exit 1)
    from bmc_train.cli import main as cli_main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "c", "rejected": "r", REWARD_MARGIN: m}) + "\n"
                            for i, m in enumerate([1.5, None, 2.0])))
    assert cli_main(["--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(data),
                     "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--loss_type", "madpo"]) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "`reward_margin` must be a finite number, got None" in err, err
    # a row the status filter leaves out is not trained: its margin is not asked for
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "c", "rejected": "r", REWARD_MARGIN: m,
                                        "bmc_status": s}) + "\n"
                            for i, (m, s) in enumerate([(1.5, "bridged"), (None, "failed"), (2.0, "bridged")])))
    assert cli_main(["--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(data),
                     "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--loss_type", "madpo"]) == 2
    assert "no-model: no such folder" in capsys.readouterr().err  # reached the model check
