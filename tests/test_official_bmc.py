"""The paper's objectives at their defaults against the official BMC code (YJiangcm/BMC@958d49e,
`scripts/dpo_bmc_trainer.py`: `concatenated_forward` + `dpo_loss`), SimPO's (princeton-nlp/SimPO@1b3e8f3) and
AMaPO's (Shiroha-Offical/AMaPO@c6c89cc) label smoothing and γ-PO's ε (sunjie279/gammaPO@4f2e09c), each transcribed
into float64 tensors here from random logits, so that the official per-token log-probs, λ, lengths and
`nn.CrossEntropyLoss` are computed the way the official code computes them. One test per row of the table in
docs/related-objectives.md ("Official forms at defaults")."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from loss_batches import float64_default  # noqa: F401  (autouse fixture)
from torch import nn

from bmc_train import BMCConfig
from bmc_train.losses import PairLogps, compute_preference_loss, gammapo_simpo_loss
from bmc_train.losses.gammapo import gammapo_target_margins

B, T, V = 3, 9, 11
DELTA = 2.0


def _official_batch(seed: int):
    """Random logits and labels laid out as the official `concatenated_forward` sees them: [chosen; rejected] rows,
    -100 on the prompt and the padding, and the per-token log-probs, loss mask and lengths of its
    `get_batch_logps`, plus random diff masks standing in for `find_modifications` (already shifted, `[:, 1:]`)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * B, T, V, generator=g) * 2
    ref_logits = logits + torch.randn(2 * B, T, V, generator=g) * 0.7  # the policy has drifted from π_ref
    labels = torch.randint(0, V, (2 * B, T), generator=g)
    prompt = torch.tensor([2, 3, 1, 2, 3, 1])
    length = torch.tensor([T, T - 2, T - 1, T - 1, T, T - 3])
    pos = torch.arange(T)
    labels = labels.masked_fill((pos[None] < prompt[:, None]) | (pos[None] >= length[:, None]), -100)
    diff = (torch.rand(2 * B, T - 1, generator=g) < 0.4).long()
    return logits, ref_logits, labels, diff


def _get_batch_logps(logits, labels):
    """Official `get_batch_logps`: shift, gather, loss mask, lengths."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != -100
    labels[labels == -100] = 0
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    return per_token_logps, loss_mask, loss_mask.sum(-1)


def _official_forward(logits, labels, diff, loss_type, delta=DELTA):
    """Official `concatenated_forward` from the logits on: λ from *this* model's own per-token log-probs."""
    per_token_logps, loss_mask, size_completion = _get_batch_logps(logits, labels)
    chosen_length, rejected_length = size_completion.split(B, dim=0)
    chosen_ptl, rejected_ptl = per_token_logps.split(B, dim=0)
    chosen_loss_mask, rejected_loss_mask = loss_mask.split(B, dim=0)
    chosen_token_mask, rejected_token_mask = diff.split(B, dim=0)
    rejected_w = 1 + rejected_token_mask * torch.clamp(torch.exp(-rejected_ptl.detach().clone()), max=delta)
    chosen_w = 1 + chosen_token_mask * torch.clamp(torch.exp(-chosen_ptl.detach().clone()), max=delta)
    chosen_logps = (chosen_ptl * chosen_loss_mask * chosen_w).sum(-1)
    rejected_logps = (rejected_ptl * rejected_loss_mask * rejected_w).sum(-1)
    if loss_type == "figa":
        chosen_logps = (chosen_ptl * chosen_loss_mask * chosen_token_mask).sum(-1)
        rejected_logps = 0.5 * (rejected_ptl * rejected_loss_mask * rejected_token_mask).sum(-1)
    nll_loss = nn.CrossEntropyLoss()(logits[:B][..., :-1, :].contiguous().view(-1, V),
                                     labels[:B][..., 1:].contiguous().view(-1))
    if loss_type in ("ipo", "orpo"):
        chosen_logps = chosen_logps / chosen_length
        rejected_logps = rejected_logps / rejected_length
    return chosen_logps, rejected_logps, nll_loss, chosen_length, rejected_length


def _official_dpo_loss(loss_type, pc, pr, rc, rr, chosen_length, rejected_length, nll, beta, label_smoothing):
    """Official `dpo_loss`, the branches the paper's objectives use (reference_free False, reverse KL)."""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        return (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                - F.logsigmoid(-beta * logits) * label_smoothing)
    if loss_type == "r_dpo":
        z = beta * (logits - (chosen_length - rejected_length))
        return -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
    if loss_type == "orpo":
        log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
        return nll + beta * -F.logsigmoid(log_odds)
    if loss_type == "figa":
        return -pc + pr
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    raise ValueError(loss_type)


def _official(loss_type, seed, *, beta, label_smoothing=0.0):
    logits, ref_logits, labels, diff = _official_batch(seed)
    pc, pr, nll, len_c, len_r = _official_forward(logits, labels, diff, loss_type)
    with torch.no_grad():
        rc, rr, _, _, _ = _official_forward(ref_logits, labels, diff, loss_type)
    return _official_dpo_loss(loss_type, pc, pr, rc, rr, len_c, len_r, nll, beta, label_smoothing)


def _ours(loss_type, seed, config):
    """The same batch as `PairLogps` (what BMCTrainer hands the objectives) through the `loss_type` switch."""
    logits, ref_logits, labels, diff = _official_batch(seed)
    policy, mask, _ = _get_batch_logps(logits, labels)
    ref, _, _ = _get_batch_logps(ref_logits, labels)
    diff = diff.bool() & mask
    (pc, pr), (rc, rr), (dc, dr), (mc, mr) = (x.split(B, dim=0) for x in (policy, ref, diff, mask))
    return compute_preference_loss(loss_type, config, PairLogps(pc, pr, rc, rr, dc, dr, mc, mr)).losses


def _config(loss_type, **kwargs):
    return BMCConfig("unused", loss_type=loss_type, delta=DELTA, report_to="none", **kwargs)


# (our loss_type, official loss_type, β): the recipes' β values (QA/math 0.05, instruction following 0.01)
OFFICIAL_ROWS = [("bmc", "sigmoid", 0.05), ("rdpo_bmc", "r_dpo", 0.01), ("ipo_bmc", "ipo", 0.05),
                 ("orpo_bmc", "orpo", 0.05), ("figa", "figa", 0.05)]


@pytest.mark.parametrize(("ours", "theirs", "beta"), OFFICIAL_ROWS)
def test_defaults_with_official_reference_weights_equal_the_official_bmc_code(ours, theirs, beta):
    """`bmc_reference_weights="reference"` + the defaults (rdpo_alpha = orpo_lambda = β, FIGA sums, ORPO's
    micro-batch token-mean NLL) reproduce the official per-pair losses (ORPO: their batch mean, the NLL being one
    number per micro-batch) and their gradients."""
    config = _config(ours, beta=beta, bmc_reference_weights="reference")
    official = _official(theirs, 1, beta=beta)
    mine = _ours(ours, 1, config)
    assert torch.allclose(mine, official, atol=1e-12, rtol=0)
    assert torch.allclose(mine.mean(), official.mean(), atol=1e-12)


@pytest.mark.parametrize(("ours", "theirs", "beta"), OFFICIAL_ROWS)
def test_gradients_equal_the_official_bmc_code(ours, theirs, beta):
    config = _config(ours, beta=beta, bmc_reference_weights="reference")
    logits, ref_logits, labels, diff = _official_batch(2)
    official_logits = logits.clone().requires_grad_(True)
    pc, pr, nll, len_c, len_r = _official_forward(official_logits, labels, diff, theirs)
    with torch.no_grad():
        rc, rr, _, _, _ = _official_forward(ref_logits, labels, diff, theirs)
    _official_dpo_loss(theirs, pc, pr, rc, rr, len_c, len_r, nll, beta, 0.0).mean().backward()

    our_logits = logits.clone().requires_grad_(True)
    policy, mask, _ = _get_batch_logps(our_logits, labels)
    ref, _, _ = _get_batch_logps(ref_logits, labels)
    d = diff.bool() & mask
    (a, b), (c, e), (f, g), (h, i) = (x.split(B, dim=0) for x in (policy, ref, d, mask))
    compute_preference_loss(ours, config, PairLogps(a, b, c, e, f, g, h, i)).losses.mean().backward()
    assert torch.allclose(our_logits.grad, official_logits.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("ours", "theirs"), [("dpo", "sigmoid"), ("bmc", "sigmoid"), ("rdpo_bmc", "r_dpo")])
def test_label_smoothing_is_the_official_conservative_form(ours, theirs):
    config = _config(ours, beta=0.05, label_smoothing=0.2, bmc_reference_weights="reference")
    official = _official(theirs, 3, beta=0.05, label_smoothing=0.2)
    if ours == "dpo":  # the official code always weights; plain DPO is its form with all-false diff masks
        logits, ref_logits, labels, diff = _official_batch(3)
        pc, pr, nll, lc, lr = _official_forward(logits, labels, torch.zeros_like(diff), theirs)
        rc, rr, _, _, _ = _official_forward(ref_logits, labels, torch.zeros_like(diff), theirs)
        official = _official_dpo_loss(theirs, pc, pr, rc, rr, lc, lr, nll, 0.05, 0.2)
    mine = _ours(ours, 3, config)
    assert torch.allclose(mine, official, atol=1e-12, rtol=0)
    assert not torch.allclose(mine, _ours(ours, 3, _config(ours, beta=0.05, bmc_reference_weights="reference")))


def test_policy_reference_weights_are_the_papers_eq4_and_differ_once_the_policy_drifts():
    """The default ("policy", eq. 4) weights both terms with the policy's λ; the official form differs only
    through π_ref's λ on diff tokens, and equals it when π_θ = π_ref."""
    paper = _ours("bmc", 4, _config("bmc", beta=0.05))
    official = _official("sigmoid", 4, beta=0.05)
    assert not torch.allclose(paper, official, atol=1e-6)
    logits, _, labels, diff = _official_batch(4)
    policy, mask, _ = _get_batch_logps(logits, labels)
    d = diff.bool() & mask
    lam = 1 + d * torch.clamp(torch.exp(-policy), max=DELTA)
    logratio = ((policy - _get_batch_logps(_official_batch(4)[1], labels)[0]) * lam * mask).sum(-1)
    eq4 = -F.logsigmoid(0.05 * (logratio[:B] - logratio[B:]))
    assert torch.allclose(paper, eq4, atol=1e-12)
    # π_θ = π_ref: both forms are DPO-BMC with one λ, and equal
    same = SimplePair.at_reference(policy, d, mask)
    for weights in ("policy", "reference"):
        out = compute_preference_loss("bmc", _config("bmc", beta=0.05, bmc_reference_weights=weights), same)
        assert torch.allclose(out.losses, torch.full((B,), torch.log(torch.tensor(2.0)).item()), atol=1e-12)


class SimplePair:
    @staticmethod
    def at_reference(policy, diff, mask):
        (pc, pr), (dc, dr), (mc, mr) = (x.split(B, dim=0) for x in (policy, diff, mask))
        return PairLogps(pc, pr, pc.clone(), pr.clone(), dc, dr, mc, mr)


def test_simpo_and_amapo_label_smoothing_follow_their_official_code():
    logits, _, labels, _ = _official_batch(5)
    policy, mask, lengths = _get_batch_logps(logits, labels)
    avg = (policy * mask).sum(-1) / lengths
    pc, pr = avg.split(B)
    beta, gamma, eps = 2.0, 1.0, 0.1
    # princeton-nlp/SimPO simpo_loss, sigmoid: logits = pi_logratios − gamma_beta_ratio (γ/β)
    z = pc - pr - gamma / beta
    simpo = -F.logsigmoid(beta * z) * (1 - eps) - F.logsigmoid(-beta * z) * eps
    (a, b), (m1, m2) = policy.split(B), mask.split(B)
    batch = PairLogps(a, b, None, None, None, None, m1, m2)
    ours = compute_preference_loss("simpo", _config("simpo", beta=beta, simpo_gamma=gamma, label_smoothing=eps), batch)
    assert torch.allclose(ours.losses, simpo, atol=1e-12)
    # Shiroha-Offical/AMaPO amapo_loss, sigmoid (one process: the all-gather is the batch itself)
    m = pc - pr
    mu, s = m.mean(), m.std()
    margin = beta * torch.where(m - mu < 0, torch.exp(((mu - m) / s) * mu), 0).detach()
    amapo = (-F.logsigmoid(beta * m - margin) * (1 - eps) - F.logsigmoid(-(beta * m - margin)) * eps)
    ours = compute_preference_loss("amapo", _config("amapo", beta=beta, label_smoothing=eps), batch)
    assert torch.allclose(ours.losses, amapo, atol=1e-12)


