"""γ-PO (Sun et al., 2025, "Robust Preference Optimization via Dynamic Target Margins"): instance-wise target
margins γ_i solved from the reward gaps, on DPO's reference-based gap (`gammapo`, the project's variant) and on
SimPO's length-normalised gap (`gammapo_simpo`, the authors' `gm-simpo`), see docs/related-objectives.md.

The authors solve over a queue of recent gaps kept across steps (`get_gamma_dq`); the queue is trainer state
(`bmc_train.margin_queue.GapQueue`), and the objective receives the sampled past gaps as an input
(`queued_gaps`), so it stays a pure function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .batch import PairLogps, PreferenceLossOutput, objective

OFFICIAL_EPS = 1e-10  # `self.eps` of the official solver: log(B (p + ε)) in the KL gradient


def gammapo_target_margins(
    reward_gaps: torch.Tensor, *, gamma0: float, tau: float, num_steps: int = 20, eps: float = OFFICIAL_EPS
) -> torch.Tensor:
    """γ-PO's instance-wise target margins for one batch (Sun et al., 2025, "Robust Preference Optimization via
    Dynamic Target Margins"), a constant w.r.t. the model (computed under no_grad from detached gaps):

        γ_i = γ0 · B · p_i,   p = argmin_{p ∈ simplex}  (1/B) Σ_i −log σ(r_i − γ0 B p_i)  +  τ KL(p ‖ uniform)

    so the margins average γ0, high-confidence pairs (large reward gap r_i) get larger margins and ambiguous ones
    smaller, and τ pulls them back to the constant γ0 (τ → ∞: every γ_i = γ0; B = 1: γ = γ0). Solved as the official
    code's in-batch solver does: `num_steps` evaluations of the gradient γ0 σ(γ_i − r_i) + τ(1 + log(B p_i)) with
    exponentiated-gradient (mirror-descent) updates of step min(0.5/τ, 1) from the uniform p, returning the γ of the
    last evaluation (i.e. after `num_steps − 1` updates). The KL gradient is τ(1 + log(B (p_i + ε))) with the official
    ε = 1e-10 (`eps=0` drops it); the updates are done in log space (log(p + ε) = logaddexp(log p, log ε)), so they
    cannot overflow.
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
            log_p_eps = torch.logaddexp(log_p, torch.full_like(log_p, math.log(eps))) if eps > 0 else log_p
            grad = tau * (1.0 + math.log(n) + log_p_eps) + gamma0 * torch.sigmoid(gamma - gaps)
            log_p = log_p - lr * grad
            log_p = log_p - torch.logsumexp(log_p, dim=0)
    return gamma.reshape(reward_gaps.shape).to(reward_gaps.dtype)


def gammapo_queue_margins(reward_gaps: torch.Tensor, queued_gaps: torch.Tensor | None, *, gamma0: float, tau: float,
                          num_steps: int = 20) -> torch.Tensor:
    """The γ of this batch's pairs when solved together with `queued_gaps` (past gaps sampled from the queue), as
    the official `get_gamma_dq` does: the solver runs over [queued; current] and the last B margins are returned.
    No or empty `queued_gaps` is the in-batch solve."""
    if queued_gaps is None or queued_gaps.numel() == 0:
        return gammapo_target_margins(reward_gaps, gamma0=gamma0, tau=tau, num_steps=num_steps)
    with torch.no_grad():
        current = reward_gaps.detach().reshape(-1)
        both = torch.cat([queued_gaps.detach().reshape(-1).to(device=current.device, dtype=current.dtype), current])
        gamma = gammapo_target_margins(both, gamma0=gamma0, tau=tau, num_steps=num_steps)[-current.numel():]
    return gamma.reshape(reward_gaps.shape)


@objective
def gammapo_loss(batch: PairLogps, *, beta: float, gamma_beta_ratio: float, tau: float, delta: float | None
                 ) -> PreferenceLossOutput:
    """γ-PO on DPO's margin (γ-DPO, BMC-weighted with δ), the project's variant:  L_i = −log σ( r_i − γ_i ),

    r_i = β (Σλ_wΔ_w − Σλ_lΔ_l) the DPO reward gap of pair i, γ_i = `gammapo_target_margins(r, γ0, τ)` with
    γ0 = `gamma_beta_ratio` · β (the official code's `gamma_beta_ratio` convention). γ is computed from the detached
    gaps of this batch only (the official in-batch solver `get_gamma_b`, without its all-gather) and is a constant
    for the gradient, as in the official code. γ0 = 0 is exactly DPO; τ → ∞ (or a batch of one) is DPO with the
    constant target margin γ0. The authors' own runs use `gammapo_simpo_loss` with the queue.
    """
    batch.require_reference("γ-PO")
    chosen, rejected = batch.logratio_sums(delta)
    gaps = beta * (chosen - rejected)
    margins = gammapo_target_margins(gaps, gamma0=gamma_beta_ratio * beta, tau=tau)
    losses = -F.logsigmoid(gaps - margins)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


@objective
def gammapo_simpo_loss(batch: PairLogps, *, beta: float, gamma_beta_ratio: float, tau: float, delta: float | None,
                       queued_gaps: torch.Tensor | None = None) -> PreferenceLossOutput:
    """γ-SimPO(-BMC), as the authors run it (official loss type `gm-simpo`), reference-free:

        L_i = −log σ( r_i − γ_i ),   r_i = β ( Σλ_w log π_θ(ỹ_w)/|y_w| − Σλ_l log π_θ(y_l)/|y_l| )

    SimPO's length-normalised reward gap; γ_i = `gammapo_queue_margins(r, queued_gaps, γ0 = ratio·β, τ)`, solved over
    up to 256 gaps: the current batch's plus past ones sampled from a queue of the last 2048 (the trainer's
    `GapQueue`; `queued_gaps=None` solves in-batch). Official code: `sunjie279/gammaPO`, `scripts/simpo_trainer.py`,
    `simpo_loss` (`gm-simpo`: `logits = pi_logratios − get_gamma_dq(reward_gap)/β; −logsigmoid(β·logits)`) and
    `get_gamma_dq`. γ is detached. The rewards (and so the gaps the trainer queues) are β Σλ log π_θ / |y|.
    """
    chosen = batch.mean_logps("chosen", delta)
    rejected = batch.mean_logps("rejected", delta)
    gaps = beta * (chosen - rejected)
    margins = gammapo_queue_margins(gaps, queued_gaps, gamma0=gamma_beta_ratio * beta, tau=tau)
    losses = -F.logsigmoid(gaps - margins)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())
