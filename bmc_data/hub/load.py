"""Load a bridged dataset back from a Hub repo id or a local `save_bridged` folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets

from bmc_data.pairs import schema

from .card import CONFIGS
from .facts import tokenizer_identity

logger = logging.getLogger(__name__)


def _is_local(repo_or_path: str | Path) -> bool:
    return Path(repo_or_path).expanduser().is_dir()


def load_bridged(
    repo_or_path: str | Path,
    tokenizer: Any = None,
    split: str = "train",
    config: str = "default",
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Load one split of one config of a bridged dataset from a Hub repo id or a local `save_bridged` folder.

    Checks the bridged columns are there (a clear error lists what is missing). With a `tokenizer` whose
    fingerprint differs from the one the stored masks were built with (or without stored masks), the masks are
    recomputed with `bmc_data.tokens.masks.add_diff_masks` and a log line says so.
    """
    path = str(Path(repo_or_path).expanduser()) if _is_local(repo_or_path) else str(repo_or_path)
    kwargs: dict[str, Any] = {"split": split}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    if not _is_local(repo_or_path):
        kwargs.update(revision=revision, token=token)
    try:
        dataset = datasets.load_dataset(path, config, **kwargs)
    except ValueError as err:
        if "BuilderConfig" in str(err) or "not found" in str(err).lower():
            raise ValueError(f"{repo_or_path}: config {config!r} / split {split!r} not found "
                             f"(a bridged dataset has configs {list(CONFIGS)}): {err}") from err
        raise
    missing = [c for c in schema.BRIDGED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{repo_or_path} (config {config!r}, split {split!r}) is not a bridged dataset: missing column(s) "
            f"{missing}. Expected {list(schema.BRIDGED_COLUMNS)} (+ optional {list(schema.MASK_COLUMNS)}); "
            f"found {dataset.column_names}."
        )
    if tokenizer is not None:
        from bmc_data.tokens.masks import add_diff_masks, masks_fit

        if not masks_fit(dataset, tokenizer):
            from bmc_data.tokens.tokenization import tokenizer_name

            had = tokenizer_identity(dataset)
            logger.warning("recomputing diff masks of %s for tokenizer %r (stored: %s)", repo_or_path,
                           tokenizer_name(tokenizer), had["name"] if had else "none")
            dataset = add_diff_masks(dataset, tokenizer)
    return dataset
