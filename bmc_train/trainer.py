"""`BMCTrainer`: TRL's `DPOTrainer` with the BMC token-weighted objectives.

What is overridden, and why (everything else — tokenization, ref-model creation, PEFT, accelerate, DeepSpeed/FSDP,
logging, saving — is TRL's own code path):

* `_prepare_dataset`: after TRL tokenizes, keep the dataset's diff masks when they were built for this tokenizer
  (`bmc_data.tokens.masks.masks_fit`) and have one entry per `chosen_ids`/`rejected_ids` token; otherwise compute them once
  in a `Dataset.map` with `bmc_data.tokens.diff.token_diff_masks` (never in the training step).
  A loss type with per-example inputs (`LossTypeSpec.batch_inputs`, e.g. MADPO's `reward_margin`) needs those
  columns in the dataset: a clear error names them before any training step.
* `_set_signature_columns_if_needed`: keep the two mask columns (and those per-example columns), which TRL would drop
  as unused.
* the collator (`DataCollatorForBMC`): TRL's `DataCollatorForPreference` plus a `(2B, L)` `diff_mask` aligned with
  its `[chosen; rejected]`, right-padded, `keep_start`-truncated rows, and a `[B]` float tensor per per-example
  column.
* `_compute_loss`: TRL sums the per-token log-probs inline, with no hook, so the loss is recomputed here from the
  per-token policy log-probs and a live per-token reference pass (the same forward calls TRL makes), then handed to
  the pure functions of `bmc_train.losses`. TRL's metrics are logged under the same names, plus `bmc/*`.
* `train`: a loss type with `margin_queue` (γ-SimPO) keeps a `GapQueue` of past reward gaps per process, written
  into every checkpoint by `GapQueueCallback` and restored here when training resumes from one.
"""

from __future__ import annotations

import logging
import math
import numbers
import textwrap
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

from bmc_data.pairs.schema import (
    CHOSEN,
    CHOSEN_DIFF_MASK,
    MASK_COLUMNS,
    ORIGINAL_CHOSEN,
    REJECTED_DIFF_MASK,
)
from bmc_data.tokens.diff import token_diff_masks
from bmc_data.tokens.ref_logps import (
    REF_CHOSEN_TOKEN_LOGPS,
    REF_REJECTED_TOKEN_LOGPS,
    scatter_completion_logps,
)

from .config import BMCConfig
from .losses import (
    PairLogps,
    bmc_token_weights,
    compute_preference_loss,
    get_loss_type,
    token_weight_stats,
)
from .margin_queue import GapQueue, GapQueueCallback
from .reference import (
    REF_PER_TOKEN,
    peft_reference_context,
    precompute_reference_columns,
    release_reference,
    sampled_trl_weights_hash,
)

__all__ = ["BMCTrainer", "DataCollatorForBMC", "compute_diff_mask_columns"]

logger = get_logger(__name__)

DIFF_MASK = "diff_mask"  # the collated (2B, L) mask; not a model input
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", DIFF_MASK, REF_PER_TOKEN}


# --- data -------------------------------------------------------------------------------------------------------


@dataclass
class DataCollatorForBMC(DataCollatorForPreference):
    """`DataCollatorForPreference` that also returns `diff_mask`, a `(2B, L)` bool tensor.

    Row `i` of `diff_mask` marks the diff tokens of row `i` of `input_ids` (`[chosen; rejected]`), i.e.
    `[False] * len(prompt_ids) + chosen_diff_mask`, truncated and right-padded exactly as the ids are. Examples
    without mask fields get an all-false mask (no token is weighted: plain xPO).

    Each column in `float_columns` (per-example numbers such as MADPO's `reward_margin`) is returned as a `[B]`
    float32 tensor under its own name. Examples with precomputed per-token reference log-probs
    (`ref_chosen_token_logps` / `ref_rejected_token_logps`) also get `ref_per_token_logps`, a `(2B, L-1)` float32
    tensor aligned with the shifted completion mask (`bmc_data.tokens.ref_logps.scatter_completion_logps`).
    """

    float_columns: tuple[str, ...] = ()

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        if REF_CHOSEN_TOKEN_LOGPS in examples[0]:
            rows = [e[REF_CHOSEN_TOKEN_LOGPS] for e in examples] + [e[REF_REJECTED_TOKEN_LOGPS] for e in examples]
            output[REF_PER_TOKEN] = scatter_completion_logps(rows, output["completion_mask"])
        for column in self.float_columns:
            output[column] = _float_column(examples, column)
        n, width = output["input_ids"].shape
        diff = torch.zeros((n, width), dtype=torch.bool)
        if CHOSEN_DIFF_MASK not in examples[0]:
            output[DIFF_MASK] = diff
            return output
        rows = []
        for side, ids_key, mask_key in (("chosen", "chosen_ids", CHOSEN_DIFF_MASK),
                                         ("rejected", "rejected_ids", REJECTED_DIFF_MASK)):
            for i, example in enumerate(examples):
                mask = example[mask_key]
                if len(mask) != len(example[ids_key]):
                    raise ValueError(
                        f"batch example {i}: {mask_key} has {len(mask)} entries but {ids_key} has "
                        f"{len(example[ids_key])} tokens; the masks were built for another tokenization"
                    )
                rows.append([False] * len(example["prompt_ids"]) + list(mask))
        if self.max_length is not None:
            sl = slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
            rows = [r[sl] for r in rows]
        for i, row in enumerate(rows):
            if row:
                diff[i, : len(row)] = torch.tensor(row, dtype=torch.bool)
        output[DIFF_MASK] = diff
        return output


def _float_column(examples: list[dict[str, Any]], column: str) -> torch.Tensor:
    values = []
    for i, example in enumerate(examples):
        value = example.get(column)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"batch example {i}: `{column}` must be a finite number, got {value!r}")
        values.append(float(value))
    return torch.tensor(values, dtype=torch.float32)


def _check_batch_input_columns(dataset: Dataset | IterableDataset, loss_type: str, dataset_name: str) -> None:
    """A clear error, before any training step, when a loss type's per-example column is not in the dataset."""
    needed = list(get_loss_type(loss_type).batch_inputs.values())
    if not needed:
        return
    columns = dataset.column_names or list(next(iter(dataset)).keys())
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"loss_type={loss_type!r} reads the per-example column(s) {missing}, which the {dataset_name} dataset "
            f"lacks; it has {columns}. Add it (for MADPO: `reward_margin` = r(x, chosen) − r(x, rejected) from a "
            "reward model or from scores such as UltraFeedback's; see docs/related-objectives.md)."
        )


def _diff_mask_row(example: dict[str, Any], ignore_token_ids: frozenset[int] | None) -> dict[str, list[bool]]:
    chosen, rejected = token_diff_masks(example["chosen_ids"], example["rejected_ids"], ignore_token_ids=ignore_token_ids)
    return {CHOSEN_DIFF_MASK: chosen, REJECTED_DIFF_MASK: rejected}


def _stored_masks_usable(dataset: Dataset | IterableDataset, tokenizer: Any) -> bool:
    """The dataset's masks were built for this tokenizer and have one entry per trainer token (every row)."""
    if not isinstance(dataset, Dataset):
        return False  # streaming: cannot check every row up front, so recompute on the fly
    if any(c not in dataset.column_names for c in MASK_COLUMNS):
        return False
    from bmc_data.tokens.masks import masks_fit

    if not masks_fit(dataset, tokenizer):
        return False
    table = dataset.select_columns(["chosen_ids", "rejected_ids", CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK])
    for batch in table.iter(batch_size=1024):
        for ids_key, mask_key in (("chosen_ids", CHOSEN_DIFF_MASK), ("rejected_ids", REJECTED_DIFF_MASK)):
            if any(len(m) != len(ids) for m, ids in zip(batch[mask_key], batch[ids_key])):
                return False
    return True


def compute_diff_mask_columns(
    dataset: Dataset | IterableDataset,
    tokenizer: Any,
    *,
    ignore_stopwords: bool = False,
    num_proc: int | None = None,
    dataset_name: str = "train",
) -> Dataset | IterableDataset:
    """Return a tokenized (TRL-prepared) dataset with usable `chosen_diff_mask` / `rejected_diff_mask` columns.

    Stored masks are kept when they fit (see `_stored_masks_usable`); otherwise they are computed once from the
    trainer's own `chosen_ids` / `rejected_ids`, so they match its tokenization by construction.
    """
    if _stored_masks_usable(dataset, tokenizer):
        return dataset
    columns = dataset.column_names or []
    stale = [c for c in (CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK) if c in columns]
    if stale:
        from bmc_data.pairs.schema import MASK_TOKENIZER
        from bmc_data.tokens.tokenization import tokenizer_name

        built_for = dataset.unique(MASK_TOKENIZER) if MASK_TOKENIZER in columns and isinstance(dataset, Dataset) \
            else ["an unrecorded tokenizer"]
        # plain logging: this function is public and may run before accelerate's state exists
        logging.getLogger(__name__).warning(
            "the %s dataset's diff masks were built for tokenizer %s, not for %r (or do not match its tokens): "
            "recomputing them for it", dataset_name, ", ".join(map(str, built_for)), tokenizer_name(tokenizer))
        dataset = dataset.remove_columns(stale)
    ignore = None
    if ignore_stopwords:
        from bmc_data.tokens.stopwords import stopword_token_ids

        ignore = frozenset(stopword_token_ids(tokenizer))
    kwargs: dict[str, Any] = {"fn_kwargs": {"ignore_token_ids": ignore}}
    if isinstance(dataset, Dataset):
        kwargs.update(num_proc=num_proc, desc=f"Computing BMC diff masks for {dataset_name} dataset")
    return dataset.map(_diff_mask_row, **kwargs)


def _use_original_chosen(dataset: Dataset | IterableDataset, dataset_name: str) -> Dataset | IterableDataset:
    columns = dataset.column_names or list(next(iter(dataset)).keys())
    if ORIGINAL_CHOSEN not in columns:
        raise ValueError(
            f"use_original_chosen=True needs an `{ORIGINAL_CHOSEN}` column in the {dataset_name} dataset (a bridged "
            f"dataset from bmc_data has one); it has {columns}"
        )
    # The stored masks describe (ỹ_w, y_l); drop them so they are recomputed for (y_w, y_l).
    dataset = dataset.remove_columns([c for c in (CHOSEN, *MASK_COLUMNS) if c in columns])
    return dataset.rename_column(ORIGINAL_CHOSEN, CHOSEN)


# --- trainer ----------------------------------------------------------------------------------------------------


class BMCTrainer(DPOTrainer):
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
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = BMCConfig(f"{str(name).rstrip('/').split('/')[-1]}-BMC")
        if not isinstance(args, BMCConfig):
            raise TypeError(f"BMCTrainer needs a BMCConfig, got {type(args).__name__}")
        self._loss_spec = get_loss_type(args.loss_type)
        with sampled_trl_weights_hash():
            super().__init__(model, ref_model, args, *pos, **kwargs)
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
        _check_batch_input_columns(dataset, args.loss_type, dataset_name)
        if getattr(args, "use_original_chosen", False):
            dataset = _use_original_chosen(dataset, dataset_name)
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
        shift_completion_mask = completion_mask[..., 1:]
        seq_len = shift_completion_mask.size(1)
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)

        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
        per_token_logps = outputs.log_probs[:, -seq_len:]
        ref_per_token_logps = None
        if spec.reference_free:
            pass
        elif REF_PER_TOKEN in inputs:  # precomputed: aligned with the shifted completion mask by the collator
            ref_per_token_logps = inputs[REF_PER_TOKEN][:, -seq_len:].to(per_token_logps.device)
        elif self.args.precompute_ref_log_probs:
            raise ValueError(
                f"precompute_ref_log_probs=True, but the batch has no `{REF_PER_TOKEN}`: the data collator "
                f"{type(self.data_collator).__name__} must return it (DataCollatorForBMC does)"
            )
        else:
            ref_per_token_logps = self._reference_per_token_logps(model_kwargs, labels)[:, -seq_len:]

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

    # -- metrics --

    def _gathered_sum(self, value: torch.Tensor) -> float:
        return self.accelerator.gather_for_metrics(value.detach().reshape(1)).sum().item()

    def _log_trl_metrics(self, mode, inputs, outputs, seq_len, shift_completion_mask, per_token_logps, out):
        """The metrics TRL's `_compute_loss` logs, under the same names."""
        metrics = self._metrics[mode]
        mask = shift_completion_mask
        total_tokens = self._gathered_sum(mask.sum().float())
        entropy_sum = self._gathered_sum((outputs.entropy[:, -seq_len:].detach() * mask).sum())
        metrics["entropy"].append(entropy_sum / total_tokens if total_tokens > 0 else 0.0)
        if mode == "train":
            num_tokens = self._gathered_sum(inputs["attention_mask"].sum())
            self._total_train_tokens += int(num_tokens) // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

        chosen_mask, rejected_mask = mask.bool().chunk(2, dim=0)
        chosen_logits, rejected_logits = outputs.mean_logits[:, -seq_len:].detach().chunk(2, dim=0)
        for name, logits, m in (("chosen", chosen_logits, chosen_mask), ("rejected", rejected_logits, rejected_mask)):
            n = self._gathered_sum(m.sum().float())
            metrics[f"logits/{name}"].append(self._gathered_sum(logits[m].sum()) / n if n > 0 else 0.0)
        chosen_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
        n_chosen = self._gathered_sum(chosen_mask.sum().float())
        correct = self._gathered_sum((chosen_top1 & chosen_mask).sum().float())
        metrics["mean_token_accuracy"].append(correct / n_chosen if n_chosen > 0 else 0.0)

        chosen_rewards = self.accelerator.gather(out.chosen_rewards.detach())
        rejected_rewards = self.accelerator.gather(out.rejected_rewards.detach())
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        logps = (per_token_logps.detach() * mask).sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        metrics["logps/chosen"].append(self.accelerator.gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(self.accelerator.gather(rejected_logps).mean().item())

    def _log_bmc_metrics(self, mode, per_token_logps, shift_diff, loss_mask):
        """`bmc/lambda_{chosen,rejected}_mean` (mean λ over diff tokens), `bmc/diff_fraction_*`, capped fraction."""
        metrics = self._metrics[mode]
        weighted = self._loss_spec.token_weighted
        delta = self.args.delta if weighted else None
        weights = bmc_token_weights(per_token_logps, shift_diff, loss_mask, delta=delta)
        keys = ("lambda_sum", "diff_tokens", "tokens", "capped")
        rows = []
        for w, d, m in zip(weights.chunk(2), shift_diff.chunk(2), loss_mask.chunk(2)):
            stats = token_weight_stats(w, d, m, delta=delta)
            rows.append(torch.stack([stats[k].float().reshape(()) for k in keys]))
        # one gather for all the counts: a sync per metric would cost more than the metric itself
        totals = self.accelerator.gather_for_metrics(torch.stack(rows).unsqueeze(0)).sum(dim=0).tolist()
        for side, (lambda_sum, n_diff, n_tokens, _) in zip(("chosen", "rejected"), totals):
            if weighted:
                metrics[f"bmc/lambda_{side}_mean"].append(lambda_sum / n_diff if n_diff > 0 else 1.0)
            metrics[f"bmc/diff_fraction_{side}"].append(n_diff / n_tokens if n_tokens > 0 else 0.0)
        if weighted:
            capped = totals[0][3] + totals[1][3]
            diff_total = totals[0][1] + totals[1][1]
            metrics["bmc/lambda_capped_fraction"].append(capped / diff_total if diff_total > 0 else 0.0)
