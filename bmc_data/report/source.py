"""Where the review page's rows come from: a bridged folder, a parquet / jsonl file or a Hub repo id, and the
tokenizer that decides whether the diff is shown token by token (the stored masks) or word by word."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets

from bmc_data.pairs import schema

logger = logging.getLogger(__name__)


def load_report_source(source: str | Path) -> tuple[datasets.Dataset, dict[str, Any]]:
    """(all rows, provenance) of a bridged folder, parquet/jsonl file or Hub repo id."""
    from bmc_data.hub.card import CONFIGS
    from bmc_data.hub.load import load_bridged
    from bmc_data.hub.save import MANIFEST

    path = Path(source).expanduser()
    prov: dict[str, Any] = {"source": str(source)}
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path)), prov
        if suffix in (".jsonl", ".json"):
            return datasets.Dataset.from_json(str(path)), prov
        raise ValueError(f"{path}: expected a .parquet or .jsonl file, a bridged folder or a Hub repo id")
    if path.is_dir():
        manifest_path = path / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            prov.update({"source": manifest.get("source") or str(source), "repo_id": manifest.get("repo_id"),
                         "manifest_provider": manifest.get("provider") or {}})
            parts = []
            for config, splits in (manifest.get("configs") or {}).items():
                for split, info in splits.items():
                    if info.get("rows"):
                        parts.append(datasets.Dataset.from_parquet([str(path / f) for f in info["files"]]))
            if not parts:
                raise ValueError(f"{path}: the manifest lists no rows")
            return datasets.concatenate_datasets(parts), prov
        for name in ("bridged.parquet", "bridged.jsonl"):
            if (path / name).is_file():
                return load_report_source(path / name)[0], prov
        if (path / "data").is_dir():  # a save_bridged folder without a manifest
            source = path
        else:
            raise ValueError(f"{path}: no bmc_manifest.json, bridged.parquet or data/ folder in it")
    looks_local = path.is_absolute() or str(source).startswith(".") or path.suffix or str(source).count("/") != 1
    if not path.exists() and looks_local:
        raise FileNotFoundError(f"{source}: no such file or folder (and not a Hub repo id like org/name)")
    # a Hub repo (or manifest-less folder): every config, every split that exists
    parts = []
    for config in CONFIGS:
        for split in ("train", "test"):
            try:
                parts.append(load_bridged(source, split=split, config=config))
            except (ValueError, FileNotFoundError) as err:
                logger.debug("no %s/%s in %s: %s", config, split, source, err)
    if not parts:
        raise ValueError(f"{source}: no bridged rows found (tried configs {list(CONFIGS)}, splits train/test)")
    return datasets.concatenate_datasets(parts), prov


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


