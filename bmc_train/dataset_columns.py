"""What `BMCTrainer._prepare_dataset` adds to TRL's tokenized dataset: diff-mask columns fitted to the trainer's
tokenizer (kept when stored ones fit, else computed once), `use_original_chosen`, and the check that a loss type's
per-example columns are there."""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset, IterableDataset

from bmc_data.pairs.schema import (
    CHOSEN,
    CHOSEN_DIFF_MASK,
    MASK_COLUMNS,
    ORIGINAL_CHOSEN,
    REJECTED_DIFF_MASK,
    STATUS,
)
from bmc_data.tokens.diff import token_diff_masks

from .losses import get_loss_type

__all__ = ["check_batch_input_columns", "check_batch_input_values", "compute_diff_mask_columns", "use_original_chosen"]


def check_batch_input_columns(dataset: Dataset | IterableDataset, loss_type: str, dataset_name: str) -> None:
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
    check_batch_input_values(dataset, needed, dataset_name)


def check_batch_input_values(dataset: Dataset | IterableDataset, columns: list[str], dataset_name: str, *,
                             keep: Any = None) -> None:
    """Every row's per-example number is finite, checked before training (the collator would meet a bad one only
    when its batch comes up); `keep(row) -> bool` skips rows that will not be trained. A ValueError names the row."""
    from .collator import finite_number

    if not isinstance(dataset, Dataset) or not columns:
        return  # streaming: the collator checks each batch
    table = dataset.select_columns([*columns, *(c for c in (STATUS,) if c in dataset.column_names)])
    for start, batch in enumerate(table.iter(batch_size=4096)):
        for k in range(len(batch[columns[0]])):
            row = {c: v[k] for c, v in batch.items()}
            if keep is not None and not keep(row):
                continue
            for column in columns:
                if not finite_number(row[column]):
                    raise ValueError(f"the {dataset_name} dataset, row {start * 4096 + k}: `{column}` must be a finite "
                                     f"number, got {row[column]!r}")


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

    Stored masks are kept when they fit (see `_stored_masks_usable`) and `ignore_stopwords` is off; otherwise they are
    computed once from the trainer's own `chosen_ids` / `rejected_ids`, so they match its tokenization by construction.
    """
    usable = _stored_masks_usable(dataset, tokenizer)
    if usable and not ignore_stopwords:
        return dataset
    columns = dataset.column_names or []
    stale = [c for c in (CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK) if c in columns]
    if stale and usable:  # stored masks do not say whether stopwords were left unmarked
        logging.getLogger(__name__).info("the %s dataset's diff masks: recomputed with ignore_stopwords=True (stopword "
                                         "tokens never marked)", dataset_name)
        dataset = dataset.remove_columns(stale)
    elif stale:
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


def use_original_chosen(dataset: Dataset | IterableDataset, dataset_name: str) -> Dataset | IterableDataset:
    columns = dataset.column_names or list(next(iter(dataset)).keys())
    if ORIGINAL_CHOSEN not in columns:
        raise ValueError(
            f"use_original_chosen=True needs an `{ORIGINAL_CHOSEN}` column in the {dataset_name} dataset (a bridged "
            f"dataset from bmc_data has one); it has {columns}"
        )
    # The stored masks describe (ỹ_w, y_l); drop them so they are recomputed for (y_w, y_l).
    dataset = dataset.remove_columns([c for c in (CHOSEN, *MASK_COLUMNS) if c in columns])
    return dataset.rename_column(ORIGINAL_CHOSEN, CHOSEN)
