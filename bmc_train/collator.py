"""`DataCollatorForBMC`: TRL's preference collator plus the BMC diff mask, per-example numbers, precomputed
per-token reference log-probs and, under `padding_free`, the packed layout."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from bmc_data.pairs.schema import CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK
from bmc_data.tokens.ref_logps import (
    REF_CHOSEN_TOKEN_LOGPS,
    REF_REJECTED_TOKEN_LOGPS,
    scatter_completion_logps,
)

from .packing import pack_batch
from .reference import REF_PER_TOKEN

__all__ = ["DIFF_MASK", "DataCollatorForBMC"]

DIFF_MASK = "diff_mask"  # the collated (2B, L) mask; not a model input


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

    With `padding_free=True` the batch is then packed into one row without padding (`bmc_train.packing`):
    `input_ids`, `completion_mask`, `diff_mask` and `ref_per_token_logps` follow the packed layout, with
    `position_ids` and `seq_lengths` instead of `attention_mask`.
    """

    float_columns: tuple[str, ...] = ()
    padding_free: bool = False

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = self._padded(examples)
        if not self.padding_free:
            return output
        return pack_batch(output, token_keys=("input_ids", "completion_mask", DIFF_MASK), shifted_keys=(REF_PER_TOKEN,),
                          pad_token_id=self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)

    def _padded(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
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


def finite_number(value: Any) -> bool:
    """What a per-example float column (MADPO's `reward_margin`) must hold in every row."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _float_column(examples: list[dict[str, Any]], column: str) -> torch.Tensor:
    values = []
    for i, example in enumerate(examples):
        value = example.get(column)
        if not finite_number(value):
            raise ValueError(f"batch example {i}: `{column}` must be a finite number, got {value!r}")
        values.append(float(value))
    return torch.tensor(values, dtype=torch.float32)
