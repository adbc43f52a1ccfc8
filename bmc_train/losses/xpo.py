"""The BMC paper's objectives (DPO-BMC, eq. 4) and its xPO family (IPO, R-DPO, SimPO, ORPO), each with the token
weights λ of `PairLogps` (`delta=None`: the plain objective), plus FIGA, the token-level SFT baseline (Table 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import (
    PairLogps,
    PreferenceLossOutput,
    mask_or_all,
    objective,
    smoothed_logistic,
    token_count,
    weighted_sum,
)


@objective
def bmc_dpo_loss(batch: PairLogps, *, beta: float, delta: float | None, label_smoothing: float = 0.0
                 ) -> PreferenceLossOutput:
    """DPO-BMC (eq. 4): `−log σ(β Σλ_w (log π_θ − log π_ref)(ỹ_w) − β Σλ_l (log π_θ − log π_ref)(y_l))`.

    With `delta=None` (or all-false diff masks) this is exactly DPO (Rafailov et al., 2023). `label_smoothing` ε > 0
    is the official code's conservative form (`smoothed_logistic`).
    """
    batch.require_reference("DPO")
    chosen, rejected = batch.logratio_sums(delta)
    losses = smoothed_logistic(beta * (chosen - rejected), label_smoothing)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


@objective
def bmc_ipo_loss(batch: PairLogps, *, tau: float, delta: float | None, beta: float = 1.0) -> PreferenceLossOutput:
    """IPO(-BMC) (Azar et al., 2024): `(Σλ_wΔ_w/|y_w| − Σλ_lΔ_l/|y_l| − 1/(2τ))²`, Δ = log π_θ − log π_ref.

    The weighted sums are divided by the *unweighted* token counts, as in the official BMC code and in TRL's
    length-normalised `ipo` loss (with `delta=None` this equals TRL's `loss_type="ipo"` with `beta=τ`). `beta`
    only scales the logged rewards.
    """
    batch.require_reference("IPO")
    chosen, rejected = batch.logratio_sums(delta)
    chosen_avg = chosen / token_count(batch.chosen_loss_mask, chosen)
    rejected_avg = rejected / token_count(batch.rejected_loss_mask, rejected)
    losses = (chosen_avg - rejected_avg - 1.0 / (2.0 * tau)) ** 2
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


@objective
def bmc_rdpo_loss(batch: PairLogps, *, beta: float, alpha: float | None, delta: float | None,
                  label_smoothing: float = 0.0) -> PreferenceLossOutput:
    """R-DPO(-BMC) (Park et al., 2024): `−log σ(β Σλ_wΔ_w − β Σλ_lΔ_l − (α|y_w| − α|y_l|))`.

    |y| is the unweighted completion length (the regulariser is about length, not about emphasis). `alpha=None` is
    α = β, the official BMC code's `β·(logits − (|y_w| − |y_l|))`. `label_smoothing` as in `bmc_dpo_loss`.
    """
    batch.require_reference("R-DPO")
    alpha = beta if alpha is None else alpha
    chosen, rejected = batch.logratio_sums(delta)
    length_term = alpha * (token_count(batch.chosen_loss_mask, chosen) - token_count(batch.rejected_loss_mask, rejected))
    losses = smoothed_logistic(beta * (chosen - rejected) - length_term, label_smoothing)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


@objective
def bmc_simpo_loss(batch: PairLogps, *, beta: float, gamma: float, delta: float | None, label_smoothing: float = 0.0
                   ) -> PreferenceLossOutput:
    """SimPO(-BMC) (Meng et al., 2024), reference-free: `−log σ(β/|y_w| Σλ_w log π_θ(ỹ_w) − β/|y_l| Σλ_l log π_θ(y_l) − γ)`.

    The reference log-probs are ignored (pass `None`). The rewards are the length-normalised `β/|y| Σλ log π_θ`.
    `label_smoothing` as the official SimPO code (princeton-nlp/SimPO, `simpo_loss`, `sigmoid`).
    """
    chosen = beta * batch.mean_logps("chosen", delta)
    rejected = beta * batch.mean_logps("rejected", delta)
    losses = smoothed_logistic(chosen - rejected - gamma, label_smoothing)
    return PreferenceLossOutput(losses, chosen.detach(), rejected.detach())


@objective
def bmc_orpo_loss(batch: PairLogps, *, lam: float | None, delta: float | None, beta: float = 1.0
                  ) -> PreferenceLossOutput:
    """ORPO(-BMC) (Hong et al., 2024), reference-free, as the official BMC code computes it:

        L_i = NLL + λ · (−log σ(log odds(y_w,i) − log odds(y_l,i)))

    `log p(y) = Σλ_t log π_θ(y_t) / |y|` (weighted sum over the unweighted length; with `delta=None` ORPO's mean token
    log-prob), `log odds(y) = log p − log(1 − p)`. NLL is the plain (unweighted) token mean of −log π_θ over *all*
    chosen completion tokens of the micro-batch (the official `nn.CrossEntropyLoss()` over the chosen rows), the same
    number for every pair, so the batch mean is NLL + λ·mean(odds term). `lam=None` is λ = β (the official
    `policy_nll_loss + self.beta * odds_ratio_loss`). Rewards are `β log p(y)`.
    """
    lam = beta if lam is None else lam
    chosen_avg = batch.mean_logps("chosen", delta)
    rejected_avg = batch.mean_logps("rejected", delta)

    def log_odds(avg_logp: torch.Tensor) -> torch.Tensor:
        # log(p / (1 - p)) with p = exp(avg_logp) < 1; the clamp keeps log1p(-p) finite when p rounds to 1
        avg_logp = avg_logp.clamp(max=-1e-6)
        return avg_logp - torch.log1p(-torch.exp(avg_logp))

    ratio = F.logsigmoid(log_odds(chosen_avg) - log_odds(rejected_avg))
    pc = batch.policy_chosen
    mask = mask_or_all(batch.chosen_loss_mask, pc)
    nll = -weighted_sum(pc, mask.to(pc.dtype)).sum() / mask.sum().clamp(min=1).to(pc.dtype)
    losses = nll - lam * ratio
    return PreferenceLossOutput(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach())


FIGA_NORMALIZATIONS = ("sum", "diff_tokens")


@objective
def figa_loss(batch: PairLogps, *, alpha: float, beta: float, normalization: str = "sum", reward_scale: float = 1.0
              ) -> PreferenceLossOutput:
    """FIGA (Guo et al., 2024), the token-level SFT baseline of the BMC paper (Table 7):

        L = −α Σ_{t ∈ diff(ỹ_w|y_l)} log π_θ(ỹ_w,t)  +  β Σ_{t ∈ diff(y_l|ỹ_w)} log π_θ(y_l,t)      ("sum")

    i.e. a weighted cross-entropy that rewards the tokens the reviser added or substituted (weight α) and penalises
    the tokens it deleted or substituted (weight −β); tokens both responses share get weight 0 (FIGA's γ = 0).
    `normalization="sum"` is the official BMC baseline (`−Σ log π_w + 0.5 Σ log π_l` over diff tokens);
    `"diff_tokens"` divides by N, the number of diff tokens of the pair, as FIGA's own code normalises by the count
    of non-zero weights. Reference free; no λ (FIGA's weights are constants). FIGA's code optionally drops bad tokens
    whose NLL lies outside [0.6, 1.0]; that heuristic is not in the BMC paper's formula and is not applied here.
    Rewards are `reward_scale` × the mean log-probs of the diff tokens of each side.
    """
    if normalization not in FIGA_NORMALIZATIONS:
        raise ValueError(f"figa normalization must be one of {FIGA_NORMALIZATIONS}, got {normalization!r}")
    pc, pr = batch.policy_chosen, batch.policy_rejected
    c_diff = mask_or_all(batch.chosen_diff_mask, pc) & mask_or_all(batch.chosen_loss_mask, pc)
    r_diff = mask_or_all(batch.rejected_diff_mask, pr) & mask_or_all(batch.rejected_loss_mask, pr)
    if batch.chosen_diff_mask is None:
        c_diff = torch.zeros_like(c_diff)
    if batch.rejected_diff_mask is None:
        r_diff = torch.zeros_like(r_diff)
    c_sum = weighted_sum(pc, c_diff.to(pc.dtype))
    r_sum = weighted_sum(pr, r_diff.to(pr.dtype))
    c_n, r_n = c_diff.sum(dim=-1), r_diff.sum(dim=-1)
    losses = -alpha * c_sum + beta * r_sum
    if normalization == "diff_tokens":
        losses = losses / (c_n + r_n).clamp(min=1).to(pc.dtype)
    chosen_rewards = reward_scale * (c_sum / c_n.clamp(min=1)).detach()
    rejected_rewards = reward_scale * (r_sum / r_n.clamp(min=1)).detach()
    return PreferenceLossOutput(losses, chosen_rewards, rejected_rewards)
