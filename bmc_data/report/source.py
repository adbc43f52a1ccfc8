"""Where the review page's rows come from: a bridged folder, a parquet / jsonl file or a Hub repo id, and the
tokenizer that decides whether the diff is shown token by token (the stored masks) or word by word."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets

from bmc_data.errors import InputError, MissingFileError, first_line
from bmc_data.pairs import schema

logger = logging.getLogger(__name__)


def load_report_source(source: str | Path) -> tuple[datasets.Dataset, dict[str, Any]]:
    """(all rows, provenance) of a bridged folder, parquet/jsonl file or Hub repo id."""
    from bmc_data.hub.card import CONFIGS
    from bmc_data.hub.load import load_bridged
    from bmc_data.hub.save import MANIFEST
    from bmc_data.pairs.loading import looks_like_hub_id

    path = Path(source).expanduser()
    prov: dict[str, Any] = {"source": str(source)}
    if path.is_file():
        return _read_file(path), prov
    if path.is_dir():
        manifest_path = path / MANIFEST
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise InputError(f"{manifest_path}: not a readable bmc manifest ({first_line(error)})") from None
            prov.update({"source": manifest.get("source") or str(source), "repo_id": manifest.get("repo_id"),
                         "manifest_provider": manifest.get("provider") or {}})
            parts = []
            for config, splits in (manifest.get("configs") or {}).items():
                for split, info in splits.items():
                    if info.get("rows"):
                        parts.append(_read_file(*(path / f for f in info["files"])))
            if not parts:
                raise InputError(f"{path}: the manifest lists no rows")
            return datasets.concatenate_datasets(parts), prov
        for name in ("bridged.parquet", "bridged.jsonl"):
            if (path / name).is_file():
                return _read_file(path / name), prov
        if not (path / "data").is_dir():
            raise InputError(f"{path}: no bmc_manifest.json, bridged.parquet or data/ folder in it")
        # a save_bridged folder without a manifest: read as the Hub layout below
    elif not looks_like_hub_id(source):
        raise MissingFileError(f"{source}: no such file or folder (a Hub repo id looks like org/name)")
    # a Hub repo (or manifest-less folder): every config, every split that exists
    parts = []
    for config in CONFIGS:
        for split in ("train", "test"):
            try:
                parts.append(load_bridged(source, split=split, config=config))
            except (ValueError, FileNotFoundError) as err:
                logger.debug("no %s/%s in %s: %s", config, split, source, err)
    if not parts:
        raise InputError(f"{source}: no bridged rows found (tried configs {list(CONFIGS)}, splits train/test)")
    return datasets.concatenate_datasets(parts), prov


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as error:  # pyarrow's ArrowInvalid: not a parquet file
        raise InputError(f"{path}: not a readable parquet file ({first_line(error)})") from None


def _read_file(*paths: Path) -> datasets.Dataset:
    """A parquet / jsonl file (or a config's parquet shards) as a Dataset; empty or unreadable is one line."""
    first = paths[0]
    suffix = first.suffix.lower()
    if suffix not in (".parquet", ".jsonl", ".json"):
        raise InputError(f"{first}: expected a .parquet or .jsonl file, a bridged folder or a Hub repo id")
    for path in paths:
        if not path.is_file():
            raise MissingFileError(f"{path}: no such file (listed in the folder's manifest)")
        if path.stat().st_size == 0 or (suffix != ".parquet" and not path.read_bytes().strip()):
            raise InputError(f"{path}: the file is empty; expected bridged rows")
    if suffix == ".parquet" and all(_parquet_rows(p) == 0 for p in paths):
        raise InputError(f"{first}: the file has no rows; expected bridged rows")
    try:
        if suffix == ".parquet":
            data = datasets.Dataset.from_parquet([str(p) for p in paths])
        else:
            data = datasets.Dataset.from_json([str(p) for p in paths])
    except Exception as error:  # datasets wraps the parser's message (DatasetGenerationError, ArrowInvalid)
        cause = error.__cause__ or error
        raise InputError(f"{first}: cannot read it as {suffix[1:]}: {first_line(cause)}") from None
    if len(data) == 0:
        raise InputError(f"{first}: the file has no rows; expected bridged rows")
    return data


def mask_tokenizer(dataset: datasets.Dataset, tokenizer: Any) -> tuple[Any, str]:
    """(tokenizer or None, a sentence for the page about the diff level)."""
    if not all(c in dataset.column_names for c in schema.MASK_COLUMNS):
        return None, "This dataset has no diff masks: the diffs below are word-level (aligned words that differ)."
    from bmc_data.tokens.tokenization import tokenizer_fingerprint, tokenizer_name

    names = sorted({n for n in dataset.unique(schema.MASK_TOKENIZER) if n})
    hashes = sorted({h for h in dataset.unique(schema.MASK_TOKENIZER_HASH) if h})
    if tokenizer is None:
        if len(names) != 1:
            return None, (f"The diff masks name {len(names)} tokenizers ({', '.join(names) or 'none'}): "
                          "the diffs below are word-level.")
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(names[0])
        except Exception as err:  # offline, gated, deleted: say so and fall back
            return None, (f"The recorded mask tokenizer {names[0]!r} could not be loaded ({type(err).__name__}); "
                          "the diffs below are word-level. Pass --tokenizer to show the masked tokens.")
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint not in hashes:
        return None, (f"The tokenizer {tokenizer_name(tokenizer)!r} (hash {fingerprint}) is not the one the masks "
                      f"were built with ({', '.join(hashes)}): the diffs below are word-level.")
    return tokenizer, (f"Highlighted tokens are exactly the stored chosen_diff_mask / rejected_diff_mask, decoded "
                       f"with {tokenizer_name(tokenizer)} (hash {fingerprint}): the tokens BMC weights.")


