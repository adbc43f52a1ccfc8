"""Add per-token diff masks to a (bridged) preference dataset.

`add_diff_masks` tokenizes every pair exactly as TRL 1.16 `DPOTrainer` will (`bmc_data.tokens.tokenization.tokenize_pair`,
a batch at a time with `tokenize_pairs_batched`) and stores one bool per completion token: `chosen_diff_mask[i]` is
True when the i-th token of the trainer's `chosen_ids` differs from the rejected response under an optimal
Levenshtein alignment, and likewise for `rejected_diff_mask` (`bmc_data.tokens.diff.token_diff_masks`). The masks are
computed for every row, whatever its `bmc_status`: DPO-MC uses them on the original (unbridged) pairs too.

The tokenizer's name and fingerprint are stored with the masks; `masks_fit` tells whether they fit a tokenizer.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, Features, List, Value

from bmc_data.pairs.schema import (
    CHOSEN,
    CHOSEN_DIFF_MASK,
    MASK_COLUMNS,
    MASK_TOKENIZER,
    MASK_TOKENIZER_HASH,
    PROMPT,
    REJECTED,
    REJECTED_DIFF_MASK,
)

from .diff import token_diff_masks
from .stopwords import stopword_token_ids
from .tokenization import (
    tokenize_pair,
    tokenize_pairs_batched,
    tokenizer_fingerprint,
    tokenizer_name,
)

__all__ = ["add_diff_masks", "check_masks", "masks_fit"]

_REQUIRED = (PROMPT, CHOSEN, REJECTED)


def _require_columns(dataset: Dataset, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{what}: dataset is missing column(s) {missing}; it has {dataset.column_names}"
        )


def _tokenize_rows(
    batch: dict[str, list[Any]], indices: list[int], tokenizer: Any
) -> list[dict[str, list[int]]]:
    tools_col = batch.get("tools")
    kwargs_col = batch.get("chat_template_kwargs")
    for k, index in enumerate(indices):
        for field in _REQUIRED:
            value = batch[field][k]
            if value is None or (isinstance(value, (str, list)) and len(value) == 0):
                raise ValueError(f"row {index}: field {field!r} is empty; cannot build diff masks")
    try:
        return tokenize_pairs_batched(
            tokenizer, batch[PROMPT], batch[CHOSEN], batch[REJECTED], tools=tools_col, chat_template_kwargs=kwargs_col
        )
    except Exception:  # redo row by row below, to name the row that fails
        pass
    rows = []
    for k, index in enumerate(indices):
        try:
            rows.append(
                tokenize_pair(
                    tokenizer,
                    batch[PROMPT][k],
                    batch[CHOSEN][k],
                    batch[REJECTED][k],
                    tools=tools_col[k] if tools_col is not None else None,
                    chat_template_kwargs=kwargs_col[k] if kwargs_col is not None else None,
                )
            )
        except Exception as exc:  # name the row: a bare tokenizer error in a 60k-row map is hard to trace
            raise ValueError(f"row {index}: could not tokenize the pair as DPOTrainer does: {exc}") from exc
    return rows


def _mask_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    tokenizer: Any,
    ignore_token_ids: frozenset[int] | None,
    name: str,
    fingerprint: str,
) -> dict[str, list[Any]]:
    # Module-level (not a closure) so that `num_proc > 1` can pickle it.
    chosen_masks: list[list[bool]] = []
    rejected_masks: list[list[bool]] = []
    for ids in _tokenize_rows(batch, indices, tokenizer):
        chosen_mask, rejected_mask = token_diff_masks(
            ids["chosen_ids"], ids["rejected_ids"], ignore_token_ids=ignore_token_ids
        )
        chosen_masks.append(chosen_mask)
        rejected_masks.append(rejected_mask)
    n = len(indices)
    return {
        CHOSEN_DIFF_MASK: chosen_masks,
        REJECTED_DIFF_MASK: rejected_masks,
        MASK_TOKENIZER: [name] * n,
        MASK_TOKENIZER_HASH: [fingerprint] * n,
    }


def add_diff_masks(
    dataset: Dataset,
    tokenizer: Any,
    *,
    ignore_stopwords: bool = False,
    num_proc: int | None = None,
    batch_size: int = 256,
) -> Dataset:
    """Add `chosen_diff_mask`, `rejected_diff_mask`, `bmc_mask_tokenizer` and `bmc_mask_tokenizer_hash`.

    Args:
        dataset: A dataset with `prompt`, `chosen`, `rejected` columns, as text or as TRL conversational messages
            (optional `tools` / `chat_template_kwargs` columns are passed to the chat template as TRL does).
        tokenizer: The `processing_class` the DPO trainer will use.
        ignore_stopwords: Never mark stopword tokens (`bmc_data.tokens.stopwords.stopword_token_ids`), as the official
            BMC code does. Off by default: the paper describes plain token-level differences.
        num_proc: Worker processes for `Dataset.map`. `datasets` turns the Rust tokenizer's own threads off in the
            workers (`TOKENIZERS_PARALLELISM=false`); without workers a fast tokenizer encodes each batch on all
            cores itself. On 2 cores both take about the same wall time (tokenization is ~95 % of the work);
            `num_proc=2` uses more CPU time (see docs/masks.md).
        batch_size: Rows per `map` batch (and per batched tokenizer call).

    Returns:
        The dataset with the four mask columns (replaced if already present). Each mask has exactly one entry per
        token of the trainer's `chosen_ids` / `rejected_ids` (before truncation).
    """
    _require_columns(dataset, _REQUIRED, "add_diff_masks")
    ignore = frozenset(stopword_token_ids(tokenizer)) if ignore_stopwords else None
    features = Features({k: v for k, v in dataset.features.items() if k not in MASK_COLUMNS})
    features[CHOSEN_DIFF_MASK] = List(Value("bool"))
    features[REJECTED_DIFF_MASK] = List(Value("bool"))
    features[MASK_TOKENIZER] = Value("string")
    features[MASK_TOKENIZER_HASH] = Value("string")
    if len(dataset) == 0:  # map() adds no columns to an empty dataset; keep the schema so masks_fit holds
        empty = dataset.remove_columns([c for c in MASK_COLUMNS if c in dataset.column_names])
        for column in MASK_COLUMNS:
            empty = empty.add_column(column, [], feature=features[column])
        return empty
    return dataset.map(
        _mask_batch,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        features=features,
        fn_kwargs={
            "tokenizer": tokenizer,
            "ignore_token_ids": ignore,
            "name": tokenizer_name(tokenizer),
            "fingerprint": tokenizer_fingerprint(tokenizer),
        },
        desc="Computing BMC diff masks",
    )


def check_masks(dataset: Dataset, tokenizer: Any) -> None:
    """Raise a ValueError saying why the dataset's masks do not fit `tokenizer` (missing column, other tokenizer)."""
    _require_columns(dataset, MASK_COLUMNS, "diff masks")
    expected = tokenizer_fingerprint(tokenizer)
    hashes = dataset.unique(MASK_TOKENIZER_HASH)
    wrong = [h for h in hashes if h != expected]
    if wrong:
        first = next(i for i, h in enumerate(dataset[MASK_TOKENIZER_HASH]) if h != expected)
        names = dataset.unique(MASK_TOKENIZER)
        raise ValueError(
            f"row {first}: diff masks were built with tokenizer {names} (hash {wrong[0]}), not with "
            f"{tokenizer_name(tokenizer)!r} (hash {expected}); recompute them with add_diff_masks(dataset, tokenizer)"
        )


def masks_fit(dataset: Dataset, tokenizer: Any) -> bool:
    """Whether the dataset has all mask columns and every row's tokenizer hash equals `tokenizer`'s fingerprint."""
    try:
        check_masks(dataset, tokenizer)
    except ValueError:
        return False
    return True
