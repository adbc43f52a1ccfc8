"""`BMCTrainer`: TRL's `DPOTrainer` with the BMC token-weighted objectives.

What is overridden, and why (everything else — tokenization, ref-model creation, PEFT, accelerate, DeepSpeed/FSDP,
logging, saving — is TRL's own code path):

* `_prepare_dataset`: after TRL tokenizes, keep the dataset's diff masks when they were built for this tokenizer
  and have one entry per token, otherwise compute them once (`bmc_train.dataset_columns`); a loss type's per-example
  columns (`LossTypeSpec.batch_inputs`, e.g. MADPO's `reward_margin`) must be in the dataset.
* `_set_signature_columns_if_needed`: keep the two mask columns (and those per-example columns), which TRL would drop
  as unused.
* the collator (`bmc_train.collator.DataCollatorForBMC`): TRL's `DataCollatorForPreference` plus a `(2B, L)`
  `diff_mask`, per-example float columns, precomputed per-token reference log-probs and, with `padding_free=True`
  (which TRL 1.16's `DPOTrainer` turns off), the packed layout of `bmc_train.packing`.
* `_compute_loss`: TRL sums the per-token log-probs inline, with no hook, so the loss is recomputed here from the
  per-token policy log-probs and a live (or precomputed) per-token reference, then handed to the pure functions of
  `bmc_train.losses`. A packed batch runs the model packed and is unpacked into rows right after the forward. TRL's
  metrics are logged under the same names, plus `bmc/*` (`bmc_train.metrics`).
* `train`: a loss type with `margin_queue` (γ-SimPO) keeps a `GapQueue` of past reward gaps per process, written
  into every checkpoint by `GapQueueCallback` and restored here when training resumes from one.
"""

from __future__ import annotations

import textwrap
import warnings
from types import SimpleNamespace
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import is_peft_model
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

from bmc_data.pairs.schema import CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK
from bmc_data.tokens.ref_logps import REF_CHOSEN_TOKEN_LOGPS, REF_REJECTED_TOKEN_LOGPS

from .collator import DIFF_MASK, DataCollatorForBMC


def _hide_renamed_checkpointing_warnings() -> None:
    """TRL 1.16 calls transformers 5's renamed gradient-checkpointing methods (now `activation_checkpointing_*`) on
    every step with a reference forward; the FutureWarning names code that is neither bmc's nor the user's."""
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`(is_)?gradient_checkpointing\w*` is deprecated and will be removed in v6")
from .config import BMCConfig
from .dataset_columns import (
    check_batch_input_columns,
    compute_diff_mask_columns,
    use_original_chosen,
)
from .losses import PairLogps, compute_preference_loss, get_loss_type
from .margin_queue import GapQueue, GapQueueCallback
from .metrics import BMCMetricsMixin
from .packing import SEQ_LENGTHS, unpack_shifted, unpack_tokens
from .reference import (
    REF_PER_TOKEN,
    peft_reference_context,
    precompute_reference_columns,
    release_reference,
    sampled_trl_weights_hash,
)

__all__ = ["BMCTrainer", "DataCollatorForBMC", "compute_diff_mask_columns"]

logger = get_logger(__name__)

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", DIFF_MASK, REF_PER_TOKEN, SEQ_LENGTHS}
_PER_TOKEN_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


class BMCTrainer(BMCMetricsMixin, DPOTrainer):
    """[`~trl.DPOTrainer`] training the BMC objectives of `bmc_train.losses` (DPO-BMC by default).

    Same arguments as `DPOTrainer`; `args` must be a [`BMCConfig`]. The dataset is a TRL preference dataset
    (`prompt`, `chosen`, `rejected`), optionally with `chosen_diff_mask` / `rejected_diff_mask` from
    `bmc_data.tokens.masks.add_diff_masks` (computed here otherwise). Vision datasets are not supported.
    """

    _tag_names = ["trl", "dpo", "bmc"]
    _name = "BMC"
    _paper = {
        "title": "Bridging and Modeling Correlations in Pairwise Data for Direct Preference Optimization",
        "id": "2408.07471",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{jiang2025bridging,
                title        = {{Bridging and Modeling Correlations in Pairwise Data for Direct Preference Optimization}},
                author       = {Yuxin Jiang and Bo Huang and Yufei Wang and Xingshan Zeng and Liangyou Li and Yasheng Wang and Xin Jiang and Lifeng Shang and Ruiming Tang and Wei Wang},
                year         = 2025,
                booktitle    = {The Thirteenth International Conference on Learning Representations, ICLR 2025},
            }"""),
    }

    def __init__(self, model, ref_model=None, args: BMCConfig | None = None, *pos, **kwargs):
        _hide_renamed_checkpointing_warnings()
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = BMCConfig(f"{str(name).rstrip('/').split('/')[-1]}-BMC")
        if not isinstance(args, BMCConfig):
            raise TypeError(f"BMCTrainer needs a BMCConfig, got {type(args).__name__}")
        self._loss_spec = get_loss_type(args.loss_type)
        # TRL 1.16's DPOTrainer warns and turns padding_free off; BMCTrainer packs its batches itself
        padding_free, args.padding_free = args.padding_free, False
        try:
            with sampled_trl_weights_hash():
                super().__init__(model, ref_model, args, *pos, **kwargs)
        finally:
            args.padding_free = padding_free
        self.padding_free = padding_free
        if padding_free and is_peft_model(self.model) and getattr(
                self.accelerator.unwrap_model(self.model).active_peft_config, "is_prompt_learning", False):
            raise ValueError("padding_free=True with a prompt-learning PEFT adapter: its virtual tokens are prepended "
                             "to every row, which a packed row cannot hold; set padding_free=False")
        if self._is_vision_dataset:
            raise NotImplementedError("BMCTrainer does not support vision datasets")
        if type(self.data_collator) is DataCollatorForPreference:  # TRL's default: add the diff mask to it
            c = self.data_collator
            self.data_collator = DataCollatorForBMC(
                pad_token_id=c.pad_token_id,
                max_length=c.max_length,
                truncation_mode=c.truncation_mode,
                pad_to_multiple_of=c.pad_to_multiple_of,
                return_tensors=c.return_tensors,
                float_columns=tuple(self._loss_spec.batch_inputs.values()),
                padding_free=padding_free,
            )
        elif self._loss_spec.uses_diff_mask and not isinstance(self.data_collator, DataCollatorForBMC):
            logger.warning(
                "loss_type=%r uses diff masks, but the custom data collator %s does not return `diff_mask`: no token "
                "will be weighted unless it does (see DataCollatorForBMC).",
                args.loss_type, type(self.data_collator).__name__,
            )
        if self._loss_spec.reference_free and ref_model is None and self.ref_model is not None:
            self.ref_model = None  # SimPO/ORPO/FIGA never run it: give its memory back
        if args.precompute_ref_log_probs:
            release_reference(self)  # its values are stored: train with the policy alone
        self._gap_queue: GapQueue | None = None
        if self._loss_spec.margin_queue and args.gammapo_queue_size > 0:
            self._gap_queue = GapQueue(args.gammapo_queue_size, args.gammapo_queue_sample,
                                       seed=args.seed + args.process_index)
            self.add_callback(GapQueueCallback(self._gap_queue))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if self._gap_queue is not None and resume_from_checkpoint:
            folder = resume_from_checkpoint
            if isinstance(folder, bool):
                from transformers.trainer_utils import get_last_checkpoint

                folder = get_last_checkpoint(self.args.output_dir)
            if folder:
                self._gap_queue.load(folder, self.args.process_index)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # -- data --

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        check_batch_input_columns(dataset, args.loss_type, dataset_name)
        if getattr(args, "use_original_chosen", False):
            dataset = use_original_chosen(dataset, dataset_name)
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if not get_loss_type(args.loss_type).uses_diff_mask:
            # unused here, and masks stored for another tokenizer would not fit the collator's rows
            stale = [c for c in (CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK) if c in (dataset.column_names or [])]
            return dataset.remove_columns(stale) if stale else dataset
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        return compute_diff_mask_columns(
            dataset,
            tokenizer,
            ignore_stopwords=args.ignore_stopwords,
            num_proc=args.dataset_num_proc,
            dataset_name=dataset_name,
        )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = (REF_CHOSEN_TOKEN_LOGPS, REF_REJECTED_TOKEN_LOGPS) if self.args.precompute_ref_log_probs else ()
        for name in (CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK, *self._loss_spec.batch_inputs.values(), *extra):
            if name not in self._signature_columns:
                self._signature_columns.append(name)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """Per-token reference log-probs as dataset columns (TRL stores sums): see `bmc_train.reference`."""
        return precompute_reference_columns(self, dataset, name, batch_size)

    # -- loss --

    def _reference_per_token_logps(self, model_kwargs: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs of π_ref: TRL's reference forward, without its summation."""
        ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
        model = self.ref_model
        if model is None and is_peft_model(self.model):
            model = self.model  # run under peft_reference_context: the adapter-disabled policy
        if model is None:
            raise RuntimeError(f"loss_type={self.args.loss_type!r} needs a reference model, but none is loaded")
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              peft_reference_context(self)):
            return model(**ref_kwargs, labels=labels, fused_lm_head=True).log_probs

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        spec = self._loss_spec
        diff_mask = inputs.get(DIFF_MASK)
        batch_inputs = {c: inputs[c] for c in spec.batch_inputs.values() if c in inputs}  # e.g. MADPO's reward_margin
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS and k not in batch_inputs}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        lengths = inputs.get(SEQ_LENGTHS)
        if lengths is not None:  # packed: a sequence start is never a label, so nothing is scored across a boundary
            labels = labels.masked_fill(inputs["position_ids"] == 0, -100)

        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        ref_per_token_logps = None
        if spec.reference_free:
            pass
        elif REF_PER_TOKEN in inputs:  # precomputed: aligned with the shifted completion mask by the collator
            ref_per_token_logps = inputs[REF_PER_TOKEN].to(outputs.log_probs.device)
        elif self.args.precompute_ref_log_probs:
            raise ValueError(
                f"precompute_ref_log_probs=True, but the batch has no `{REF_PER_TOKEN}`: the data collator "
                f"{type(self.data_collator).__name__} must return it (DataCollatorForBMC does)"
            )
        else:
            ref_per_token_logps = self._reference_per_token_logps(model_kwargs, labels)
        if lengths is not None:  # back to [chosen; rejected] rows: everything below is the padded run's code
            outputs = SimpleNamespace(aux_loss=getattr(outputs, "aux_loss", None), **{
                k: None if getattr(outputs, k) is None else unpack_shifted(getattr(outputs, k), lengths)
                for k in _PER_TOKEN_OUTPUTS})
            completion_mask = unpack_tokens(completion_mask, lengths)
            diff_mask = None if diff_mask is None else unpack_tokens(diff_mask, lengths)
            if ref_per_token_logps is not None:
                ref_per_token_logps = unpack_shifted(ref_per_token_logps, lengths)
        shift_completion_mask = completion_mask[..., 1:]
        seq_len = shift_completion_mask.size(1)
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
        per_token_logps = outputs.log_probs[:, -seq_len:]
        if ref_per_token_logps is not None:
            ref_per_token_logps = ref_per_token_logps[:, -seq_len:]

        # The log-prob at position t scores token t + 1, so the masks are shifted like TRL's completion mask.
        loss_mask = shift_completion_mask.bool()
        if diff_mask is None:
            shift_diff = torch.zeros_like(loss_mask)
        else:
            shift_diff = diff_mask[..., 1:].to(loss_mask.device).bool() & loss_mask
        chosen_logps, rejected_logps = per_token_logps.chunk(2, dim=0)
        chosen_loss_mask, rejected_loss_mask = loss_mask.chunk(2, dim=0)
        chosen_diff, rejected_diff = shift_diff.chunk(2, dim=0)
        ref_chosen = ref_rejected = None
        if ref_per_token_logps is not None:
            ref_chosen, ref_rejected = ref_per_token_logps.chunk(2, dim=0)

        queued = None
        if self._gap_queue is not None:
            queued = torch.tensor(self._gap_queue.sample(chosen_logps.shape[0]), dtype=chosen_logps.dtype,
                                  device=chosen_logps.device)
        batch = PairLogps(chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_diff, rejected_diff,
                          chosen_loss_mask, rejected_loss_mask, reference_weights=self.args.bmc_reference_weights)
        out = compute_preference_loss(spec.name, self.args, batch, batch_inputs=batch_inputs, queued_gaps=queued)
        # evaluation batches fill it too, as the official get_gamma_dq, unless gammapo_queue_from_eval=False
        if self._gap_queue is not None and (mode == "train" or self.args.gammapo_queue_from_eval):
            self._gap_queue.extend((out.chosen_rewards - out.rejected_rewards).detach().float().cpu().tolist())
        loss = out.losses.mean()
        if self.aux_loss_enabled:
            aux_loss = outputs.aux_loss
            loss = loss + self.router_aux_loss_coef * aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        self._log_trl_metrics(mode, inputs, outputs, seq_len, shift_completion_mask, per_token_logps, out)
        if spec.uses_diff_mask:
            self._log_bmc_metrics(mode, per_token_logps, shift_diff, loss_mask)

        if return_outputs:
            with torch.no_grad():  # as TRL: the fused head builds no logits, so recompute them for compute_metrics
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss
