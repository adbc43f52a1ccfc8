"""Padding-free batches (`padding_free=True`): the `[chosen; rejected]` rows of a collated batch packed into one
row without padding, and the model's per-token outputs unpacked back into rows.

Layout (TRL's padding-free layout, as its SFT collator builds it): `input_ids` `(1, N)` with N the number of real
tokens of the batch, `position_ids` `(1, N)` restarting at 0 for each sequence, and no `attention_mask`, so that
transformers attends within each sequence only (flash-attention kernels read the boundaries from `position_ids`; SDPA
and eager get a block-diagonal causal mask built from them). `completion_mask` and `diff_mask` are packed the same
way, per-token reference log-probs (`(R, L−1)`, shifted) at the position that scores them, and `seq_lengths` `(R,)`
keeps each row's length. The label at each sequence start is never scored, so no position predicts across a boundary.

Only the model's forward runs packed. Its shifted per-token outputs `(1, N−1)` are scattered back into `(R, W−1)`
rows (`unpack_shifted`, differentiable) and the masks into `(R, W)` (`unpack_tokens`), W the longest row, so the
objectives, λ, the metrics and γ-PO's queue see exactly the rows of the padded run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["SEQ_LENGTHS", "pack_batch", "unpack_shifted", "unpack_tokens"]

SEQ_LENGTHS = "seq_lengths"  # (R,) real tokens per row; not a model input


def pack_batch(batch: dict[str, Any], *, token_keys: Iterable[str], shifted_keys: Iterable[str] = (),
               pad_token_id: int = 0, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """The padded, right-padded batch `batch` (with `attention_mask`) in the packed layout (see the module doc)."""
    keep = batch["attention_mask"].bool()
    lengths = keep.sum(dim=1)
    out = {k: v for k, v in batch.items() if k != "attention_mask"}
    for key in token_keys:
        if key in batch:
            out[key] = batch[key][keep].unsqueeze(0)
    for key in shifted_keys:  # (R, L−1): the value at t scores token t + 1; a zero column keeps the boundary unscored
        if key in batch:
            value = batch[key]
            value = torch.cat([value, value.new_zeros(value.shape[0], keep.shape[1] - value.shape[1])], dim=1)
            out[key] = value[keep][:-1].unsqueeze(0)
    out["position_ids"] = torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0)
    out[SEQ_LENGTHS] = lengths
    if pad_to_multiple_of and out["input_ids"].shape[1] % pad_to_multiple_of:
        extra = pad_to_multiple_of - out["input_ids"].shape[1] % pad_to_multiple_of
        for key in (*token_keys, "position_ids"):
            if key in out:
                fill = pad_token_id if key == "input_ids" else 0
                out[key] = torch.cat([out[key], out[key].new_full((1, extra), fill)], dim=1)
        for key in shifted_keys:
            if key in out:
                out[key] = torch.cat([out[key], out[key].new_zeros(1, extra)], dim=1)
    return out


def _row_mask(lengths: torch.Tensor) -> torch.Tensor:
    width = int(lengths.max())
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def unpack_tokens(packed: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`(1, N[+pad])` per-token values -> `(R, W)` rows, zero past each row's length."""
    mask = _row_mask(lengths)
    flat = packed.reshape(-1)[: int(lengths.sum())]
    return packed.new_zeros(mask.shape).masked_scatter(mask, flat)


def unpack_shifted(packed: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`(1, N−1[+pad])` shifted per-token outputs (position t scores token t + 1) -> `(R, W−1)` rows, as the padded
    forward would give them; differentiable (gradients flow back to `packed`)."""
    total = int(lengths.sum())
    flat = packed.reshape(-1)[: total - 1]
    flat = torch.cat([flat, flat.new_zeros(1)])  # the last row's boundary position
    mask = _row_mask(lengths)
    return flat.new_zeros(mask.shape).masked_scatter(mask, flat)[:, :-1]
