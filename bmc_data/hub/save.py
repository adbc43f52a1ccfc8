"""Save a bridged dataset as a Hub-ready folder (`bmc_data.hub.push` uploads it).

Folder layout (what `save_bridged` writes and `push_bridged` uploads):

    README.md                                   dataset card; its YAML declares the configs below
    bmc_manifest.json                           machine-readable provenance: counts, template, provider, tokenizer
    bmc_files.json                              the files bmc wrote, with hashes (`bmc_data.outputs`)
    data/default/train-00000-of-00001.parquet   bridged pairs (what a trainer uses)
    data/default/test-00000-of-00001.parquet    (with a test split)
    data/filtered/train-00000-of-00001.parquet  pairs the editor judged already fine
    data/failed/train-00000-of-00001.parquet    pairs without a usable pseudo-winner
    figures/*.png                               edit-distance plots shown in the card

A rerun replaces and removes only what an earlier run wrote (and only while unchanged); a file bmc did not write
under these paths is refused unless `overwrite=True` (`bmc_data.outputs` holds that rule).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from bmc_data.errors import UsageError
from bmc_data.outputs import OutputFolder
from bmc_data.pairs import schema

from .card import (
    CONFIG_STATUS,
    CONFIGS,
    DEFAULT_LICENSE,
    render_dataset_card,
    safe_provider_info,
)
from .facts import (
    column_values,
    find_templates,
    provider_identity,
    status_counts,
    tokenizer_identity,
    top_reasons,
)

logger = logging.getLogger(__name__)

MANIFEST = "bmc_manifest.json"
WRITER = "save_bridged"
#: the paths save_bridged writes; any file there that bmc did not write is in the way
SCOPE = ("README.md", MANIFEST, "data/", "figures/")
DEFAULT_MAX_SHARD_SIZE = 500 * 1024 * 1024  # bytes of in-memory Arrow data per parquet shard (like push_to_hub)


def _as_splits(dataset: datasets.Dataset | datasets.DatasetDict | Mapping[str, datasets.Dataset]) -> dict[str, datasets.Dataset]:
    if isinstance(dataset, datasets.Dataset):
        return {"train": dataset}
    if isinstance(dataset, Mapping):
        return dict(dataset)
    raise TypeError(f"expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")


def _require_columns(dataset: datasets.Dataset, where: str) -> None:
    missing = [c for c in schema.BRIDGED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{where} is missing column(s) {missing}; a bridged dataset needs {list(schema.BRIDGED_COLUMNS)} "
            f"(it has {dataset.column_names}). Produce it with bmc_data.bridging.bridge.bridge_dataset."
        )


def check_test_size(test_size: float | None, rows: int, counted: str, *, option: str = "test_size {} (--test-size)",
                    hint: str = "") -> None:
    """A test split of a row count must leave a row to train on (a fraction always does). `rows`: what the split
    is drawn from, or at most that (before bridging: the source's pairs); `counted` says what they are."""
    if isinstance(test_size, int) and not isinstance(test_size, bool) and test_size >= rows:
        raise UsageError(f"{option.format(test_size)} leaves no training row: {counted}; use fewer, or a fraction "
                         f"such as 0.1{hint}")


def check_bridged_test_size(test_size: float | None, bridged: int) -> None:
    """`check_test_size` on the bridged pairs, which the test split is drawn from (with fewer than 2 there is no
    split: the one row trains)."""
    if bridged >= 2:
        check_test_size(test_size, bridged, f"only {bridged} pair(s) were bridged",
                        hint=" (the LLM replies are cached: a rerun pays nothing again)")


def partition_by_status(splits: Mapping[str, datasets.Dataset]) -> dict[str, dict[str, datasets.Dataset]]:
    """config -> split -> rows: `default` = bridged, `filtered`, `failed`.

    `default` always has every split; `filtered` / `failed` only the splits where they have rows, and no entry at
    all when they have none (`datasets` cannot load a declared split without rows).
    """
    parts: dict[str, dict[str, datasets.Dataset]] = {}
    for config in CONFIGS:
        status = CONFIG_STATUS[config]
        for split, ds in splits.items():
            statuses = ds[schema.STATUS]
            # flatten_indices: a real table, so its nbytes (shard sizes, card num_bytes) is this subset's own
            rows = ds.select([i for i, s in enumerate(statuses) if s == status]).flatten_indices()
            if config == "default" or len(rows):
                parts.setdefault(config, {})[split] = rows
    if not any(len(rows) for rows in parts["default"].values()):
        logger.warning("no bridged rows: the default config is empty and will not load with datasets")
    return parts


def _write_shards(ds: datasets.Dataset, out: OutputFolder, config: str, split: str, max_shard_size: int) -> list[str]:
    nbytes = ds.data.nbytes if len(ds) else 0
    num_shards = max(1, min(len(ds), math.ceil(nbytes / max_shard_size))) if len(ds) else 1
    paths = []
    for index in range(num_shards):
        shard = ds.shard(num_shards, index, contiguous=True) if num_shards > 1 else ds
        rel = f"data/{config}/{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(str(out.path(rel)))
        paths.append(rel)
    return paths


def _compute_stats(rows: datasets.Dataset, figures: Path, tokenizer: Any) -> tuple[Any, list[Path]]:
    """Edit-distance table and plots of `rows` (`card_edit_distances`); (None, []) when there are none."""
    from bmc_data.tokens.stats import add_edit_distance_stats

    if not len(rows):
        return None, []
    return card_edit_distances(add_edit_distance_stats(rows, tokenizer=tokenizer), figures)


def card_edit_distances(with_stats: datasets.Dataset, figures: Path) -> tuple[Any, list[Path]]:
    """The card's edit-distance table and its figures (written into `figures`) from rows that already carry
    `add_edit_distance_stats`' columns (all statuses or only the bridged: both summarise the bridged rows);
    (None, []) when no row is bridged. What `save_bridged` takes as `stats_table` / `plot_paths`."""
    from bmc_data.tokens.stats import plot_edit_distances, summarize_edit_distances

    table = summarize_edit_distances(with_stats)
    if not table.attrs["n_bridged"]:
        return None, []
    figures.mkdir(parents=True, exist_ok=True)
    return table, [Path(p) for p in plot_edit_distances(with_stats, figures)]


def _versions() -> dict[str, str]:
    import huggingface_hub

    out = {"python": platform.python_version(), "datasets": datasets.__version__,
           "huggingface_hub": huggingface_hub.__version__}
    try:
        from importlib.metadata import version

        out["bmc"] = version("bmc")
    except Exception:  # not installed as a distribution (running from a checkout)
        out["bmc"] = "unknown"
    return out


def save_bridged(
    dataset: datasets.Dataset | datasets.DatasetDict,
    out_dir: str | Path,
    *,
    repo_id: str | None = None,
    source: str | None = None,
    template: Any = None,
    provider_info: Mapping[str, Any] | None = None,
    license: str = DEFAULT_LICENSE,
    pretty_name: str | None = None,
    test_size: float | int | None = None,
    seed: int = 42,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    stats_table: Any = None,
    plot_paths: Sequence[str | Path] | None = None,
    stats_tokenizer: Any = None,
    stats: bool = True,
    extra_manifest: Mapping[str, Any] | None = None,
    report_path: str | None = None,
    overwrite: bool = False,
    review: Mapping[str, int] | None = None,
) -> Path:
    """Write a bridged dataset as a Hub-ready folder (parquet shards, README.md card, figures, manifest).

    Args:
        dataset: the output of `bridge_dataset` (all statuses; masks optional), or a `DatasetDict` whose splits
            are kept as they are.
        out_dir: the folder to write. Files an earlier save wrote there (listed in bmc_files.json, unchanged) are
            replaced or removed; anything else is never deleted. A file bmc did not write at README.md,
            bmc_manifest.json or under data/ or figures/ is an `OutputConflict` (exit 2), before anything is written.
        overwrite: replace such files where this save writes the same path instead (others are left in place).
        repo_id: the Hub id the card's snippets name (default: the folder name).
        source: where the pairs came from, for the card (e.g. "HuggingFaceH4/ultrafeedback_binarized:train_prefs").
        template: the prompt template(s) used; default: the bundled ones named in `bmc_prompt_version`.
        provider_info: extra provider identity (e.g. base_url); key-like fields are never written.
        test_size: split the bridged rows into train/test (fraction or row count) with `seed`.
        max_shard_size: bytes of Arrow data per parquet shard.
        stats_table / plot_paths: precomputed edit-distance summary and PNGs; computed with `bmc_data.tokens.stats`
            when not given.
        stats_tokenizer: tokenizer for token-level edit distances (default: whatever `bmc_data.tokens.stats` uses).
        stats: compute edit-distance statistics and plots at all (False: a card without them, faster).
        report_path: folder-relative review page (`bmc_data.report.render_report`) the card links to.
        review: counts of a human review applied with `bmc_data.apply_review` (`Review.counts()`), for the card.

    Returns:
        `out_dir` as a Path.
    """
    out = Path(out_dir)
    splits = _as_splits(dataset)
    if not splits:
        raise ValueError("save_bridged got an empty DatasetDict")
    for split, ds in splits.items():
        _require_columns(ds, f"split {split!r}")
    everything = datasets.concatenate_datasets(list(splits.values())) if len(splits) > 1 else next(iter(splits.values()))
    repo_id = repo_id or out.resolve().name

    parts = partition_by_status(splits)
    if test_size and set(splits) == {"train"}:
        bridged = parts["default"]["train"]
        check_bridged_test_size(test_size, len(bridged))
        if len(bridged) >= 2:
            divided = bridged.train_test_split(test_size=test_size, seed=seed)
            parts["default"] = {"train": divided["train"].flatten_indices(), "test": divided["test"].flatten_indices()}
        else:
            logger.warning("only %d bridged row(s): no test split written", len(bridged))

    # Given plots may already live in out/figures, which is about to be replaced: read them first.
    given_plots = [(Path(p).name, Path(p).read_bytes()) for p in plot_paths or ()] if stats else []

    # plots the caller drew straight into out/figures are handed over, not in the way
    handed = [f"figures/{Path(p).name}" for p in plot_paths or ()
              if Path(p).resolve() == (out / "figures" / Path(p).name).resolve()]
    with OutputFolder(out, WRITER, SCOPE, overwrite=overwrite, handed=handed) as folder:
        files: dict[str, dict[str, list[str]]] = {}
        for config, config_splits in parts.items():
            for split, rows in config_splits.items():
                files.setdefault(config, {})[split] = _write_shards(rows, folder, config, split, max_shard_size)

        if not stats:
            stats_table = None
        elif plot_paths is None and stats_table is None:
            bridged_rows = datasets.concatenate_datasets(list(parts["default"].values()))
            with tempfile.TemporaryDirectory() as scratch:  # drawn aside, then written like every other file
                stats_table, drawn = _compute_stats(bridged_rows, Path(scratch), stats_tokenizer)
                given_plots = [(p.name, p.read_bytes()) for p in drawn]
        plot_rel = []
        for name, blob in given_plots:
            folder.write_bytes(f"figures/{name}", blob)
            plot_rel.append(f"figures/{name}")
        _write_card_and_manifest(
            folder, everything, parts, files, plot_rel, stats_table, repo_id=repo_id, source=source,
            template=template, provider_info=provider_info, license=license, pretty_name=pretty_name,
            test_size=test_size, seed=seed, extra_manifest=extra_manifest, report_path=report_path, review=review)
    logger.info("saved %d row(s) to %s", len(everything), out)
    return out


def _write_card_and_manifest(folder: OutputFolder, everything: datasets.Dataset, parts: Any, files: Any,
                             plot_rel: list[str], stats_table: Any, *, repo_id: str, source: str | None,
                             template: Any, provider_info: Mapping[str, Any] | None, license: str,
                             pretty_name: str | None, test_size: Any, seed: int,
                             extra_manifest: Mapping[str, Any] | None, report_path: str | None,
                             review: Mapping[str, int] | None = None) -> None:
    templates = template if template is not None else (find_templates(everything) or None)
    provider = {**provider_identity(everything), **safe_provider_info(provider_info)}
    tokenizer_info = tokenizer_identity(everything)
    counts, reasons = status_counts(everything), top_reasons(everything)

    card = render_dataset_card(
        parts, repo_id=repo_id, template=templates, provider_info=provider, tokenizer_info=tokenizer_info,
        stats_table=stats_table, plot_paths=plot_rel, status_counts=counts, reasons=reasons, source=source,
        license=license, pretty_name=pretty_name, features=everything.features, report_path=report_path,
        review=review,
    )
    card.save(folder.path("README.md"))

    template_list = templates if isinstance(templates, (list, tuple)) else ([templates] if templates else [])
    manifest = {
        # No timestamp: saving the same rows twice must give the same bytes, so a re-push is a no-op.
        "format": "bmc-bridged/1",
        "repo_id": repo_id,
        "source": source,
        "rows": len(everything),
        "status_counts": counts,
        "top_reasons": {k: [list(item) for item in v] for k, v in reasons.items()},
        "configs": {c: {s: {"rows": len(rows), "files": files[c][s]} for s, rows in sp.items()}
                    for c, sp in parts.items()},
        "prompt_versions": column_values(everything, schema.PROMPT_VERSION),
        "templates": [{"name": getattr(t, "name", None), "version": t.version, "sha256": t.sha256}
                      for t in template_list],
        "provider": provider,
        "mask_tokenizer": tokenizer_info,
        "has_masks": all(c in everything.column_names for c in schema.MASK_COLUMNS),
        "columns": everything.column_names,
        "figures": plot_rel,
        "test_size": test_size,
        "seed": seed,
        "versions": _versions(),
        **dict(extra_manifest or {}),
    }
    from bmc_data.redaction import redact

    folder.write_text(MANIFEST, redact(json.dumps(manifest, indent=2, ensure_ascii=False, default=str)) + "\n")


