"""Save a bridged dataset as a Hub-ready folder, push it in one commit, and load it back.

Folder layout (what `save_bridged` writes and `push_bridged` uploads):

    README.md                                   dataset card; its YAML declares the configs below
    bmc_manifest.json                           machine-readable provenance: counts, template, provider, tokenizer
    data/default/train-00000-of-00001.parquet   bridged pairs (what a trainer uses)
    data/default/test-00000-of-00001.parquet    (with a test split)
    data/filtered/train-00000-of-00001.parquet  pairs the editor judged already fine
    data/failed/train-00000-of-00001.parquet    pairs without a usable pseudo-winner
    figures/*.png                               edit-distance plots shown in the card
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets

from . import schema
from .card import CONFIG_STATUS, CONFIGS, DEFAULT_LICENSE, render_dataset_card, safe_provider_info

logger = logging.getLogger(__name__)

MANIFEST = "bmc_manifest.json"
DEFAULT_MAX_SHARD_SIZE = 500 * 1024 * 1024  # bytes of in-memory Arrow data per parquet shard (like push_to_hub)
# remote files there that the folder no longer has are deleted on push (report_files/: the review page's data)
MANAGED_PREFIXES = ("data/", "figures/", "report_files/")
TOP_REASONS = 5


# --- summaries from the columns ----------------------------------------------------------------------------
def status_counts(dataset: datasets.Dataset) -> dict[str, int]:
    """Rows per `bmc_status`, every status listed (0 when absent)."""
    counts = Counter(dataset[schema.STATUS]) if len(dataset) else Counter()
    out = {s.value: int(counts.get(s.value, 0)) for s in schema.Status}
    out.update({k: int(v) for k, v in counts.items() if k not in out})
    return out


def top_reasons(dataset: datasets.Dataset, k: int = TOP_REASONS) -> dict[str, list[tuple[str, int]]]:
    """The `k` most frequent reasons (`schema.reason_group`) for each non-bridged status."""
    out: dict[str, list[tuple[str, int]]] = {}
    if not len(dataset):
        return out
    pairs = Counter(zip(dataset[schema.STATUS], map(schema.reason_group, dataset[schema.REASON])))
    for status in (schema.Status.FILTERED.value, schema.Status.FAILED.value):
        counter = Counter({reason: n for (s, reason), n in pairs.items() if s == status and reason})
        if counter:
            out[status] = [(reason[:200], n) for reason, n in counter.most_common(k)]
    return out


def _unique(dataset: datasets.Dataset, column: str) -> list[str]:
    if column not in dataset.column_names or not len(dataset):
        return []
    return sorted(str(v) for v in set(dataset[column]) if v not in (None, ""))


def provider_identity(dataset: datasets.Dataset) -> dict[str, str]:
    providers, models = _unique(dataset, schema.PROVIDER), _unique(dataset, schema.MODEL)
    out = {}
    if providers:
        out["provider"] = ", ".join(providers)
    if models:
        out["model"] = ", ".join(models)
    return out


def tokenizer_identity(dataset: datasets.Dataset) -> dict[str, str] | None:
    names, hashes = _unique(dataset, schema.MASK_TOKENIZER), _unique(dataset, schema.MASK_TOKENIZER_HASH)
    if not names and not hashes:
        return None
    return {"name": ", ".join(names), "hash": ", ".join(hashes)}


def find_templates(dataset: datasets.Dataset) -> list[Any]:
    """The bundled prompt templates whose version id appears in `bmc_prompt_version`."""
    from .templates import available_templates

    versions = set(_unique(dataset, schema.PROMPT_VERSION))
    return [t for t in available_templates() if t.version_id in versions]


# --- save ---------------------------------------------------------------------------------------------------
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
            f"(it has {dataset.column_names}). Produce it with bmc_data.bridge.bridge_dataset."
        )


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


def _write_shards(ds: datasets.Dataset, folder: Path, split: str, max_shard_size: int) -> list[Path]:
    nbytes = ds.data.nbytes if len(ds) else 0
    num_shards = max(1, min(len(ds), math.ceil(nbytes / max_shard_size))) if len(ds) else 1
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_shards):
        shard = ds.shard(num_shards, index, contiguous=True) if num_shards > 1 else ds
        path = folder / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(str(path))
        paths.append(path)
    return paths


def _compute_stats(rows: datasets.Dataset, figures: Path, tokenizer: Any) -> tuple[Any, list[Path]]:
    """Edit-distance table and plots from bmc_data.stats; (None, []) when it is unavailable or fails."""
    try:
        from .stats import add_edit_distance_stats, plot_edit_distances, summarize_edit_distances
    except ImportError:
        logger.info("bmc_data.stats is not available: the card will have no edit-distance statistics")
        return None, []
    if not len(rows):
        return None, []
    with_stats = add_edit_distance_stats(rows, tokenizer=tokenizer)
    table = summarize_edit_distances(with_stats)
    figures.mkdir(parents=True, exist_ok=True)
    plots = [Path(p) for p in plot_edit_distances(with_stats, figures)]
    return table, plots


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
) -> Path:
    """Write a bridged dataset as a Hub-ready folder (parquet shards, README.md card, figures, manifest).

    Args:
        dataset: the output of `bridge_dataset` (all statuses; masks optional), or a `DatasetDict` whose splits
            are kept as they are.
        out_dir: the folder to write; files this function manages (data/, figures/, README.md, manifest) are
            replaced, anything else there is left alone (e.g. a bridge cache).
        repo_id: the Hub id the card's snippets name (default: the folder name).
        source: where the pairs came from, for the card (e.g. "HuggingFaceH4/ultrafeedback_binarized:train_prefs").
        template: the prompt template(s) used; default: the bundled ones named in `bmc_prompt_version`.
        provider_info: extra provider identity (e.g. base_url); key-like fields are never written.
        test_size: split the bridged rows into train/test (fraction or row count) with `seed`.
        max_shard_size: bytes of Arrow data per parquet shard.
        stats_table / plot_paths: precomputed edit-distance summary and PNGs; computed with `bmc_data.stats`
            when not given.
        stats_tokenizer: tokenizer for token-level edit distances (default: whatever `bmc_data.stats` uses).
        stats: compute edit-distance statistics and plots at all (False: a card without them, faster).
        report_path: folder-relative review page (`bmc_data.report.render_report`) the card links to.

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
        if len(bridged) >= 2:
            divided = bridged.train_test_split(test_size=test_size, seed=seed)
            parts["default"] = {"train": divided["train"].flatten_indices(), "test": divided["test"].flatten_indices()}
        else:
            logger.warning("only %d bridged row(s): no test split written", len(bridged))

    # Given plots may already live in out/figures, which is about to be replaced: read them first.
    given_plots = [(Path(p).name, Path(p).read_bytes()) for p in plot_paths or ()] if stats else []

    # Replace what we manage, keep the rest of the folder.
    out.mkdir(parents=True, exist_ok=True)
    for managed in ("data", "figures"):
        shutil.rmtree(out / managed, ignore_errors=True)
    files: dict[str, dict[str, list[str]]] = {}
    for config, config_splits in parts.items():
        for split, rows in config_splits.items():
            paths = _write_shards(rows, out / "data" / config, split, max_shard_size)
            files.setdefault(config, {})[split] = [p.relative_to(out).as_posix() for p in paths]

    figures = out / "figures"
    plots: list[Path] = []
    if not stats:
        stats_table = None
    elif plot_paths is None and stats_table is None:
        bridged_rows = datasets.concatenate_datasets(list(parts["default"].values()))
        stats_table, plots = _compute_stats(bridged_rows, figures, stats_tokenizer)
    else:
        figures.mkdir(parents=True, exist_ok=True)
        for name, blob in given_plots:
            (figures / name).write_bytes(blob)
            plots.append(figures / name)
    plot_rel = [p.relative_to(out).as_posix() for p in plots]
    if figures.is_dir() and not any(figures.iterdir()):
        figures.rmdir()

    templates = template if template is not None else (find_templates(everything) or None)
    provider = {**provider_identity(everything), **safe_provider_info(provider_info)}
    tokenizer_info = tokenizer_identity(everything)
    counts, reasons = status_counts(everything), top_reasons(everything)

    card = render_dataset_card(
        parts, repo_id=repo_id, template=templates, provider_info=provider, tokenizer_info=tokenizer_info,
        stats_table=stats_table, plot_paths=plot_rel, status_counts=counts, reasons=reasons, source=source,
        license=license, pretty_name=pretty_name, features=everything.features, report_path=report_path,
    )
    card.save(out / "README.md")

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
        "prompt_versions": _unique(everything, schema.PROMPT_VERSION),
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
    from .redaction import redact

    (out / MANIFEST).write_text(redact(json.dumps(manifest, indent=2, ensure_ascii=False, default=str)) + "\n")
    logger.info("saved %d row(s) to %s", len(everything), out)
    return out


