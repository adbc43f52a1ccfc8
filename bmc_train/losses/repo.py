"""RePO (Wu et al., 2025, "RePO: ReLU-based Preference Optimization"): a ReLU max-margin loss on SimPO's
reference-free margin (docs/related-objectives.md)."""

from __future__ import annotations

import torch.nn.functional as F

from .batch import PairLogps, PreferenceLossOutput, objective


@objective
def repo_loss(batch: PairLogps, *, gamma: float, delta: float | None, beta: float = 1.0) -> PreferenceLossOutput:
    """RePO(-BMC), reference-free:

        L = ReLU( γ − ( Σλ_w log π_θ(ỹ_w)/|y_w| − Σλ_l log π_θ(y_l)/|y_l| ) )

    a max-margin loss on SimPO's length-normalised margin with no β: SimPO's loss divided by β, with γ_SimPO = βγ,
    tends to it as β → ∞ (softplus(β(γ − m))/β → ReLU(γ − m)). Pairs already separated by γ get no gradient; the
    others all get the same weight. `beta` only scales the logged rewards β Σλ log π_θ / |y| (as the official code).
    """
    chosen = batch.mean_logps("chosen", delta)
    rejected = batch.mean_logps("rejected", delta)
    losses = F.relu(gamma - (chosen - rejected))
    return PreferenceLossOutput(losses, beta * chosen.detach(), beta * rejected.detach())
