"""`PairLogps`, the typed batch every objective reads, and the BMC token weights λ computed from it.

The record holds what the trainer extracts once per micro-batch: per-token log-probs `[B, T]` of the policy (and,
for reference-based objectives, of the reference) for the chosen and rejected responses, aligned with their
labels, and boolean masks of the same shape:

* `*_loss_mask`: the completion tokens (TRL's shifted `completion_mask`); `None` means every position counts;
* `*_diff_mask`: the tokens that differ between the pseudo-winning response ỹ_w and the losing response y_l
  (`diff(ỹ_w | y_l)` and `diff(y_l | ỹ_w)` in the paper); `None` means no diff token.

Positions outside the completion may hold anything (even inf) and are ignored. The token weight of the paper
(eq. 7 and 10) is

    λ_t = 1 + min(sg(1 / π_θ(y_t | y_<t, x)), δ)   if y_t is a diff token,   1 otherwise,

computed from the *policy* log-probs under `torch.no_grad` (sg = stop-gradient), so gradients flow only through the
log-ratios, never through λ. `delta=None` turns the weighting off (λ = 1 everywhere): the plain xPO objective.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

Side = Literal["chosen", "rejected"]
# Whose probabilities give the λ of the reference term: the policy's (eq. 4, one λ per token) or π_ref's own (the
# official BMC code weights its reference pass with λ from the reference model).
ReferenceWeights = Literal["policy", "reference"]
REFERENCE_WEIGHTS: tuple[str, ...] = get_args(ReferenceWeights)


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


# --- helpers on raw tensors -------------------------------------------------------------------------------------


def mask_or_all(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    return mask.bool()


def weighted_sum(logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # `weights` is already 0 outside the completion; where() rather than `*` so that garbage (even inf) outside the
    # completion cannot leak in through 0 * inf.
    return torch.where(weights != 0, logps * weights, torch.zeros_like(logps)).sum(dim=-1)


def smoothed_logistic(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−(1 − ε) log σ(z) − ε log σ(−z): the logistic loss with the conservative-DPO label smoothing ε of the official
    BMC / SimPO / AMaPO code (ε = 0 is the plain −log σ(z))."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    return losses


def token_count(loss_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """|y|: the unweighted number of completion tokens (at least 1)."""
    return mask_or_all(loss_mask, like).sum(dim=-1).clamp(min=1).to(like.dtype)


# --- the batch record -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairLogps:
    """One micro-batch of preference pairs as the objectives see it (all tensors `[B, T]`; see the module doc)."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_diff_mask: torch.Tensor | None = None
    rejected_diff_mask: torch.Tensor | None = None
    chosen_loss_mask: torch.Tensor | None = None
    rejected_loss_mask: torch.Tensor | None = None
    reference_weights: ReferenceWeights = "policy"

    def __post_init__(self):
        if self.reference_weights not in REFERENCE_WEIGHTS:
            raise ValueError(f"reference_weights must be one of {REFERENCE_WEIGHTS}, got {self.reference_weights!r}")

    @classmethod
    def of(cls, *tensors: torch.Tensor | None) -> PairLogps:
        """From the eight tensors in the historical positional order (policy c/r, reference c/r, diff c/r, loss c/r)."""
        if len(tensors) != 8:
            raise TypeError(f"PairLogps.of takes 8 tensors (policy, reference, diff and loss masks, chosen then "
                            f"rejected), got {len(tensors)}")
        return cls(*tensors)

    def astuple(self) -> tuple[torch.Tensor | None, ...]:
        return (self.policy_chosen, self.policy_rejected, self.ref_chosen, self.ref_rejected, self.chosen_diff_mask,
                self.rejected_diff_mask, self.chosen_loss_mask, self.rejected_loss_mask)

    def _side(self, side: Side) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if side == "chosen":
            return self.policy_chosen, self.ref_chosen, self.chosen_diff_mask, self.chosen_loss_mask
        return self.policy_rejected, self.ref_rejected, self.rejected_diff_mask, self.rejected_loss_mask

    def require_reference(self, name: str) -> None:
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError(f"{name} needs the reference model's per-token log-probs (ref_chosen_logps/ref_rejected_logps)")

    def weights(self, side: Side, delta: float | None) -> torch.Tensor:
        """λ of one side (0 outside its completion)."""
        policy, _, diff, loss = self._side(side)
        return bmc_token_weights(policy, diff, mask_or_all(loss, policy), delta=delta)

    def tokens(self, side: Side) -> torch.Tensor:
        """|y| of one side: the unweighted number of completion tokens (at least 1)."""
        policy, _, _, loss = self._side(side)
        return token_count(loss, policy)

    def logratio_sum(self, side: Side, delta: float | None) -> torch.Tensor:
        """Σ_t λ_t (log π_θ − log π_ref) of one side, λ from the policy (eq. 4); with `reference_weights="reference"`
        Σ_t λ_t log π_θ − Σ_t λ^ref_t log π_ref, λ^ref from π_ref's own probabilities (the official BMC code)."""
        policy, ref, diff, loss = self._side(side)
        weights = self.weights(side, delta)
        if self.reference_weights == "policy" or delta is None:
            return weighted_sum(policy - ref, weights)
        ref_weights = bmc_token_weights(ref, diff, mask_or_all(loss, ref), delta=delta)
        return weighted_sum(policy, weights) - weighted_sum(ref, ref_weights)

    def logratio_sums(self, delta: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σλ_wΔ_w, Σλ_lΔ_l): the weighted log-ratio sums of both sides, the reward core of every reference-based
        objective."""
        return self.logratio_sum("chosen", delta), self.logratio_sum("rejected", delta)

    def mean_logps(self, side: Side, delta: float | None) -> torch.Tensor:
        """Σ_t λ_t log π_θ(y_t) / |y|: SimPO's length-normalised reference-free reward, without β (|y| unweighted)."""
        policy, _, _, _ = self._side(side)
        return weighted_sum(policy, self.weights(side, delta)) / self.tokens(side)


def objective(fn: Callable[..., PreferenceLossOutput]) -> Callable[..., PreferenceLossOutput]:
    """Mark `fn(batch: PairLogps, **hyperparameters)` as an objective; it may also be called with the eight tensors
    in the historical positional order (`fn(pc, pr, rc, rr, dc, dr, mc, mr, **hyperparameters)`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if len(args) == 1 and isinstance(args[0], PairLogps):
            return fn(args[0], **kwargs)
        return fn(PairLogps.of(*args), **kwargs)

    wrapper.takes_pair_logps = True  # type: ignore[attr-defined]
    return wrapper