# --- push ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit_oid: str
    commit_url: str
    created_commit: bool  # False when the remote already had exactly this content
    uploaded: tuple[str, ...]  # paths added or changed by the commit
    deleted: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\x00" % path.stat().st_size)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def local_files(folder: str | Path) -> dict[str, Path]:
    """Files `push_bridged` uploads: everything in the folder except hidden files and the bridge cache."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in rel.split("/")) or rel.startswith("cache/"):
            continue
        out[rel] = path
    return out


def _unchanged(local: Path, remote: Any) -> bool:
    if remote.size != local.stat().st_size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == _sha256(local)
    return remote.blob_id == _git_blob_sha1(local)


def push_bridged(
    out_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload BMC bridged dataset",
    commit_description: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Push a `save_bridged` folder to the Hub dataset repo `repo_id` in a single commit.

    The repo is created if needed. Files identical to the remote ones are not re-uploaded, remote files under
    data/ and figures/ that the folder no longer has are deleted in the same commit, and when nothing changed no
    commit is made: the result names the existing head commit (`created_commit=False`).

    The token comes from `token`, else `HF_TOKEN`, else the saved `hf auth login`; it is never printed or logged.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.hf_api import RepoFile

    folder = Path(out_dir)
    if not (folder / "README.md").is_file() or not (folder / "data").is_dir():
        raise FileNotFoundError(f"{folder} is not a save_bridged folder (README.md and data/ expected)")
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id
    head = api.repo_info(repo_id, repo_type="dataset").sha
    remote = {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=head, recursive=True)
              if isinstance(f, RepoFile)}
    local = local_files(folder)

    changed = [rel for rel, path in local.items() if rel not in remote or not _unchanged(path, remote[rel])]
    stale = [rel for rel in remote if rel not in local and rel.startswith(MANAGED_PREFIXES)]
    base_url = f"{api.endpoint}/datasets/{repo_id}/commit/"
    if not changed and not stale:
        logger.info("%s already has this content at %s: nothing to push", repo_id, head)
        return PushResult(repo_id, head, base_url + head, False, (), ())

    operations: list[Any] = [CommitOperationDelete(path_in_repo=rel) for rel in stale]
    operations += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(local[rel])) for rel in changed]
    # parent_commit: fail instead of silently overwriting a commit someone pushed since we looked.
    info = api.create_commit(repo_id, operations, repo_type="dataset", commit_message=commit_message,
                             commit_description=commit_description, parent_commit=head)
    logger.info("pushed %d changed and %d deleted file(s) to %s at %s", len(changed), len(stale), repo_id, info.oid)
    return PushResult(repo_id, info.oid, info.commit_url, info.oid != head, tuple(changed), tuple(stale))


# --- load ---------------------------------------------------------------------------------------------------
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
    recomputed with `bmc_data.masks.add_diff_masks` and a log line says so.
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
        from .masks import add_diff_masks, masks_fit

        if not masks_fit(dataset, tokenizer):
            from .tokenization import tokenizer_name

            had = tokenizer_identity(dataset)
            logger.warning("recomputing diff masks of %s for tokenizer %r (stored: %s)", repo_or_path,
                           tokenizer_name(tokenizer), had["name"] if had else "none")
            dataset = add_diff_masks(dataset, tokenizer)
    return dataset


def hf_token_from_env() -> str | None:
    """The token `push_bridged` would use when none is passed (for callers that need to know one exists)."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()