def _official_solver(reward_gaps, *, gamma0, tau, eps=1e-10):
    """sunjie279/gammaPO get_gamma_dq's loop, verbatim (over an already assembled [sampled; current] vector)."""
    p_lr = min(0.5 / tau, 1)
    batch_size = reward_gaps.numel()
    p = torch.full_like(reward_gaps, fill_value=1 / batch_size)
    for _ in range(20):
        gamma = gamma0 * batch_size * p
        gamma_grad = gamma0 * batch_size
        KL_grad = tau * (1 + torch.log(batch_size * (p + eps)))
        p_grad = KL_grad + gamma_grad / (1 + torch.exp(reward_gaps - gamma)) / batch_size
        exp_grad = torch.exp(-p_lr * p_grad)
        p = p * exp_grad / torch.sum(p * exp_grad)
    return gamma


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.45, 3.0, 10.0])
def test_gammapo_solver_uses_the_official_eps(tau):
    """At small τ the step is 1 and p of low-gap pairs collapses towards 0, where ε = 1e-10 matters; with the
    official ε the margins agree to float64 rounding."""
    gaps = torch.cat([torch.linspace(-30, 12, 60), torch.randn(40, generator=torch.Generator().manual_seed(0)) * 8])
    official = _official_solver(gaps, gamma0=4.0, tau=tau)
    ours = gammapo_target_margins(gaps, gamma0=4.0, tau=tau)
    assert torch.allclose(ours, official, atol=1e-9, rtol=1e-9), (ours - official).abs().max()
    without = gammapo_target_margins(gaps, gamma0=4.0, tau=tau, eps=0.0)
    if tau <= 0.05:
        assert (without - official).abs().max() > 1e-6  # what the ε changes where it matters


def test_gammapo_simpo_queue_sample_matches_official_at_small_tau():
    g = torch.Generator().manual_seed(7)
    pc, pr = -torch.rand(4, 6, generator=g) * 3, -torch.rand(4, 6, generator=g) * 3
    m = torch.ones(4, 6, dtype=torch.bool)
    history = (torch.randn(300, generator=g) * 5).tolist()
    sampled = random.Random(3).sample(history, 252)
    out = gammapo_simpo_loss(pc, pr, None, None, None, None, m, m, beta=10.0, gamma_beta_ratio=0.4, tau=0.2,
                             delta=None, queued_gaps=torch.tensor(sampled))
    gaps = 10.0 * (pc.mean(1) - pr.mean(1))
    gamma = _official_solver(torch.tensor(sampled + gaps.tolist()), gamma0=4.0, tau=0.2)[-4:]
    assert torch.allclose(out.losses, -F.logsigmoid(gaps - gamma), atol=1e-9)


def test_repo_and_madpo_equal_their_official_code():
    from bmc_train.losses import madpo_loss, repo_loss

    g = torch.Generator().manual_seed(9)
    pc, pr, rc, rr = (-torch.rand(4, 6, generator=g) * 3 for _ in range(4))
    m = torch.ones(4, 6, dtype=torch.bool)
    # junkangwu/RePO@79cdf5b, simpo_trainer.get_batch_loss_metrics, loss_type "repo" (length_norm inputs)
    pi_logratios = pc.mean(1) - pr.mean(1)
    official_repo = F.relu(-(pi_logratios - 0.6))
    ours = repo_loss(pc, pr, None, None, None, None, m, m, gamma=0.6, delta=None)
    assert torch.allclose(ours.losses, official_repo, atol=1e-12)
    # sirano1004/Margin-Apative-Direct-Preference-Optimization@306779b, MADPOLoss.forward with choices = 0 (y1 chosen)
    beta, c_max, c_min, lmbda, tau = 0.1, 2.0, 0.5, 1.0, 6.907
    margin = torch.tensor([-8.0, 0.3, 4.0, 12.0])
    coef = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * torch.exp(lmbda * (margin.abs() - tau)))
    w1 = torch.sigmoid(coef * margin) / torch.sigmoid(margin) * (margin > -tau) + 1 * (margin <= -tau)
    logits = torch.stack([beta * (pc.sum(1) - rc.sum(1)), beta * (pr.sum(1) - rr.sum(1))], dim=1)
    official_madpo = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long), reduction="none") * w1
    ours = madpo_loss(pc, pr, rc, rr, None, None, m, m, reward_margin=margin, beta=beta, c_max=c_max, c_min=c_min,
                      lam=lmbda, tau=tau, delta=None)
    assert torch.allclose(ours.losses, official_madpo, atol=1e-12)
