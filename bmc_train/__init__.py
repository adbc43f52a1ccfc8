"""bmc_train: the Modeling Phase of BMC (token-weighted preference optimisation) on TRL's DPOTrainer."""

from .config import BMCConfig
from .losses import (
    LOSS_TYPES,
    LossTypeSpec,
    PreferenceLossOutput,
    amapo_loss,
    bmc_dpo_loss,
    bmc_ipo_loss,
    bmc_orpo_loss,
    bmc_rdpo_loss,
    bmc_simpo_loss,
    bmc_token_weights,
    bpo_loss,
    compute_preference_loss,
    figa_loss,
    gammapo_loss,
    get_loss_type,
    madpo_loss,
    register_loss_type,
    repo_loss,
)
from .trainer import BMCTrainer, DataCollatorForBMC, compute_diff_mask_columns

__all__ = [
    "BMCConfig",
    "BMCTrainer",
    "DataCollatorForBMC",
    "LOSS_TYPES",
    "LossTypeSpec",
    "PreferenceLossOutput",
    "amapo_loss",
    "bmc_dpo_loss",
    "bmc_ipo_loss",
    "bmc_orpo_loss",
    "bmc_rdpo_loss",
    "bmc_simpo_loss",
    "bmc_token_weights",
    "bpo_loss",
    "compute_diff_mask_columns",
    "compute_preference_loss",
    "figa_loss",
    "gammapo_loss",
    "get_loss_type",
    "madpo_loss",
    "register_loss_type",
    "repo_loss",
]
