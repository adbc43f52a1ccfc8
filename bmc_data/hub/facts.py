"""What the card, the manifest and the review page say about a bridged dataset, read off its columns."""

from __future__ import annotations

from collections import Counter
from typing import Any

import datasets

from bmc_data.pairs import schema

TOP_REASONS = 5


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


def column_values(dataset: datasets.Dataset, column: str) -> list[str]:
    if column not in dataset.column_names or not len(dataset):
        return []
    return sorted(str(v) for v in set(dataset[column]) if v not in (None, ""))


def provider_identity(dataset: datasets.Dataset) -> dict[str, str]:
    providers, models = column_values(dataset, schema.PROVIDER), column_values(dataset, schema.MODEL)
    out = {}
    if providers:
        out["provider"] = ", ".join(providers)
    if models:
        out["model"] = ", ".join(models)
    return out


def tokenizer_identity(dataset: datasets.Dataset) -> dict[str, str] | None:
    names, hashes = column_values(dataset, schema.MASK_TOKENIZER), column_values(dataset, schema.MASK_TOKENIZER_HASH)
    if not names and not hashes:
        return None
    return {"name": ", ".join(names), "hash": ", ".join(hashes)}


def find_templates(dataset: datasets.Dataset) -> list[Any]:
    """The bundled prompt templates whose version id appears in `bmc_prompt_version`."""
    from bmc_data.bridging.templates import available_templates

    versions = set(column_values(dataset, schema.PROMPT_VERSION))
    return [t for t in available_templates() if t.version_id in versions]


