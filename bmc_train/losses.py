"""The BMC token-weighted preference objectives, as pure functions of per-token log-probabilities.

Every function takes per-token log-probs of shape `[B, T]` (the log-prob of each completion token, already aligned
with its label; positions outside the completion may hold anything and are ignored) and boolean masks of the same
shape:

* `*_loss_mask`: the completion tokens (TRL's shifted `completion_mask`);
* `*_diff_mask`: the tokens that differ between the pseudo-winning response ỹ_w and the losing response y_l
  (`diff(ỹ_w | y_l)` and `diff(y_l | ỹ_w)` in the paper).

and returns a `PreferenceLossOutput(losses[B], chosen_rewards[B], rejected_rewards[B])`.

The token weight of the paper (eq. 7 and 10) is

    λ_t = 1 + min(sg(1 / π_θ(y_t | y_<t, x)), δ)   if y_t is a diff token,   1 otherwise,

computed from the *policy* log-probs under `torch.no_grad` (sg = stop-gradient), so gradients flow only through the
log-ratios, never through λ. `delta=None` turns the weighting off (λ = 1 everywhere): that is the plain xPO
objective, so `bmc_dpo_loss(..., delta=None)` is exactly DPO.

The loss types behind the one `loss_type` switch live in `LOSS_TYPES`; an objective is one more pure function plus
one `register_loss_type(...)` call. Beside the BMC ones live five related objectives (docs/related-objectives.md):
BPO, γ-PO, AMaPO, RePO and MADPO, each with a `_bmc` twin. An objective that needs a per-example input beyond the
log-probs (MADPO's reward-model margin) declares it in `LossTypeSpec.batch_inputs`; the trainer collates that
dataset column and `compute_preference_loss` passes it on as a keyword argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_TYPES",
    "LossTypeSpec",
    "PreferenceLossOutput",
    "REWARD_MARGIN",
    "amapo_loss",
    "amapo_margins",
    "bmc_dpo_loss",
    "bmc_ipo_loss",
    "bmc_orpo_loss",
    "bmc_rdpo_loss",
    "bmc_simpo_loss",
    "bmc_token_weights",
    "bpo_loss",
    "compute_preference_loss",
    "figa_loss",
    "gammapo_loss",
    "gammapo_target_margins",
    "get_loss_type",
    "madpo_loss",
    "madpo_weights",
    "register_loss_type",
    "repo_loss",
    "token_weight_stats",
]

REWARD_MARGIN = "reward_margin"  # dataset column MADPO reads: r_φ(x, y_w) − r_φ(x, y_l) from a reward model


class PreferenceLossOutput(NamedTuple):
    """Per-pair losses and the implicit rewards TRL logs (`rewards/chosen`, `rewards/rejected`, margins, accuracy)."""

    losses: torch.Tensor  # [B]
    chosen_rewards: torch.Tensor  # [B], detached
    rejected_rewards: torch.Tensor  # [B], detached


# --- token weights --------------------------------------------------------------------------------------------


def bmc_token_weights(
    policy_logps: torch.Tensor,
    diff_mask: torch.Tensor | None,
    loss_mask: torch.Tensor | None = None,
    *,
    delta: float | None,
) -> torch.Tensor:
    """λ of eq. 7/10: `1 + min(sg(1/π_θ), δ)` on diff tokens, 1 on the other tokens, 0 outside `loss_mask`.

    Args:
        policy_logps: `[B, T]` per-token log-probs of the *policy* (the weights are computed from a detached copy).
        diff_mask: `[B, T]` bool, the varied tokens. `None` means no diff token.
        loss_mask: `[B, T]` bool/0-1, the completion tokens. `None` means every position counts.
        delta: The cap δ ≥ 0 on `1/π`. `None` disables the weighting (λ = 1 everywhere).
    """
    if delta is not None and delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    with torch.no_grad():
        logps = policy_logps.detach().to(torch.promote_types(policy_logps.dtype, torch.float32))
        weights = torch.ones_like(logps)
        if delta is not None and diff_mask is not None:
            if delta == 0:
                inv_p = torch.zeros_like(logps)
            else:
                # min(1/π, δ) = exp(min(-log π, log δ)): the clamp before exp keeps it finite for any log π
                inv_p = torch.exp(torch.clamp(-logps, max=math.log(delta)))
            weights = torch.where(diff_mask.bool(), 1.0 + inv_p, weights)
        if loss_mask is not None:
            weights = weights * loss_mask.to(weights.dtype)
    return weights.to(policy_logps.dtype)


def token_weight_stats(
    weights: torch.Tensor, diff_mask: torch.Tensor, loss_mask: torch.Tensor, *, delta: float | None
) -> dict[str, torch.Tensor]:
    """Sums and counts (tensors, so they can be gathered across ranks) for the `bmc/*` metrics of one side.

    Returns `lambda_sum` (Σλ over diff tokens), `diff_tokens`, `tokens` (completion tokens) and `capped`
    (diff tokens where 1/π reached δ, so λ = 1 + δ).
    """
    with torch.no_grad():
        diff = diff_mask.bool() & loss_mask.bool()
        w = weights.detach().float()
        capped = torch.zeros((), device=w.device)
        if delta is not None and delta > 0:
            capped = (diff & (w >= 1.0 + delta * (1 - 1e-6))).sum().float()
        return {
            "lambda_sum": (w * diff).sum(),
            "diff_tokens": diff.sum().float(),
            "tokens": loss_mask.bool().sum().float(),
            "capped": capped,
        }


# --- helpers ----------------------------------------------------------------------------------------------------


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    return mask.bool()


def _weighted_sum(logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # `weights` is already 0 outside the completion; where() rather than `*` so that garbage (even inf) outside the
    # completion cannot leak in through 0 * inf.
    return torch.where(weights != 0, logps * weights, torch.zeros_like(logps)).sum(dim=-1)


def _side_weights(
    policy_logps: torch.Tensor, diff_mask: torch.Tensor | None, loss_mask: torch.Tensor | None, delta: float | None
) -> torch.Tensor:
    return bmc_token_weights(policy_logps, diff_mask, _mask(loss_mask, policy_logps), delta=delta)


def _weighted_logratios(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    diff_mask: torch.Tensor | None,
    loss_mask: torch.Tensor | None,
    delta: float | None,
) -> torch.Tensor:
    """Σ_t λ_t (log π_θ − log π_ref), λ from the policy (eq. 4)."""
    weights = _side_weights(policy_logps, diff_mask, loss_mask, delta)
    return _weighted_sum(policy_logps - ref_logps, weights)


def _token_count(loss_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """|y|: the unweighted number of completion tokens (at least 1)."""
    return _mask(loss_mask, like).sum(dim=-1).clamp(min=1).to(like.dtype)


def _weighted_mean_logps(
    policy_logps: torch.Tensor, diff_mask: torch.Tensor | None, loss_mask: torch.Tensor | None, delta: float | None
) -> torch.Tensor:
    """Σ_t λ_t log π_θ(y_t) / |y|: SimPO's length-normalised reference-free reward, without β (|y| unweighted)."""
    weights = _side_weights(policy_logps, diff_mask, loss_mask, delta)
    return _weighted_sum(policy_logps, weights) / _token_count(loss_mask, policy_logps)


