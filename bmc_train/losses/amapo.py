"""AMaPO (Deng, Feng & Lei, 2025, "AMaPO: Adaptive Margin-attached Preference Optimization"): an instance-wise
adaptive margin on SimPO's reference-free margin (docs/related-objectives.md)."""

from __future__ import annotations

import torch

from .batch import PairLogps, PreferenceLossOutput, objective, smoothed_logistic

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


@objective
def amapo_loss(batch: PairLogps, *, beta: float, delta: float | None, label_smoothing: float = 0.0
               ) -> PreferenceLossOutput:
    """AMaPO(-BMC), reference-free:  L_i = −log σ( β m_i − γ_i ),

    m_i = Σλ_w log π_θ(ỹ_w)/|y_w| − Σλ_l log π_θ(y_l)/|y_l| (SimPO's length-normalised margin, the official code's
    `length_norm: true`) and γ_i = `amapo_margins(m, β)` from this batch's detached statistics (a constant for the
    gradient, as in the official code, which all-gathers the margins across GPUs; here the statistics are those of
    the per-device batch). β is AMaPO's only hyperparameter (official recipes 2.0–3.0). With no pair below the batch
    mean it is SimPO with γ = 0. Rewards are β Σλ log π_θ / |y|. `label_smoothing` as the official `amapo_loss`.
    """
    chosen = batch.mean_logps("chosen", delta)
    rejected = batch.mean_logps("rejected", delta)
    margins = chosen - rejected
    losses = smoothed_logistic(beta * margins - amapo_margins(margins, beta=beta), label_smoothing)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())
