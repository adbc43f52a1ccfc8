"""BPO (Sun et al., 2025, "BPO: Revisiting Preference Modeling in Direct Preference Optimization"): the balanced
reward margin min(r_w, −α r_l) with gap adaptor α, in the logistic form and in the hinge form the authors train with
(docs/related-objectives.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import PairLogps, PreferenceLossOutput, objective


def bpo_balanced_margin(batch: PairLogps, *, alpha: float, delta: float | None, name: str = "BPO"
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(min(Σλ_wΔ_w, −α Σλ_lΔ_l), Σλ_wΔ_w, Σλ_lΔ_l), Δ = log π_θ − log π_ref: the balanced margin before β.

    Official code (`sunlin-ai/BPO`, `train_dpo.py`, `CustomDPOTrainer.dpo_loss`):
    `torch.min(chosen_logps - ref_chosen_logps, balance_factor * (ref_rejected_logps - rejected_logps))`.
    """
    batch.require_reference(name)
    if not 0 < alpha <= 1:
        raise ValueError(f"BPO's gap adaptor alpha must be in (0, 1], got {alpha}")
    chosen, rejected = batch.logratio_sums(delta)
    return torch.minimum(chosen, -alpha * rejected), chosen, rejected


@objective
def bpo_loss(batch: PairLogps, *, beta: float, alpha: float, delta: float | None) -> PreferenceLossOutput:
    """BPO(-BMC), logistic form (official loss type `balance_logistic_alpha`):

        L = −log σ( β · min( Σλ_wΔ_w ,  −α Σλ_lΔ_l ) ),   Δ = log π_θ − log π_ref

    The balanced reward margin min(r_w, −α r_l) replaces DPO's relative margin r_w − r_l, so a pair whose chosen
    reward falls below zero keeps being pushed up (no "degraded chosen response"); the gap adaptor α ∈ (0, 1] scales
    the rejected side (official α = 0.3). Only the side that attains the minimum gets a gradient. There is no α at
    which this equals DPO: at α = 1 and r_w = −r_l it equals DPO with β/2 (min(a, −b) = (a − b)/2 there), and it is
    never below that DPO loss. The authors' headline results use the hinge form, `bpo_hinge_loss`.
    """
    balanced, chosen, rejected = bpo_balanced_margin(batch, alpha=alpha, delta=delta)
    losses = -F.logsigmoid(beta * balanced)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


@objective
def bpo_hinge_loss(batch: PairLogps, *, beta: float, alpha: float, delta: float | None) -> PreferenceLossOutput:
    """BPO(-BMC), hinge form, as the authors train it (official `train_config.yaml`: `loss_type: balance_hinge_alpha`):

        L = ReLU( 1 − β · min( Σλ_wΔ_w ,  −α Σλ_lΔ_l ) )

    Official code: `sunlin-ai/BPO`, `train_dpo.py`, `CustomDPOTrainer.dpo_loss`, branch `balance_hinge_alpha`
    (`logits = torch.min(chosen_logratio, balance_factor * (−rejected_logratio)); losses = torch.relu(1 − β·logits)`,
    `balance_factor = 0.3`). SLiC's hinge on the balanced margin: pairs whose balanced margin already exceeds 1/β
    get no gradient, the others a constant one on the side attaining the minimum. Rewards as DPO's: β Σλ Δ.
    """
    balanced, chosen, rejected = bpo_balanced_margin(batch, alpha=alpha, delta=delta)
    losses = torch.relu(1 - beta * balanced)
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())
