"""The BMC token-weighted preference objectives and the related ones, as pure functions of one typed batch.

* `batch`: `PairLogps`, the frozen record of a micro-batch (per-token policy/reference log-probs, loss and diff
  masks) with the BMC token weights λ and the reward sums every objective is built from; `PreferenceLossOutput`.
* `xpo`: DPO-BMC (eq. 4) and the xPO family of the paper (IPO, R-DPO, SimPO, ORPO) plus FIGA.
* `bpo`, `gammapo`, `amapo`, `repo`, `madpo`: the related objectives of docs/related-objectives.md.
* `registry`: the `loss_type` switch (`LOSS_TYPES`, `LossTypeSpec`, `compute_preference_loss`).

Every objective is `fn(batch: PairLogps, **hyperparameters) -> PreferenceLossOutput(losses[B], chosen_rewards[B],
rejected_rewards[B])`; it also accepts the eight tensors in the historical positional order. `delta=None` is the
plain objective, a float δ turns on λ inside every sum of log-probs / log-ratios (the `*_bmc` loss types). An
objective is one more pure function plus one `register_loss_type(...)` call; one that needs a per-example input
beyond the log-probs (MADPO's reward-model margin) declares it in `LossTypeSpec.batch_inputs`, one that needs
trainer state (γ-SimPO's queue of past reward gaps) sets `LossTypeSpec.margin_queue`.
"""

from .amapo import amapo_loss, amapo_margins
from .batch import (
    PairLogps,
    PreferenceLossOutput,
    bmc_token_weights,
    objective,
    token_weight_stats,
)
from .bpo import bpo_balanced_margin, bpo_hinge_loss, bpo_loss
from .gammapo import (
    gammapo_loss,
    gammapo_queue_margins,
    gammapo_simpo_loss,
    gammapo_target_margins,
)
from .madpo import REWARD_MARGIN, madpo_loss, madpo_weights
from .registry import (
    LOSS_TYPES,
    LossTypeSpec,
    compute_preference_loss,
    get_loss_type,
    register_loss_type,
)
from .repo import repo_loss
from .xpo import (
    bmc_dpo_loss,
    bmc_ipo_loss,
    bmc_orpo_loss,
    bmc_rdpo_loss,
    bmc_simpo_loss,
    figa_loss,
)

__all__ = [
    "LOSS_TYPES",
    "REWARD_MARGIN",
    "LossTypeSpec",
    "PairLogps",
    "PreferenceLossOutput",
    "amapo_loss",
    "amapo_margins",
    "bmc_dpo_loss",
    "bmc_ipo_loss",
    "bmc_orpo_loss",
    "bmc_rdpo_loss",
    "bmc_simpo_loss",
    "bmc_token_weights",
    "bpo_balanced_margin",
    "bpo_hinge_loss",
    "bpo_loss",
    "compute_preference_loss",
    "figa_loss",
    "gammapo_loss",
    "gammapo_queue_margins",
    "gammapo_simpo_loss",
    "gammapo_target_margins",
    "get_loss_type",
    "madpo_loss",
    "madpo_weights",
    "objective",
    "register_loss_type",
    "repo_loss",
    "token_weight_stats",
]
