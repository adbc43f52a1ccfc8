"""The `loss_type` switch: one `LossTypeSpec` per name, the registry, and `compute_preference_loss`, which reads an
objective's hyperparameters from a config and hands it the batch (`PairLogps`) and any per-example or trainer-state
inputs it declares."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .amapo import amapo_loss
from .batch import PairLogps, PreferenceLossOutput
from .bpo import bpo_hinge_loss, bpo_loss
from .gammapo import gammapo_loss, gammapo_simpo_loss
from .madpo import REWARD_MARGIN, madpo_loss
from .repo import repo_loss
from .xpo import (
    bmc_dpo_loss,
    bmc_ipo_loss,
    bmc_orpo_loss,
    bmc_rdpo_loss,
    bmc_simpo_loss,
    figa_loss,
)


@dataclass(frozen=True)
class LossTypeSpec:
    """One value of `loss_type`.

    Attributes:
        name: The `loss_type` string.
        fn: The pure loss function: `fn(batch: PairLogps, **hyperparameters)` (made with `@objective`), or a
            function of the eight tensors in the historical order (`fn(pc, pr, rc, rr, dc, dr, mc, mr, **kw)`).
        params: Keyword argument of `fn` -> attribute of the config it is read from.
        constants: Keyword argument of `fn` -> a fixed value.
        reference_free: The objective does not use π_ref (no reference forward pass is run).
        token_weighted: The objective uses the BMC weights λ (needs diff masks and `delta`).
        uses_diff_mask: The objective reads the diff masks (the trainer computes and collates them).
        source: Paper reference, for docs and errors.
        batch_inputs: Per-example inputs beyond the log-probs: keyword argument of `fn` -> dataset column (a
            number per row). The trainer keeps and collates the column as a `[B]` float tensor and refuses a dataset
            without it; `compute_preference_loss` passes it on (e.g. MADPO's `{"reward_margin": "reward_margin"}`).
        margin_queue: `fn` takes `queued_gaps`, reward gaps of past steps sampled from the trainer's queue
            (`bmc_train.margin_queue.GapQueue`); the trainer queues each training batch's gaps
            (`chosen_rewards − rejected_rewards`) after the loss (γ-SimPO's `get_gamma_dq`).
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
    margin_queue: bool = False

    def kwargs_from(self, config: Any) -> dict[str, Any]:
        """The objective's keyword arguments from `config`; an attribute the config lacks is left to the objective's
        own default when it has one (e.g. `label_smoothing` for a config written before it existed)."""
        optional = {name for name, p in inspect.signature(self.fn).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        kwargs = {kw: getattr(config, attr) for kw, attr in self.params.items()
                  if hasattr(config, attr) or kw not in optional}
        kwargs.update(self.constants)
        return kwargs

    def call(self, batch: PairLogps, **kwargs: Any) -> PreferenceLossOutput:
        if getattr(self.fn, "takes_pair_logps", False):
            return self.fn(batch, **kwargs)
        return self.fn(*batch.astuple(), **kwargs)


LOSS_TYPES: dict[str, LossTypeSpec] = {}


def register_loss_type(spec: LossTypeSpec, *, overwrite: bool = False) -> LossTypeSpec:
    """Add a `loss_type` (a pure objective; see `_register_pair` for plain + `_bmc` twins)."""
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
                   source: str, batch_inputs: Mapping[str, str] | None = None, margin_queue: bool = False) -> None:
    inputs = dict(batch_inputs or {})
    register_loss_type(LossTypeSpec(name, fn, params, {"delta": None}, reference_free=reference_free, source=source,
                                    batch_inputs=inputs, margin_queue=margin_queue))
    register_loss_type(
        LossTypeSpec(f"{name}_bmc", fn, {**params, "delta": "delta"}, reference_free=reference_free,
                     token_weighted=True, uses_diff_mask=True, source=f"{source} + BMC (Jiang et al., 2025)",
                     batch_inputs=inputs, margin_queue=margin_queue)
    )


_SMOOTHING = {"label_smoothing": "label_smoothing"}  # the objectives whose authors define label smoothing
_register_pair("dpo", bmc_dpo_loss, {"beta": "beta", **_SMOOTHING}, reference_free=False,
               source="DPO (Rafailov et al., 2023)")
register_loss_type(
    LossTypeSpec("bmc", bmc_dpo_loss, {"beta": "beta", "delta": "delta", **_SMOOTHING}, token_weighted=True,
                 uses_diff_mask=True, source="DPO-BMC, eq. 4 (Jiang et al., 2025)")
)
_register_pair("ipo", bmc_ipo_loss, {"tau": "ipo_tau", "beta": "beta"}, reference_free=False,
               source="IPO (Azar et al., 2024)")
_register_pair("rdpo", bmc_rdpo_loss, {"beta": "beta", "alpha": "rdpo_alpha", **_SMOOTHING}, reference_free=False,
               source="R-DPO (Park et al., 2024)")
_register_pair("simpo", bmc_simpo_loss, {"beta": "beta", "gamma": "simpo_gamma", **_SMOOTHING}, reference_free=True,
               source="SimPO (Meng et al., 2024)")
_register_pair("orpo", bmc_orpo_loss, {"lam": "orpo_lambda", "beta": "beta"}, reference_free=True,
               source="ORPO (Hong et al., 2024)")
register_loss_type(
    LossTypeSpec("figa", figa_loss, {"alpha": "figa_alpha", "beta": "figa_beta", "normalization": "figa_normalization",
                                     "reward_scale": "beta"}, reference_free=True,
                 uses_diff_mask=True, source="FIGA (Guo et al., 2024)")
)

# related objectives (docs/related-objectives.md)
_register_pair("bpo", bpo_loss, {"beta": "beta", "alpha": "bpo_alpha"}, reference_free=False,
               source="BPO, logistic form (Sun et al., 2025)")
_register_pair("bpo_hinge", bpo_hinge_loss, {"beta": "beta", "alpha": "bpo_alpha"}, reference_free=False,
               source="BPO, hinge form as in the official recipe (Sun et al., 2025)")
_register_pair("gammapo", gammapo_loss,
               {"beta": "beta", "gamma_beta_ratio": "gammapo_gamma_beta_ratio", "tau": "gammapo_tau"},
               reference_free=False, source="γ-PO on DPO, in-batch (project variant of Sun et al., 2025)")
_register_pair("gammapo_simpo", gammapo_simpo_loss,
               {"beta": "gammapo_simpo_beta", "gamma_beta_ratio": "gammapo_gamma_beta_ratio", "tau": "gammapo_tau"},
               reference_free=True, margin_queue=True, source="γ-SimPO with the gap queue (Sun et al., 2025)")
_register_pair("amapo", amapo_loss, {"beta": "beta", **_SMOOTHING}, reference_free=True,
               source="AMaPO (Deng et al., 2025)")
_register_pair("repo", repo_loss, {"gamma": "repo_gamma", "beta": "beta"}, reference_free=True,
               source="RePO (Wu et al., 2025)")
_register_pair("madpo", madpo_loss,
               {"beta": "beta", "c_max": "madpo_c_max", "c_min": "madpo_c_min", "lam": "madpo_lambda",
                "tau": "madpo_tau"},
               reference_free=False, source="MADPO (Rho, 2025)", batch_inputs={"reward_margin": REWARD_MARGIN})


def compute_preference_loss(
    loss_type: str,
    config: Any,
    *batch_and_inputs: Any,
    batch_inputs: Mapping[str, torch.Tensor] | None = None,
    queued_gaps: torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """Dispatch on `loss_type`, reading the hyperparameters from `config` (a `BMCConfig` or any object with them).

    Call it with a `PairLogps`, or with the eight tensors in the historical order (policy chosen/rejected, reference
    chosen/rejected, diff masks chosen/rejected, loss masks chosen/rejected); either may be followed by
    `batch_inputs`, which maps dataset column -> `[B]` tensor for the objectives that declare
    `LossTypeSpec.batch_inputs` (MADPO's `reward_margin`); other columns are ignored. `queued_gaps` goes to the
    objectives with `margin_queue` (none: they solve in-batch). A config with `bmc_reference_weights` sets the batch's
    `PairLogps.reference_weights` (whose probabilities weight the reference term).
    """
    args = list(batch_and_inputs)
    if args and isinstance(args[0], PairLogps):
        batch, rest = args[0], args[1:]
    else:
        batch, rest = PairLogps.of(*args[:8]), args[8:]
    if len(rest) > 1 or (rest and batch_inputs is not None):
        raise TypeError("compute_preference_loss: after the batch, only `batch_inputs` may follow")
    if rest:
        batch_inputs = rest[0]
    spec = get_loss_type(loss_type)
    extras: dict[str, Any] = {}
    for kwarg, column in spec.batch_inputs.items():
        if batch_inputs is None or column not in batch_inputs:
            raise ValueError(
                f"loss_type={loss_type!r} needs the per-example input `{column}` (a number per pair, e.g. a dataset "
                f"column of that name), but the batch has none; got {sorted(batch_inputs or {})}"
            )
        extras[kwarg] = batch_inputs[column]
    if spec.margin_queue:
        extras["queued_gaps"] = queued_gaps
    reference_weights = getattr(config, "bmc_reference_weights", batch.reference_weights)
    if reference_weights != batch.reference_weights:
        batch = dataclasses.replace(batch, reference_weights=reference_weights)
    return spec.call(batch, **extras, **spec.kwargs_from(config))
