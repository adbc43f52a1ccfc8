"""Every option `BMCConfig` inherits from TRL's `DPOConfig`, audited against the chosen `loss_type`: honoured, or
refused with one clear `ValueError` (nothing is silently ignored; the table is in docs/training.md).

`DPOCONFIG_OPTIONS` names each field `DPOConfig` adds to `TrainingArguments` and how `BMCTrainer` treats it; a test
fails when TRL adds a field this table does not cover. `refuse_unused_options(config)` applies the rules.
BMC's own hyperparameters that the chosen objective does not read get a warning instead (a recipe sets `delta` for
every run of a task, including its plain-DPO baseline).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .losses import LOSS_TYPES, get_loss_type

__all__ = ["DPOCONFIG_OPTIONS", "refuse_unused_options", "unused_bmc_options"]

logger = logging.getLogger(__name__)

# field -> how BMCTrainer treats it (the docs table's middle column, in short)
DPOCONFIG_OPTIONS: dict[str, str] = {
    "model_init_kwargs": "honoured (TRL's model loading)",
    "trust_remote_code": "honoured (TRL's model loading)",
    "router_aux_loss_coef": "honoured (MoE auxiliary loss added in BMCTrainer._compute_loss)",
    "disable_dropout": "honoured (TRL)",
    "dataset_num_proc": "honoured (TRL's tokenization and the diff-mask map)",
    "max_length": "honoured (collator truncation)",
    "truncation_mode": "honoured (collator truncation, diff masks and precompute follow it)",
    "padding_free": "honoured by BMCTrainer itself (TRL 1.16's DPOTrainer falls back to padding)",
    "pad_to_multiple_of": "honoured (padded rows; the packed row under padding_free)",
    "precompute_ref_log_probs": "honoured per token for reference-based types; refused for reference-free ones",
    "precompute_ref_batch_size": "honoured with precompute_ref_log_probs; refused without it",
    "loss_type": "replaced by BMC's own names (one string)",
    "loss_weights": "refused (TRL's loss mixing; BMCTrainer trains one objective)",
    "ld_alpha": "refused (LD-DPO's length-desensitised log-probs are not implemented)",
    "f_divergence_type": "refused unless reverse_kl (the BMC objectives are reverse-KL DPO forms)",
    "f_alpha_divergence_coef": "refused unless 0.5 (only read by TRL's alpha-divergence)",
    "label_smoothing": "honoured where the authors define it (dpo, bmc, rdpo, simpo, amapo and their _bmc twins); "
                       "refused for the others",
    "beta": "honoured by every type (reward scale, or only the logged rewards' scale for ipo, repo, figa); refused "
            "when changed for gammapo_simpo, which reads gammapo_simpo_beta",
    "use_weighting": "refused (WPO weighting is not implemented)",
    "discopop_tau": "refused unless 0.05 (only read by TRL's discopop loss)",
    "activation_offloading": "honoured (TRL's training_step)",
    "sync_ref_model": "honoured with a live reference (TRL's callback; TRL refuses it with PEFT and precompute); "
                      "refused for reference-free types",
    "ref_model_mixup_alpha": "honoured with sync_ref_model; refused without it",
    "ref_model_sync_steps": "honoured with sync_ref_model; refused without it",
    "pad_token": "honoured (TRL's tokenizer setup)",
}


def _default(config: Any, name: str) -> Any:
    for f in dataclasses.fields(config):
        if f.name == name:
            return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    raise KeyError(name)


def _changed(config: Any, name: str) -> bool:
    return getattr(config, name) != _default(config, name)


def refuse_unused_options(config: Any) -> None:
    """Raise `ValueError` naming the first inherited option the chosen `loss_type` would ignore (or that BMCTrainer
    does not implement); warn about BMC hyperparameters it does not read."""
    loss_type = config.loss_type
    spec = get_loss_type(loss_type)

    def refuse(name: str, why: str) -> None:
        raise ValueError(f"{name}={getattr(config, name)!r} with loss_type={loss_type!r}: {why}")

    for name in ("loss_weights", "ld_alpha", "use_weighting"):
        if _changed(config, name):
            refuse(name, "BMCTrainer does not implement it (its objectives replace TRL's loss code); use "
                         "trl.DPOTrainer for it")
    if config.f_divergence_type != "reverse_kl":
        refuse("f_divergence_type", "the BMC objectives are reverse-KL forms; use trl.DPOTrainer for other "
                                    "f-divergences")
    for name in ("f_alpha_divergence_coef", "discopop_tau"):
        if _changed(config, name):
            refuse(name, "only TRL's own loss types read it (alpha-divergence / discopop), so it would be ignored")
    if config.label_smoothing and "label_smoothing" not in spec.params.values():
        smoothed = sorted(n for n, s in LOSS_TYPES.items() if "label_smoothing" in s.params.values())
        refuse("label_smoothing", f"this objective's authors define no label smoothing, so it would be ignored; "
                                  f"it is honoured by {', '.join(smoothed)}")
    if "beta" not in spec.params.values() and _changed(config, "beta"):
        reads = ", ".join(f"`{a}`" for a in spec.params.values() if a != "delta")
        refuse("beta", f"this objective does not read beta (it reads {reads}), so it would be ignored")
    if config.precompute_ref_log_probs and spec.reference_free:
        refuse("precompute_ref_log_probs", "this objective is reference-free (it never runs a reference model), so "
                                           "there is nothing to precompute; set precompute_ref_log_probs=False")
    if config.precompute_ref_batch_size is not None and not config.precompute_ref_log_probs:
        refuse("precompute_ref_batch_size", "it only sizes the reference precompute pass; set "
                                            "precompute_ref_log_probs=True or leave it unset")
    if config.sync_ref_model and spec.reference_free:
        refuse("sync_ref_model", "this objective is reference-free, so there is no reference model to sync")
    for name in ("ref_model_mixup_alpha", "ref_model_sync_steps"):
        if _changed(config, name) and not config.sync_ref_model:
            refuse(name, "it only applies with sync_ref_model=True, so it would be ignored")
    unused = unused_bmc_options(config)
    if unused:
        logger.warning("loss_type=%r does not read %s: %s no effect", loss_type,
                       ", ".join(f"{n}={getattr(config, n)!r}" for n in unused),
                       "it has" if len(unused) == 1 else "they have")


# BMC hyperparameters read through the trainer rather than through `LossTypeSpec.params`
_TRAINER_READS = {
    "gammapo_queue_size": lambda spec: spec.margin_queue,
    "gammapo_queue_sample": lambda spec: spec.margin_queue,
    "gammapo_queue_from_eval": lambda spec: spec.margin_queue,
    "bmc_reference_weights": lambda spec: spec.token_weighted and not spec.reference_free,
    "ignore_stopwords": lambda spec: spec.uses_diff_mask,
}


def unused_bmc_options(config: Any) -> list[str]:
    """BMC's own hyperparameters set away from their default that the chosen loss type does not read."""
    spec = get_loss_type(config.loss_type)
    knobs = {attr for s in LOSS_TYPES.values() for attr in s.params.values()} | set(_TRAINER_READS)
    own = {f.name for f in dataclasses.fields(config)} - set(DPOCONFIG_OPTIONS)
    unused = []
    for name in sorted(knobs & own):
        reads = _TRAINER_READS[name](spec) if name in _TRAINER_READS else name in spec.params.values()
        resolved_default = name == "ipo_tau" and config.ipo_tau == config.beta  # unset ipo_tau becomes beta
        if not reads and _changed(config, name) and not resolved_default:
            unused.append(name)
    return unused
