"""MADPO (Rho, 2025, "Margin Adaptive DPO"): DPO with a per-pair weight from a reward model's margin, read from the
dataset column `reward_margin` (docs/related-objectives.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import PairLogps, PreferenceLossOutput, objective

REWARD_MARGIN = "reward_margin"  # dataset column MADPO reads: r_φ(x, y_w) − r_φ(x, y_l) from a reward model


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


@objective
def madpo_loss(batch: PairLogps, *, reward_margin: torch.Tensor, beta: float, c_max: float, c_min: float, lam: float,
               tau: float, delta: float | None) -> PreferenceLossOutput:
    """MADPO(-BMC):  L_i = −w(h_i) · log σ( β (Σλ_wΔ_w − Σλ_lΔ_l) ),

    w = `madpo_weights(h)` from the per-example reward-model margin `reward_margin` ([B], the dataset column of the
    same name: r_φ(x, y_w) − r_φ(x, y_l), e.g. from a trained RM or from UltraFeedback scores), a constant for the
    gradient. All weights 1 is exactly DPO.
    """
    batch.require_reference("MADPO")
    chosen, rejected = batch.logratio_sums(delta)
    reward_margin = torch.as_tensor(reward_margin, device=chosen.device).reshape(-1)
    if reward_margin.shape != chosen.shape:
        raise ValueError(
            f"MADPO needs one `{REWARD_MARGIN}` per pair: got shape {tuple(reward_margin.shape)} for a batch of "
            f"{chosen.shape[0]} pairs"
        )
    weights = madpo_weights(reward_margin.to(chosen.dtype), c_max=c_max, c_min=c_min, lam=lam, tau=tau)
    losses = -weights * F.logsigmoid(beta * (chosen - rejected))
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())