def _pair_logratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    delta: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σλ_wΔ_w, Σλ_lΔ_l): the weighted log-ratio sums of both sides, the reward core of every reference-based type."""
    chosen = _weighted_logratios(policy_chosen_logps, ref_chosen_logps, chosen_diff_mask, chosen_loss_mask, delta)
    rejected = _weighted_logratios(
        policy_rejected_logps, ref_rejected_logps, rejected_diff_mask, rejected_loss_mask, delta
    )
    return chosen, rejected


def _require_reference(name: str, *refs: torch.Tensor | None) -> None:
    if any(r is None for r in refs):
        raise ValueError(f"{name} needs the reference model's per-token log-probs (ref_chosen_logps/ref_rejected_logps)")


# --- objectives -------------------------------------------------------------------------------------------------


def bmc_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    beta: float,
    delta: float | None,
) -> PreferenceLossOutput:
    """DPO-BMC (eq. 4): `−log σ(β Σλ_w (log π_θ − log π_ref)(ỹ_w) − β Σλ_l (log π_θ − log π_ref)(y_l))`.

    With `delta=None` (or all-false diff masks) this is exactly DPO (Rafailov et al., 2023).
    """
    _require_reference("DPO", ref_chosen_logps, ref_rejected_logps)
    chosen, rejected = _pair_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_diff_mask, rejected_diff_mask, chosen_loss_mask, rejected_loss_mask, delta,
    )
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


def bmc_ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    tau: float,
    delta: float | None,
    beta: float = 1.0,
) -> PreferenceLossOutput:
    """IPO(-BMC) (Azar et al., 2024): `(Σλ_wΔ_w/|y_w| − Σλ_lΔ_l/|y_l| − 1/(2τ))²`, Δ = log π_θ − log π_ref.

    The weighted sums are divided by the *unweighted* token counts, as in the official BMC code and in TRL's
    length-normalised `ipo` loss (with `delta=None` this equals TRL's `loss_type="ipo"` with `beta=τ`). `beta`
    only scales the logged rewards.
    """
    _require_reference("IPO", ref_chosen_logps, ref_rejected_logps)
    chosen, rejected = _pair_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_diff_mask, rejected_diff_mask, chosen_loss_mask, rejected_loss_mask, delta,
    )
    chosen_avg = chosen / _token_count(chosen_loss_mask, chosen)
    rejected_avg = rejected / _token_count(rejected_loss_mask, rejected)
    losses = (chosen_avg - rejected_avg - 1.0 / (2.0 * tau)) ** 2
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


def bmc_rdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    beta: float,
    alpha: float,
    delta: float | None,
) -> PreferenceLossOutput:
    """R-DPO(-BMC) (Park et al., 2024): `−log σ(β Σλ_wΔ_w − β Σλ_lΔ_l − (α|y_w| − α|y_l|))`.

    |y| is the unweighted completion length (the regulariser is about length, not about emphasis).
    """
    _require_reference("R-DPO", ref_chosen_logps, ref_rejected_logps)
    chosen, rejected = _pair_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_diff_mask, rejected_diff_mask, chosen_loss_mask, rejected_loss_mask, delta,
    )
    length_term = alpha * (_token_count(chosen_loss_mask, chosen) - _token_count(rejected_loss_mask, rejected))
    losses = -F.logsigmoid(beta * (chosen - rejected) - length_term)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


def bmc_simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    beta: float,
    gamma: float,
    delta: float | None,
) -> PreferenceLossOutput:
    """SimPO(-BMC) (Meng et al., 2024), reference-free: `−log σ(β/|y_w| Σλ_w log π_θ(ỹ_w) − β/|y_l| Σλ_l log π_θ(y_l) − γ)`.

    The reference log-probs are ignored (pass `None`). The rewards are the length-normalised `β/|y| Σλ log π_θ`.
    """
    chosen = beta * _weighted_mean_logps(policy_chosen_logps, chosen_diff_mask, chosen_loss_mask, delta)
    rejected = beta * _weighted_mean_logps(policy_rejected_logps, rejected_diff_mask, rejected_loss_mask, delta)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return PreferenceLossOutput(losses, chosen.detach(), rejected.detach())


def bmc_orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    lam: float,
    delta: float | None,
    beta: float = 1.0,
) -> PreferenceLossOutput:
    """ORPO(-BMC) (Hong et al., 2024), reference-free: `−log p(y_w) − λ log σ(log odds(y_w) − log odds(y_l))`.

    `log p(y) = Σλ_t log π_θ(y_t) / |y|` (weighted sum over the unweighted length, as the official BMC code does for
    ORPO; with `delta=None` it is ORPO's mean token log-prob), `log odds(y) = log p − log(1 − p)`. The NLL term is
    the plain (unweighted) mean token NLL of the chosen response, the SFT part of ORPO. Rewards are `β log p(y)`.
    """
    chosen_avg = _weighted_mean_logps(policy_chosen_logps, chosen_diff_mask, chosen_loss_mask, delta)
    rejected_avg = _weighted_mean_logps(policy_rejected_logps, rejected_diff_mask, rejected_loss_mask, delta)

    def log_odds(avg_logp: torch.Tensor) -> torch.Tensor:
        # log(p / (1 - p)) with p = exp(avg_logp) < 1; the clamp keeps log1p(-p) finite when p rounds to 1
        avg_logp = avg_logp.clamp(max=-1e-6)
        return avg_logp - torch.log1p(-torch.exp(avg_logp))

    ratio = F.logsigmoid(log_odds(chosen_avg) - log_odds(rejected_avg))
    nll = -_weighted_sum(policy_chosen_logps, _mask(chosen_loss_mask, policy_chosen_logps).to(policy_chosen_logps.dtype))
    nll = nll / _token_count(chosen_loss_mask, policy_chosen_logps)
    losses = nll - lam * ratio
    return PreferenceLossOutput(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach())


def figa_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    alpha: float,
    beta: float,
) -> PreferenceLossOutput:
    """FIGA (Guo et al., 2024), the token-level SFT baseline of the BMC paper (Table 7):

        L = [ −α Σ_{t ∈ diff(ỹ_w|y_l)} log π_θ(ỹ_w,t)  +  β Σ_{t ∈ diff(y_l|ỹ_w)} log π_θ(y_l,t) ] / N

    i.e. a weighted cross-entropy that rewards the tokens the reviser added or substituted (weight α) and penalises
    the tokens it deleted or substituted (weight −β); tokens both responses share get weight 0 (FIGA's γ = 0). N is
    the number of weighted tokens of the pair, as FIGA's code normalises by the count of non-zero weights. Reference
    free; no λ (FIGA's weights are constants). FIGA's code optionally drops bad tokens whose NLL lies outside
    [0.6, 1.0]; that heuristic is not in the BMC paper's formula and is not applied here. Rewards are the mean
    log-probs of the diff tokens of each side.
    """
    c_diff = _mask(chosen_diff_mask, policy_chosen_logps) & _mask(chosen_loss_mask, policy_chosen_logps)
    r_diff = _mask(rejected_diff_mask, policy_rejected_logps) & _mask(rejected_loss_mask, policy_rejected_logps)
    if chosen_diff_mask is None:
        c_diff = torch.zeros_like(c_diff)
    if rejected_diff_mask is None:
        r_diff = torch.zeros_like(r_diff)
    c_sum = _weighted_sum(policy_chosen_logps, c_diff.to(policy_chosen_logps.dtype))
    r_sum = _weighted_sum(policy_rejected_logps, r_diff.to(policy_rejected_logps.dtype))
    c_n, r_n = c_diff.sum(dim=-1), r_diff.sum(dim=-1)
    n = (c_n + r_n).clamp(min=1).to(policy_chosen_logps.dtype)
    losses = (-alpha * c_sum + beta * r_sum) / n
    chosen_rewards = (c_sum / c_n.clamp(min=1)).detach()
    rejected_rewards = (r_sum / r_n.clamp(min=1)).detach()
    return PreferenceLossOutput(losses, chosen_rewards, rejected_rewards)


# --- related objectives (issue 5): BPO, γ-PO, AMaPO, RePO, MADPO -------------------------------------------------
#
# Each takes the same 8 tensors as the BMC objectives and a `delta`: `delta=None` is the plain objective, a float
# δ turns on the BMC token weights λ inside every sum of log-probs / log-ratios (the `*_bmc` loss types). Formulas,
# defaults, sources and the choices made where a paper is open: docs/related-objectives.md.



def bpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    beta: float,
    alpha: float,
    delta: float | None,
) -> PreferenceLossOutput:
    """BPO(-BMC) (Sun et al., 2025, "BPO: Revisiting Preference Modeling in DPO"), logistic form:

        L = −log σ( β · min( Σλ_wΔ_w ,  −α Σλ_lΔ_l ) ),   Δ = log π_θ − log π_ref

    The balanced reward margin min(r_w, −α r_l) replaces DPO's relative margin r_w − r_l, so a pair whose chosen
    reward falls below zero keeps being pushed up (no "degraded chosen response"); the gap adaptor α ∈ (0, 1] scales
    the rejected side (paper: balanced reward margin + gap adaptor; official code `balance_logistic_alpha`, α = 0.3).
    Only the side that attains the minimum gets a gradient. There is no α at which this equals DPO: at α = 1 and
    r_w = −r_l it equals DPO with β/2 (min(a, −b) = (a − b)/2 there), and it is never below that DPO loss.
    """
    _require_reference("BPO", ref_chosen_logps, ref_rejected_logps)
    if not 0 < alpha <= 1:
        raise ValueError(f"BPO's gap adaptor alpha must be in (0, 1], got {alpha}")
    chosen, rejected = _pair_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_diff_mask, rejected_diff_mask, chosen_loss_mask, rejected_loss_mask, delta,
    )
    losses = -F.logsigmoid(beta * torch.minimum(chosen, -alpha * rejected))
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


def gammapo_target_margins(
    reward_gaps: torch.Tensor, *, gamma0: float, tau: float, num_steps: int = 20
) -> torch.Tensor:
    """γ-PO's instance-wise target margins for one batch (Sun et al., 2025, "Robust Preference Optimization via
    Dynamic Target Margins"), a constant w.r.t. the model (computed under no_grad from detached gaps):

        γ_i = γ0 · B · p_i,   p = argmin_{p ∈ simplex}  (1/B) Σ_i −log σ(r_i − γ0 B p_i)  +  τ KL(p ‖ uniform)

    so the margins average γ0, high-confidence pairs (large reward gap r_i) get larger margins and ambiguous ones
    smaller, and τ pulls them back to the constant γ0 (τ → ∞: every γ_i = γ0; B = 1: γ = γ0). Solved as the official
    code's in-batch solver does: `num_steps` evaluations of the gradient γ0 σ(γ_i − r_i) + τ(1 + log(B p_i)) with
    exponentiated-gradient (mirror-descent) updates of step min(0.5/τ, 1) from the uniform p, returning the γ of the
    last evaluation (i.e. after `num_steps − 1` updates). The updates are done in log space, so no ε is needed.
    """
    if tau <= 0:
        raise ValueError(f"γ-PO's KL strength tau must be > 0, got {tau}")
    if gamma0 < 0:
        raise ValueError(f"γ-PO's mean target margin gamma0 must be >= 0, got {gamma0}")
    with torch.no_grad():
        gaps = reward_gaps.detach().reshape(-1).to(torch.promote_types(reward_gaps.dtype, torch.float32))
        n = gaps.numel()
        if n == 0 or gamma0 == 0:
            return torch.full_like(reward_gaps, gamma0).detach()
        lr = min(0.5 / tau, 1.0)
        log_p = torch.full_like(gaps, -math.log(n))
        gamma = gamma0 * n * log_p.exp()
        for _ in range(num_steps):
            gamma = gamma0 * n * log_p.exp()
            grad = tau * (1.0 + math.log(n) + log_p) + gamma0 * torch.sigmoid(gamma - gaps)
            log_p = log_p - lr * grad
            log_p = log_p - torch.logsumexp(log_p, dim=0)
    return gamma.reshape(reward_gaps.shape).to(reward_gaps.dtype)


def gammapo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    beta: float,
    gamma_beta_ratio: float,
    tau: float,
    delta: float | None,
) -> PreferenceLossOutput:
    """γ-PO on DPO's margin (γ-DPO, BMC-weighted with δ):  L_i = −log σ( r_i − γ_i ),

    r_i = β (Σλ_wΔ_w − Σλ_lΔ_l) the DPO reward gap of pair i, γ_i = `gammapo_target_margins(r, γ0, τ)` with
    γ0 = `gamma_beta_ratio` · β (the official code's `gamma_beta_ratio` convention). γ is computed from the detached
    gaps of this batch only (the paper's in-batch version; its FIFO queue of past gaps, Algorithm 2, keeps state
    across steps and is not used) and is a constant for the gradient, as in the official code. γ0 = 0 is exactly
    DPO; τ → ∞ (or a batch of one) is DPO with the constant target margin γ0.
    """
    _require_reference("γ-PO", ref_chosen_logps, ref_rejected_logps)
    chosen, rejected = _pair_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_diff_mask, rejected_diff_mask, chosen_loss_mask, rejected_loss_mask, delta,
    )
    gaps = beta * (chosen - rejected)
    margins = gammapo_target_margins(gaps, gamma0=gamma_beta_ratio * beta, tau=tau)
    losses = -F.logsigmoid(gaps - margins)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


_AMAPO_MAX_EXPONENT = 80.0  # exp(80) ≈ 5.5e34 < float32/bf16 max: keeps the margin finite, far past any real batch


def amapo_margins(margins: torch.Tensor, *, beta: float) -> torch.Tensor:
    """AMaPO's instance-wise adaptive margin (Deng, Feng & Lei, 2025), detached:

        γ_i = β · exp( z_i · μ )  if m_i < μ,   0 otherwise,     z_i = (μ − m_i) / s

    μ and s are the mean and (unbiased) standard deviation of the batch's margins m (Z-normalisation), the exponent
    z·μ the exponential scaling: pairs ranked below the batch mean get a margin that grows with how far below they
    are, pairs above it get none. Read off the official implementation (`amapo_loss` in Shiroha-Offical/AMaPO);
    a batch of one, or one whose margins are all equal, gets no margin. The exponent is capped at 80 only to stay
    finite in float32/bf16.
    """
    with torch.no_grad():
        m = margins.detach().to(torch.promote_types(margins.dtype, torch.float32))
        zeros = torch.zeros_like(margins).detach()
        if m.numel() < 2:
            return zeros
        mu, s = m.mean(), m.std()
        if not torch.isfinite(s) or s <= torch.finfo(m.dtype).eps * m.abs().max().clamp(min=1.0):
            return zeros
        z = (mu - m) / s
        gamma = torch.where(m < mu, beta * torch.exp(torch.clamp(z * mu, max=_AMAPO_MAX_EXPONENT)), 0.0)
    return gamma.to(margins.dtype)


def amapo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    beta: float,
    delta: float | None,
) -> PreferenceLossOutput:
    """AMaPO(-BMC), reference-free:  L_i = −log σ( β m_i − γ_i ),

    m_i = Σλ_w log π_θ(ỹ_w)/|y_w| − Σλ_l log π_θ(y_l)/|y_l| (SimPO's length-normalised margin, the official code's
    `length_norm: true`) and γ_i = `amapo_margins(m, β)` from this batch's detached statistics (a constant for the
    gradient, as in the official code, which all-gathers the margins across GPUs; here the statistics are those of
    the per-device batch). β is AMaPO's only hyperparameter (official recipes 2.0–3.0). With no pair below the batch
    mean it is SimPO with γ = 0. Rewards are β Σλ log π_θ / |y|.
    """
    chosen = _weighted_mean_logps(policy_chosen_logps, chosen_diff_mask, chosen_loss_mask, delta)
    rejected = _weighted_mean_logps(policy_rejected_logps, rejected_diff_mask, rejected_loss_mask, delta)
    margins = chosen - rejected
    losses = -F.logsigmoid(beta * margins - amapo_margins(margins, beta=beta))
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


def repo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    gamma: float,
    delta: float | None,
    beta: float = 1.0,
) -> PreferenceLossOutput:
    """RePO(-BMC) (Wu et al., 2025, "RePO: ReLU-based Preference Optimization"), reference-free:

        L = ReLU( γ − ( Σλ_w log π_θ(ỹ_w)/|y_w| − Σλ_l log π_θ(y_l)/|y_l| ) )

    a max-margin loss on SimPO's length-normalised margin with no β: SimPO's loss divided by β, with γ_SimPO = βγ,
    tends to it as β → ∞ (softplus(β(γ − m))/β → ReLU(γ − m)). Pairs already separated by γ get no gradient; the
    others all get the same weight. `beta` only scales the logged rewards β Σλ log π_θ / |y| (as the official code).
    """
    chosen = _weighted_mean_logps(policy_chosen_logps, chosen_diff_mask, chosen_loss_mask, delta)
    rejected = _weighted_mean_logps(policy_rejected_logps, rejected_diff_mask, rejected_loss_mask, delta)
    losses = F.relu(gamma - (chosen - rejected))
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


def madpo_weights(
    reward_margin: torch.Tensor, *, c_max: float, c_min: float, lam: float, tau: float
) -> torch.Tensor:
    """MADPO's per-pair weight w(h) of the reward-model margin h = r_φ(x, y_w) − r_φ(x, y_l) (Rho, 2025):

        w(h) = σ(c(|h|) h) / σ(h)   if h > −τ,   1 otherwise
        c(a) = c_min + (c_max − c_min) / (1 + (c_max − 1)/(1 − c_min) · exp(λ (a − τ)))

    c decreases from ≈ c_max (hard pairs, |h| ≈ 0) through exactly 1 at |h| = τ to c_min (easy pairs), so the
    effective target margin is amplified for hard pairs and dampened for easy ones. Read off the official
    implementation (`MADPOLoss.coef` / `forward`, sirano1004/Margin-Apative-Direct-Preference-Optimization). h is in
    Bradley–Terry logit units (σ(h) = P(y_w ≻ y_l)). c_max = 1 or c_min = 1 gives w ≡ 1 (plain DPO).
    """
    if not 0 < c_min <= 1 <= c_max:
        raise ValueError(f"MADPO needs 0 < c_min <= 1 <= c_max, got c_min={c_min}, c_max={c_max}")
    if tau <= 0 or lam < 0:
        raise ValueError(f"MADPO needs tau > 0 and lambda >= 0, got tau={tau}, lambda={lam}")
    with torch.no_grad():
        h = reward_margin.detach().to(torch.promote_types(reward_margin.dtype, torch.float32))
        if c_max == 1 or c_min == 1:
            return torch.ones_like(reward_margin).detach()
        k = (c_max - 1) / (1 - c_min)
        coef = c_min + (c_max - c_min) / (1 + k * torch.exp(lam * (h.abs() - tau)))
        w = torch.exp(F.logsigmoid(coef * h) - F.logsigmoid(h))  # ratio of sigmoids, finite for any h
        w = torch.where(h > -tau, w, torch.ones_like(w))
    return w.to(reward_margin.dtype)


def madpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    *,
    reward_margin: torch.Tensor,
    beta: float,
    c_max: float,
    c_min: float,
    lam: float,
    tau: float,
    delta: float | None,
) -> PreferenceLossOutput:
    """MADPO(-BMC) (Rho, 2025, "Margin Adaptive DPO"):  L_i = −w(h_i) · log σ( β (Σλ_wΔ_w − Σλ_lΔ_l) ),

    w = `madpo_weights(h)` from the per-example reward-model margin `reward_margin` ([B], the dataset column of the
    same name: r_φ(x, y_w) − r_φ(x, y_l), e.g. from a trained RM or from UltraFeedback scores), a constant for the
    gradient. All weights 1 is exactly DPO.
    """
    _require_reference("MADPO", ref_chosen_logps, ref_rejected_logps)
    chosen, rejected = _pair_logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_diff_mask, rejected_diff_mask, chosen_loss_mask, rejected_loss_mask, delta,
    )
    reward_margin = torch.as_tensor(reward_margin, device=chosen.device).reshape(-1)
    if reward_margin.shape != chosen.shape:
        raise ValueError(
            f"MADPO needs one `{REWARD_MARGIN}` per pair: got shape {tuple(reward_margin.shape)} for a batch of "
            f"{chosen.shape[0]} pairs"
        )
    weights = madpo_weights(reward_margin.to(chosen.dtype), c_max=c_max, c_min=c_min, lam=lam, tau=tau)
    losses = -weights * F.logsigmoid(beta * (chosen - rejected))
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


# --- the loss_type switch ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTypeSpec:
    """One value of `loss_type`.

    Attributes:
        name: The `loss_type` string.
        fn: The pure loss function (signature of `bmc_dpo_loss`: 8 tensors, then keyword hyperparameters).
        params: Keyword argument of `fn` -> attribute of the config it is read from (`None` value: a constant).
        reference_free: The objective does not use π_ref (no reference forward pass is run).
        token_weighted: The objective uses the BMC weights λ (needs diff masks and `delta`).
        source: Paper reference, for docs and errors.
        batch_inputs: Per-example inputs beyond the log-probs: keyword argument of `fn` -> dataset column (a
            number per row). The trainer keeps and collates the column as a `[B]` float tensor and refuses a dataset
            without it; `compute_preference_loss` passes it on (e.g. MADPO's `{"reward_margin": "reward_margin"}`).
    """

    name: str
    fn: Callable[..., PreferenceLossOutput]
    params: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, Any] = field(default_factory=dict)
    reference_free: bool = False
    token_weighted: bool = False
    uses_diff_mask: bool = False
    source: str = ""
    batch_inputs: Mapping[str, str] = field(default_factory=dict)

    def kwargs_from(self, config: Any) -> dict[str, Any]:
        kwargs = {kw: getattr(config, attr) for kw, attr in self.params.items()}
        kwargs.update(self.constants)
        return kwargs


LOSS_TYPES: dict[str, LossTypeSpec] = {}


def register_loss_type(spec: LossTypeSpec, *, overwrite: bool = False) -> LossTypeSpec:
    """Add a `loss_type` (a pure objective with the signature of `bmc_dpo_loss`; see `_register_pair` for twins)."""
    if spec.name in LOSS_TYPES and not overwrite:
        raise ValueError(f"loss_type {spec.name!r} is already registered")
    LOSS_TYPES[spec.name] = spec
    return spec


def get_loss_type(name: str) -> LossTypeSpec:
    try:
        return LOSS_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown loss_type {name!r}; expected one of {sorted(LOSS_TYPES)}") from None


def _register_pair(name: str, fn: Callable[..., PreferenceLossOutput], params: dict[str, str], *, reference_free: bool,
                   source: str, batch_inputs: Mapping[str, str] | None = None) -> None:
    inputs = dict(batch_inputs or {})
    register_loss_type(LossTypeSpec(name, fn, params, {"delta": None}, reference_free=reference_free, source=source,
                                    batch_inputs=inputs))
    register_loss_type(
        LossTypeSpec(f"{name}_bmc", fn, {**params, "delta": "delta"}, reference_free=reference_free,
                     token_weighted=True, uses_diff_mask=True, source=f"{source} + BMC (Jiang et al., 2025)",
                     batch_inputs=inputs)
    )


_register_pair("dpo", bmc_dpo_loss, {"beta": "beta"}, reference_free=False, source="DPO (Rafailov et al., 2023)")
register_loss_type(
    LossTypeSpec("bmc", bmc_dpo_loss, {"beta": "beta", "delta": "delta"}, token_weighted=True, uses_diff_mask=True,
                 source="DPO-BMC, eq. 4 (Jiang et al., 2025)")
)
_register_pair("ipo", bmc_ipo_loss, {"tau": "ipo_tau", "beta": "beta"}, reference_free=False,
               source="IPO (Azar et al., 2024)")
_register_pair("rdpo", bmc_rdpo_loss, {"beta": "beta", "alpha": "rdpo_alpha"}, reference_free=False,
               source="R-DPO (Park et al., 2024)")
_register_pair("simpo", bmc_simpo_loss, {"beta": "beta", "gamma": "simpo_gamma"}, reference_free=True,
               source="SimPO (Meng et al., 2024)")
_register_pair("orpo", bmc_orpo_loss, {"lam": "orpo_lambda", "beta": "beta"}, reference_free=True,
               source="ORPO (Hong et al., 2024)")
register_loss_type(
    LossTypeSpec("figa", figa_loss, {"alpha": "figa_alpha", "beta": "figa_beta"}, reference_free=True,
                 uses_diff_mask=True, source="FIGA (Guo et al., 2024)")
)

# related objectives (docs/related-objectives.md)
_register_pair("bpo", bpo_loss, {"beta": "beta", "alpha": "bpo_alpha"}, reference_free=False,
               source="BPO (Sun et al., 2025)")
_register_pair("gammapo", gammapo_loss,
               {"beta": "beta", "gamma_beta_ratio": "gammapo_gamma_beta_ratio", "tau": "gammapo_tau"},
               reference_free=False, source="γ-PO on DPO (Sun et al., 2025)")
_register_pair("amapo", amapo_loss, {"beta": "beta"}, reference_free=True, source="AMaPO (Deng et al., 2025)")
_register_pair("repo", repo_loss, {"gamma": "repo_gamma", "beta": "beta"}, reference_free=True,
               source="RePO (Wu et al., 2025)")
_register_pair("madpo", madpo_loss,
               {"beta": "beta", "c_max": "madpo_c_max", "c_min": "madpo_c_min", "lam": "madpo_lambda",
                "tau": "madpo_tau"},
               reference_free=False, source="MADPO (Rho, 2025)", batch_inputs={"reward_margin": REWARD_MARGIN})


def compute_preference_loss(
    loss_type: str,
    config: Any,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    chosen_diff_mask: torch.Tensor | None,
    rejected_diff_mask: torch.Tensor | None,
    chosen_loss_mask: torch.Tensor | None,
    rejected_loss_mask: torch.Tensor | None,
    batch_inputs: Mapping[str, torch.Tensor] | None = None,
) -> PreferenceLossOutput:
    """Dispatch on `loss_type`, reading the hyperparameters from `config` (a `BMCConfig` or any object with them).

    `batch_inputs` maps dataset column -> `[B]` tensor for the objectives that declare `LossTypeSpec.batch_inputs`
    (MADPO's `reward_margin`); other columns are ignored.
    """
    spec = get_loss_type(loss_type)
    extras = {}
    for kwarg, column in spec.batch_inputs.items():
        if batch_inputs is None or column not in batch_inputs:
            raise ValueError(
                f"loss_type={loss_type!r} needs the per-example input `{column}` (a number per pair, e.g. a dataset "
                f"column of that name), but the batch has none; got {sorted(batch_inputs or {})}"
            )
        extras[kwarg] = batch_inputs[column]
    return spec.fn(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_diff_mask,
        rejected_diff_mask,
        chosen_loss_mask,
        rejected_loss_mask,
        **extras,
        **spec.kwargs_from(config),
    )
