"""`BMCConfig`: TRL's `DPOConfig` plus the BMC objective's knobs, with the paper's defaults (App. A.3)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from trl import DPOConfig

from .losses import LOSS_TYPES, get_loss_type
from .losses.batch import REFERENCE_WEIGHTS
from .losses.xpo import FIGA_NORMALIZATIONS
from .option_audit import refuse_unused_options

__all__ = ["BMCConfig"]

def _bf16_available() -> bool:
    try:
        from transformers.utils import (
            is_torch_bf16_gpu_available,
            is_torch_xla_available,
        )

        return bool(is_torch_bf16_gpu_available() or is_torch_xla_available())
    except Exception:  # pragma: no cover - very old transformers
        return False


@dataclass
class BMCConfig(DPOConfig):
    r"""
    Configuration for [`BMCTrainer`]: every [`~trl.DPOConfig`] option, plus the BMC ones below.

    Defaults follow the paper's App. A.3 (learning rate 5e-7, cosine schedule, 10% warm-up, one epoch, max length
    2048; β 0.05 and δ 2.0 unless a recipe sets the task values: QA β 0.05 δ 3.0, math β 0.05 δ 2.5,
    instruction following β 0.01 δ 1.5–2.0). Effective batch 128 is `per_device_train_batch_size ×
    gradient_accumulation_steps × num_processes`; set it in the recipe for your hardware.

    Parameters:
        loss_type (`str`, defaults to `"bmc"`):
            The objective. `"bmc"` (= `"dpo_bmc"`, eq. 4), `"dpo"`, `"ipo"`, `"ipo_bmc"`, `"rdpo"`, `"rdpo_bmc"`,
            `"simpo"`, `"simpo_bmc"`, `"orpo"`, `"orpo_bmc"`, `"figa"`, and the related objectives of
            docs/related-objectives.md, each plain or with BMC token weights: `"bpo"`, `"bpo_bmc"`, `"bpo_hinge"`,
            `"bpo_hinge_bmc"`, `"gammapo"`, `"gammapo_bmc"`, `"gammapo_simpo"`, `"gammapo_simpo_bmc"`, `"amapo"`, `"amapo_bmc"`, `"repo"`, `"repo_bmc"`, `"madpo"`, `"madpo_bmc"` (MADPO
            needs a `reward_margin` dataset column). Replaces TRL's list-valued `loss_type`.
        delta (`float`, defaults to `2.0`):
            δ, the cap on the inverse policy probability in λ = 1 + min(1/π_θ, δ) on diff tokens.
        ipo_tau (`float`, *optional*):
            τ of IPO. `None` uses `beta`, as TRL's `loss_type="ipo"` does.
        rdpo_alpha (`float`, *optional*):
            α of R-DPO's length regulariser. `None` uses `beta`, as the official BMC code (`β·(logits − (|y_w| −
            |y_l|))`).
        simpo_gamma (`float`, defaults to `1.0`):
            γ, SimPO's target reward margin. SimPO uses `beta` as its (large, e.g. 2.0) reward scale.
        orpo_lambda (`float`, *optional*):
            λ weighting ORPO's odds-ratio term against its NLL term (a token mean over the micro-batch's chosen
            tokens). `None` uses `beta`, as the official BMC code.
        figa_alpha (`float`, defaults to `1.0`), figa_beta (`float`, defaults to `0.5`):
            FIGA's weights on added (chosen) and deleted (rejected) tokens.
        figa_normalization (`str`, defaults to `"sum"`):
            `"sum"`: FIGA's weighted sums over the diff tokens, as the official BMC baseline; `"diff_tokens"`: divided
            by the pair's number of diff tokens, as FIGA's own code.
        bmc_reference_weights (`str`, defaults to `"policy"`):
            Whose probabilities give λ in the reference term of the `*_bmc` reference-based types: `"policy"` (the
            paper's eq. 4: one λ per token, from π_θ) or `"reference"` (the official BMC code: λ of the reference term
            from π_ref's own probabilities). Works with a live and with a precomputed reference.
        bpo_alpha (`float`, defaults to `0.3`):
            BPO's gap adaptor α ∈ (0, 1] in the balanced margin min(r_w, −α r_l) (official code's value).
        gammapo_gamma_beta_ratio (`float`, defaults to `0.4`), gammapo_tau (`float`, defaults to `10.0`):
            γ-PO's mean target margin γ0 = ratio · β and the KL strength τ pulling the instance-wise margins to γ0
            (official Llama-3-8B-Instruct recipe). Ratio 0 is plain DPO (`gammapo`) / SimPO with γ = 0
            (`gammapo_simpo`).
        gammapo_simpo_beta (`float`, defaults to `10.0`):
            β of `gammapo_simpo` (SimPO's reward scale; official Llama-3-8B-Instruct recipe). Its own field because
            the shared `beta` default is BMC's 0.05.
        gammapo_queue_size (`int`, defaults to `2048`), gammapo_queue_sample (`int`, defaults to `256`):
            `gammapo_simpo`'s queue of recent reward gaps (trainer state, saved with checkpoints): gaps kept, and
            gaps per solve including the current batch's (official values). Queue size 0 solves in-batch.
        gammapo_queue_from_eval (`bool`, defaults to `True`):
            Evaluation batches also push their gaps into the queue, as the official `get_gamma_dq` does on every
            call. `False` keeps evaluation from changing training state.
        repo_gamma (`float`, defaults to `0.6`):
            RePO's margin threshold γ in ReLU(γ − m) (official Llama-3-8B-Instruct recipe; 0.4 for Mistral).
        madpo_c_max (`float`, defaults to `2.0`), madpo_c_min (`float`, defaults to `0.5`), madpo_lambda (`float`,
        defaults to `1.0`), madpo_tau (`float`, defaults to `log(999) ≈ 6.907`):
            MADPO's weight schedule on the reward-model margin (official experiment values); c_max = 1 is plain DPO.
            AMaPO has no parameter of its own: it uses `beta` (official recipes 2.0–3.0).
        use_original_chosen (`bool`, defaults to `False`):
            Train on `original_chosen` (y_w) instead of `chosen` (ỹ_w), with diff masks recomputed for (y_w, y_l):
            with `loss_type="bmc"` this is the paper's DPO-MC ablation.
        ignore_stopwords (`bool`, defaults to `False`):
            Never mark English stopword tokens in the diff masks (the official BMC code does this; the paper does not
            mention it). The trainer then computes the masks itself, also when the dataset stores fitting ones (they
            do not say whether stopwords were left unmarked).
        padding_free (`bool`, defaults to `False`):
            TRL's option, implemented here for every objective: each batch is packed into one row without padding and
            unpacked into rows after the forward (`bmc_train.packing`), so no padding is computed.
        precompute_ref_log_probs (`bool`, defaults to `False`):
            TRL's option, here per token: one no-grad reference pass before training stores every completion
            token's reference log-prob as dataset columns (cached on disk), and the reference model is released, so
            training runs only the policy. Every reference-based loss type; an error for the reference-free ones.
        precompute_ref_dtype (`str`, defaults to `"auto"`), precompute_ref_cache_dir (`str`, *optional*):
            Storage dtype of those values (`auto`: float32 for a float32 run, float16 under bf16/fp16, where its
            rounding is below the compute noise), and the cache folder (default: the datasets cache).
    """

    # Paper defaults that differ from DPOConfig / TrainingArguments
    learning_rate: float = field(default=5e-7, metadata={"help": "The initial learning rate (paper: 5e-7)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "The scheduler type (paper: cosine)."})
    warmup_steps: float = field(
        default=0.1,
        metadata={
            "help": "Linear warm-up: an integer number of steps, or a float in [0, 1) as a ratio of the total steps "
            "(paper: 10%%; `warmup_ratio` no longer exists in transformers 5)."
        },
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Total number of training epochs (paper: 1)."})
    max_length: int | None = field(
        default=2048, metadata={"help": "Maximum prompt+completion tokens; longer rows are truncated (paper: 2048)."}
    )
    beta: float = field(
        default=0.05,
        metadata={"help": "β, the KL strength / reward scale (paper: 0.05 for QA and math, 0.01 for instructions)."},
    )

    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Pack each batch's [chosen; rejected] rows into one row without padding (position_ids, no "
            "attention mask), for every BMC objective; implemented by BMCTrainer (TRL 1.16's DPOTrainer turns it "
            "off). Any attention implementation that reads position_ids: flash-attention 2/3, SDPA, eager."
        },
    )

    # BMC
    loss_type: str = field(  # type: ignore[assignment]  # TRL's is a list of its own loss names
        default="bmc",
        metadata={
            "help": "Objective: " + ", ".join(sorted(LOSS_TYPES)) + ". `bmc` is DPO-BMC (eq. 4).",
            "choices": sorted(LOSS_TYPES),
        },
    )
    delta: float = field(
        default=2.0,
        metadata={"help": "δ, the cap on 1/π_θ in the token weight λ = 1 + min(1/π_θ, δ) of diff tokens."},
    )
    ipo_tau: float | None = field(default=None, metadata={"help": "τ of IPO; unset uses `beta` (TRL's convention)."})
    rdpo_alpha: float | None = field(
        default=None,
        metadata={"help": "α of R-DPO's length regulariser α(|y_w| − |y_l|); unset: beta (official BMC code)."},
    )
    simpo_gamma: float = field(default=1.0, metadata={"help": "γ, SimPO's target margin (use a large β, e.g. 2.0)."})
    orpo_lambda: float | None = field(
        default=None, metadata={"help": "λ of ORPO's odds-ratio term; unset: beta (official BMC code)."}
    )
    figa_alpha: float = field(default=1.0, metadata={"help": "FIGA weight on added/substituted chosen tokens."})
    figa_beta: float = field(default=0.5, metadata={"help": "FIGA weight on deleted/substituted rejected tokens."})
    figa_normalization: str = field(
        default="sum",
        metadata={
            "help": "FIGA: 'sum' over diff tokens (official BMC baseline) or 'diff_tokens' (divided by their count, "
            "FIGA's own code).",
            "choices": list(FIGA_NORMALIZATIONS),
        },
    )
    bmc_reference_weights: str = field(
        default="policy",
        metadata={
            "help": "λ of the reference term: 'policy' (paper eq. 4) or 'reference' (official BMC code: from π_ref's "
            "own probabilities).",
            "choices": list(REFERENCE_WEIGHTS),
        },
    )
    # related objectives (docs/related-objectives.md); AMaPO only uses `beta`
    bpo_alpha: float = field(
        default=0.3,
        metadata={"help": "BPO gap adaptor α ∈ (0, 1] in the balanced margin min(r_w, −α r_l) (official code: 0.3)."},
    )
    gammapo_gamma_beta_ratio: float = field(
        default=0.4,
        metadata={
            "help": "γ-PO mean target margin over β (γ0 = ratio·β; official Llama-3-8B-Instruct recipe 0.4). 0 is DPO."
        },
    )
    gammapo_tau: float = field(
        default=10.0,
        metadata={"help": "γ-PO KL strength τ > 0 pulling the instance-wise margins to γ0 (official recipe: 10)."},
    )
    gammapo_simpo_beta: float = field(
        default=10.0,
        metadata={"help": "β of gammapo_simpo, SimPO's reward scale (official Llama-3-8B-Instruct recipe: 10)."},
    )
    gammapo_queue_size: int = field(
        default=2048,
        metadata={"help": "gammapo_simpo: reward gaps kept in the queue across steps (official: 2048; 0 = in-batch)."},
    )
    gammapo_queue_sample: int = field(
        default=256,
        metadata={"help": "gammapo_simpo: gaps per margin solve, the current batch's included (official: 256)."},
    )
    gammapo_queue_from_eval: bool = field(
        default=True,
        metadata={"help": "gammapo_simpo: evaluation batches also fill the gap queue (official code: yes)."},
    )
    repo_gamma: float = field(
        default=0.6,
        metadata={"help": "RePO margin threshold γ in ReLU(γ − m), m the length-normalised margin (official: 0.6)."},
    )
    madpo_c_max: float = field(
        default=2.0, metadata={"help": "MADPO weight-schedule c_max ≥ 1 for hard pairs (official: 2). 1 is DPO."}
    )
    madpo_c_min: float = field(
        default=0.5, metadata={"help": "MADPO weight-schedule c_min ∈ (0, 1] for easy pairs (official: 1/c_max)."}
    )
    madpo_lambda: float = field(
        default=1.0, metadata={"help": "MADPO slope λ ≥ 0 of the weight schedule (official: 1)."}
    )
    madpo_tau: float = field(
        default=math.log(999.0),
        metadata={
            "help": "MADPO margin τ > 0 where the weight schedule crosses 1, in reward-model logits "
            "(official: log(0.999/0.001))."
        },
    )
    use_original_chosen: bool = field(
        default=False,
        metadata={
            "help": "Train on `original_chosen` (y_w) vs `rejected` with masks recomputed for that pair (the DPO-MC "
            "ablation with loss_type=bmc)."
        },
    )
    ignore_stopwords: bool = field(
        default=False,
        metadata={"help": "Never mark English stopword tokens in the diff masks (official-code behaviour); the masks are "
                          "then computed by the trainer, also when the dataset stores some."},
    )
    # precomputed per-token reference log-probs (bmc_train/reference.py)
    precompute_ref_dtype: str = field(
        default="auto",
        metadata={
            "help": "Storage dtype of precomputed per-token reference log-probs: float16 (half the bytes; its error is "
            "below bf16 compute noise, measured in docs/training.md), float32 (exact), or auto: float32 for a float32 "
            "run, float16 for a bf16/fp16 one.",
            "choices": ["auto", "float16", "float32"],
        },
    )
    precompute_ref_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder caching precomputed reference log-probs (shared by all ranks/nodes); unset: "
            "<HF datasets cache>/bmc_ref_logps."
        },
    )

    def _check_training_numbers(self) -> None:
        """TrainingArguments' numbers that transformers accepts and then fails on (after the model has loaded) or
        reads as something else (max_steps 0 is "no limit": a whole epoch)."""
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate must be a finite number >= 0, got {self.learning_rate}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1 (or -1 to train num_train_epochs), got {self.max_steps}")
        if self.max_steps == -1 and not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise ValueError(f"num_train_epochs must be a finite number > 0 (or set max_steps), got {self.num_train_epochs}")

    def __post_init__(self):
        self._check_training_numbers()
        if isinstance(self.loss_type, (list, tuple)):
            if len(self.loss_type) != 1:
                raise ValueError(f"BMCConfig takes one loss_type, got {list(self.loss_type)}")
            self.loss_type = self.loss_type[0]
        loss_type = self.loss_type
        get_loss_type(loss_type)  # clear error for an unknown name
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        if not (math.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"delta must be >= 0, got {self.delta}")
        for name in ("rdpo_alpha", "simpo_gamma", "orpo_lambda", "figa_alpha", "figa_beta"):
            if getattr(self, name) is None and name in ("rdpo_alpha", "orpo_lambda"):
                continue  # unset: beta
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.ipo_tau is not None and not (math.isfinite(self.ipo_tau) and self.ipo_tau > 0):
            raise ValueError(f"ipo_tau must be > 0 (or unset to use beta), got {self.ipo_tau}")
        # the related objectives' ranges, checked here so a bad flag fails before any model is loaded
        if not 0 < self.bpo_alpha <= 1:
            raise ValueError(f"bpo_alpha must be in (0, 1], got {self.bpo_alpha}")
        if self.gammapo_tau <= 0 or self.gammapo_gamma_beta_ratio < 0:
            raise ValueError(
                f"gammapo_tau must be > 0 and gammapo_gamma_beta_ratio >= 0, got {self.gammapo_tau} and "
                f"{self.gammapo_gamma_beta_ratio}"
            )
        if self.gammapo_simpo_beta <= 0 or self.gammapo_queue_size < 0 or self.gammapo_queue_sample < 1:
            raise ValueError(
                f"gammapo_simpo_beta must be > 0, gammapo_queue_size >= 0 and gammapo_queue_sample >= 1; got "
                f"{self.gammapo_simpo_beta}, {self.gammapo_queue_size} and {self.gammapo_queue_sample}"
            )
        if not 0 < self.madpo_c_min <= 1 <= self.madpo_c_max or self.madpo_tau <= 0 or self.madpo_lambda < 0:
            raise ValueError(
                f"MADPO needs 0 < madpo_c_min <= 1 <= madpo_c_max, madpo_tau > 0 and madpo_lambda >= 0; got "
                f"c_min={self.madpo_c_min}, c_max={self.madpo_c_max}, tau={self.madpo_tau}, lambda={self.madpo_lambda}"
            )
        if self.figa_normalization not in FIGA_NORMALIZATIONS:
            raise ValueError(f"figa_normalization must be one of {list(FIGA_NORMALIZATIONS)}, got "
                             f"{self.figa_normalization!r}")
        if self.bmc_reference_weights not in REFERENCE_WEIGHTS:
            raise ValueError(f"bmc_reference_weights must be one of {list(REFERENCE_WEIGHTS)}, got "
                             f"{self.bmc_reference_weights!r}")
        refuse_unused_options(self)
        if self.ipo_tau is None:
            self.ipo_tau = self.beta
        if self.precompute_ref_dtype not in ("auto", "float16", "float32"):
            raise ValueError(
                f"precompute_ref_dtype must be 'auto', 'float16' or 'float32', got {self.precompute_ref_dtype!r}"
            )
        # CPU-only machines: TRL defaults bf16 to True, which transformers rejects without a bf16 GPU
        if self.bf16 is None and not self.fp16 and not _bf16_available():
            self.bf16 = False
        # TRL 1.16 sets `gradient_checkpointing` (default True), which transformers 5 renamed and warns about on
        # every run: carry the values over under the new names, exactly as transformers would, without the warning
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if hasattr(self, new) and getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
        super().__post_init__()
        self.loss_type = loss_type  # DPOConfig.__post_init__ wraps it in a list
        if self.hub_token:
            from bmc_data.redaction import register_secret

            register_secret(self.hub_token, "--hub_token")  # masked in every log line from now on

    def __getstate__(self) -> dict[str, Any]:
        """What pickling keeps: the Trainer writes it to `training_args.bin` in `output_dir` and in every checkpoint,
        and `push_to_hub` uploads those. The Hub token is left out (`None` once loaded back); in this process it
        stays set, for the push itself."""
        state = dict(self.__dict__)
        if state.get("hub_token") is not None:
            state["hub_token"] = None
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> BMCConfig:
        # copies made in this process (by accelerate, TRL) keep the token: only what is written leaves it out
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def __copy__(self) -> BMCConfig:
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone
