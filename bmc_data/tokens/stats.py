"""Edit-distance statistics of preference pairs before and after bridging (paper §5.2, Fig. 5).

The paper splits UltraFeedback into six equal-size splits by the edit distance between the winning and losing
responses and shows that the Bridging Phase shrinks that distance. For every pair we record

* "before": the distance between the original winner y_w (`original_chosen`) and the loser y_l (`rejected`);
* "after":  the distance between the chosen response (ỹ_w when bridged) and y_l;

at word level (whitespace-split words) and, given a tokenizer, at token level (response tokens without special
tokens), each raw and normalised by the longer side (0 = identical, 1 = nothing in common). When diff-mask columns are
present, the fraction of marked tokens per side is added too. Distances are computed with rapidfuzz's Levenshtein.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset
from rapidfuzz.distance import Levenshtein

from bmc_data.pairs.answers import final_answer_span
from bmc_data.pairs.schema import (
    CHOSEN,
    CHOSEN_DIFF_MASK,
    ORIGINAL_CHOSEN,
    REJECTED,
    REJECTED_DIFF_MASK,
    STATUS,
    TASK,
    Status,
    Task,
    response_text,
)

__all__ = [
    "add_edit_distance_stats",
    "editor_statistics",
    "edit_distance_splits",
    "plot_edit_distances",
    "summarize_edit_distances",
]

# --- column names added by add_edit_distance_stats ----------------------------------------------
WORD_DISTANCE_BEFORE = "bmc_word_edit_distance_before"
WORD_DISTANCE_AFTER = "bmc_word_edit_distance_after"
WORD_NORM_BEFORE = "bmc_word_norm_edit_distance_before"
WORD_NORM_AFTER = "bmc_word_norm_edit_distance_after"
TOKEN_DISTANCE_BEFORE = "bmc_token_edit_distance_before"
TOKEN_DISTANCE_AFTER = "bmc_token_edit_distance_after"
TOKEN_NORM_BEFORE = "bmc_token_norm_edit_distance_before"
TOKEN_NORM_AFTER = "bmc_token_norm_edit_distance_after"
CHOSEN_DIFF_FRACTION = "bmc_chosen_diff_fraction"
REJECTED_DIFF_FRACTION = "bmc_rejected_diff_fraction"

# (metric, phase) -> column; the order is the row order of summarize_edit_distances
_METRICS: tuple[tuple[str, str, str], ...] = (
    ("word_edit_distance", "before", WORD_DISTANCE_BEFORE),
    ("word_edit_distance", "after", WORD_DISTANCE_AFTER),
    ("word_norm_edit_distance", "before", WORD_NORM_BEFORE),
    ("word_norm_edit_distance", "after", WORD_NORM_AFTER),
    ("token_edit_distance", "before", TOKEN_DISTANCE_BEFORE),
    ("token_edit_distance", "after", TOKEN_DISTANCE_AFTER),
    ("token_norm_edit_distance", "before", TOKEN_NORM_BEFORE),
    ("token_norm_edit_distance", "after", TOKEN_NORM_AFTER),
    ("chosen_diff_fraction", "after", CHOSEN_DIFF_FRACTION),
    ("rejected_diff_fraction", "after", REJECTED_DIFF_FRACTION),
)
STATS_COLUMNS = tuple(column for _, _, column in _METRICS)
_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)


def _distance(a: Sequence, b: Sequence) -> tuple[int, float]:
    d = Levenshtein.distance(a, b)
    longest = max(len(a), len(b))
    return d, (d / longest if longest else 0.0)


def _fraction(mask: Sequence[bool] | None) -> float:
    return float(sum(mask)) / len(mask) if mask else 0.0


def _stats_batch(
    batch: dict[str, list[Any]], *, tokenizer: Any, before_column: str, with_after: bool
) -> dict[str, list[Any]]:
    # Module-level so that num_proc > 1 can pickle it.
    winners = [response_text(v) for v in batch[before_column]]
    chosen = [response_text(v) for v in batch[CHOSEN]]
    rejected = [response_text(v) for v in batch[REJECTED]]
    out: dict[str, list[Any]] = {}

    def add(prefix: str, tokens_w: list, tokens_c: list, tokens_l: list) -> None:
        before = [_distance(w, l) for w, l in zip(tokens_w, tokens_l)]
        out[f"bmc_{prefix}_edit_distance_before"] = [d for d, _ in before]
        out[f"bmc_{prefix}_norm_edit_distance_before"] = [n for _, n in before]
        if with_after:
            after = [_distance(c, l) for c, l in zip(tokens_c, tokens_l)]
            out[f"bmc_{prefix}_edit_distance_after"] = [d for d, _ in after]
            out[f"bmc_{prefix}_norm_edit_distance_after"] = [n for _, n in after]

    add("word", [t.split() for t in winners], [t.split() for t in chosen], [t.split() for t in rejected])
    if tokenizer is not None:
        def encode(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, add_special_tokens=False)["input_ids"]

        add("token", encode(winners), encode(chosen) if with_after else [], encode(rejected))
    if CHOSEN_DIFF_MASK in batch and REJECTED_DIFF_MASK in batch:
        out[CHOSEN_DIFF_FRACTION] = [_fraction(m) for m in batch[CHOSEN_DIFF_MASK]]
        out[REJECTED_DIFF_FRACTION] = [_fraction(m) for m in batch[REJECTED_DIFF_MASK]]
    return out


def add_edit_distance_stats(dataset: Dataset, tokenizer: Any = None, num_proc: int | None = None) -> Dataset:
    """Add per-pair edit-distance columns (see the module docstring and `STATS_COLUMNS`).

    Args:
        dataset: A bridged dataset (`chosen`, `rejected`, `original_chosen`, as text or conversational messages).
            Without `original_chosen` (an unbridged dataset) only the "before" columns are added, from `chosen`.
        tokenizer: Adds token-level distances when given (tokens of the response text, no special tokens).
        num_proc: Worker processes for `Dataset.map`.
    """
    missing = [c for c in (CHOSEN, REJECTED) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"add_edit_distance_stats: dataset is missing column(s) {missing}")
    with_after = ORIGINAL_CHOSEN in dataset.column_names
    drop = [c for c in STATS_COLUMNS if c in dataset.column_names]
    if drop:  # recomputing (e.g. with a tokenizer now): replace, never mix old and new values
        dataset = dataset.remove_columns(drop)
    return dataset.map(
        _stats_batch,
        batched=True,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        fn_kwargs={
            "tokenizer": tokenizer,
            "before_column": ORIGINAL_CHOSEN if with_after else CHOSEN,
            "with_after": with_after,
        },
        desc="Computing edit distances",
    )


def _bridged(dataset: Dataset) -> Dataset:
    if STATUS not in dataset.column_names:
        return dataset
    statuses = dataset[STATUS]
    return dataset.select([i for i, s in enumerate(statuses) if s == Status.BRIDGED.value])


def _require_stats(dataset: Dataset) -> None:
    if WORD_DISTANCE_BEFORE not in dataset.column_names:
        raise ValueError(
            f"column {WORD_DISTANCE_BEFORE!r} is missing: run add_edit_distance_stats(dataset, tokenizer) first"
        )


def summarize_edit_distances(dataset: Dataset) -> pd.DataFrame:
    """Before/after summary over the bridged rows (all rows when there is no `bmc_status` column).

    Returns one row per (metric, phase) present, with columns `count, mean, std, p10, p25, p50, p75, p90`.
    `df.attrs` holds `n_rows` (dataset size) and `n_bridged` (rows summarised).
    """
    _require_stats(dataset)
    rows = _bridged(dataset)
    records = []
    for metric, phase, column in _METRICS:
        if column not in rows.column_names:
            continue
        values = np.asarray(rows[column], dtype=float)
        record: dict[str, Any] = {"metric": metric, "phase": phase, "count": int(values.size)}
        if values.size:
            record["mean"] = float(values.mean())
            record["std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
            for q, v in zip(_QUANTILES, np.quantile(values, _QUANTILES)):
                record[f"p{round(q * 100)}"] = float(v)
        else:
            record.update({k: math.nan for k in ("mean", "std", *(f"p{round(q * 100)}" for q in _QUANTILES))})
        records.append(record)
    frame = pd.DataFrame.from_records(records).set_index(["metric", "phase"])
    frame.attrs["n_rows"] = len(dataset)
    frame.attrs["n_bridged"] = len(rows)
    return frame


def _without_answer_line(text: str) -> list[str]:
    """The lines of `text` minus the one holding its final-answer statement (if any)."""
    text = text.rstrip()
    lines = text.split("\n")
    span = final_answer_span(text)
    if span is not None:
        del lines[text.count("\n", 0, span[0])]
    return lines


def only_final_answer_changed(rejected: str, chosen: str) -> bool:
    """True when `chosen` differs from `rejected` in nothing but the line stating the final answer (added,
    removed or changed): an editor that fixed the answer and none of the reasoning that led to it."""
    return chosen != rejected and _without_answer_line(chosen) == _without_answer_line(rejected)


def editor_rows(dataset: Dataset) -> list[dict[str, Any]]:
    """The rows of `dataset` with only the columns `editor_statistics` reads."""
    return dataset.select_columns([c for c in (STATUS, CHOSEN, ORIGINAL_CHOSEN, REJECTED, TASK)
                                   if c in dataset.column_names]).to_list()


def editor_statistics(dataset: Dataset | Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the editor did, honestly, over a bridged dataset (rows with `bmc_status`, `chosen` = ỹ_w when bridged,
    `original_chosen` = y_w, `rejected` = y_l):

    * `rows`, `bridged`, `bridged_share` (bridged / rows);
    * `median_word_edit_distance_before` (y_w↔y_l) and `..._after` (ỹ_w↔y_l): whitespace-word Levenshtein,
      medians over the bridged rows (None without any);
    * `answer_rows`: bridged QA/math rows (`task` column; every bridged row when there is none whose y_l or ỹ_w
      states a final answer), `only_final_answer_changed` of them and its share (None without any): rows whose
      only change is the final-answer line (`only_final_answer_changed`).
    """
    rows = editor_rows(dataset) if isinstance(dataset, Dataset) else list(dataset)
    bridged = [r for r in rows if r.get(STATUS) == Status.BRIDGED.value]
    before, after, answer_rows, answer_only = [], [], 0, 0
    for row in bridged:
        chosen, rejected = response_text(row[CHOSEN]), response_text(row[REJECTED])
        winner = response_text(row.get(ORIGINAL_CHOSEN) or row[CHOSEN])
        before.append(_distance(winner.split(), rejected.split())[0])
        after.append(_distance(chosen.split(), rejected.split())[0])
        task = row.get(TASK)
        if task in (Task.QA.value, Task.MATH.value) or (
                task is None and (final_answer_span(rejected) or final_answer_span(chosen))):
            answer_rows += 1
            answer_only += only_final_answer_changed(rejected, chosen)
    return {
        "rows": len(rows),
        "bridged": len(bridged),
        "bridged_share": len(bridged) / len(rows) if rows else None,
        "median_word_edit_distance_before": float(np.median(before)) if before else None,
        "median_word_edit_distance_after": float(np.median(after)) if after else None,
        "answer_rows": answer_rows,
        "only_final_answer_changed": answer_only,
        "only_final_answer_changed_share": answer_only / answer_rows if answer_rows else None,
    }


def editor_statistics_lines(stats: dict[str, Any]) -> list[str]:
    """`editor_statistics` in three plain sentences (run summary, dataset card)."""
    if not stats.get("rows"):
        return ["no rows"]
    lines = [f"bridged: {stats['bridged']} of {stats['rows']} rows ({100 * stats['bridged_share']:.1f}%)"]
    if stats["bridged"]:
        lines.append(f"median word edit distance over the bridged rows: y_w↔y_l "
                     f"{stats['median_word_edit_distance_before']:g}, ỹ_w↔y_l {stats['median_word_edit_distance_after']:g}")
    if stats["answer_rows"]:
        lines.append(f"only the final-answer line changed: {stats['only_final_answer_changed']} of "
                     f"{stats['answer_rows']} bridged QA/math rows ({100 * stats['only_final_answer_changed_share']:.1f}%)")
    return lines


def _default_split_key(dataset: Dataset) -> str:
    return TOKEN_DISTANCE_BEFORE if TOKEN_DISTANCE_BEFORE in dataset.column_names else WORD_DISTANCE_BEFORE


def edit_distance_splits(dataset: Dataset, n: int = 6, *, by: str | None = None) -> list[Dataset]:
    """The paper's equal-size splits by increasing edit distance between y_w and y_l (§5.2, Fig. 5).

    Rows are sorted (stably) by `by` and cut into `n` contiguous parts whose sizes differ by at most one. `by`
    defaults to the token-level "before" distance when present, else the word-level one; the word-level stats are
    computed here if the dataset has none. Split on the whole training set (bridged or not), as the paper does.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if WORD_DISTANCE_BEFORE not in dataset.column_names:
        dataset = add_edit_distance_stats(dataset)
    key = by or _default_split_key(dataset)
    if key not in dataset.column_names:
        raise ValueError(f"cannot split by {key!r}: no such column (have {dataset.column_names})")
    order = np.argsort(np.asarray(dataset[key], dtype=float), kind="stable")
    return [dataset.select(part.tolist()) for part in np.array_split(order, n)]


def plot_edit_distances(dataset: Dataset, out_dir: str | Path, *, n_splits: int = 6) -> list[Path]:
    """Write PNG figures of the bridged rows' edit distances; returns their paths.

    * `{word,token}_edit_distance.png`: histogram of the raw distance, before vs after bridging, overlaid;
    * `{word,token}_norm_edit_distance.png`: the same, normalised by the longer response;
    * `diff_token_fraction.png`: fraction of marked tokens in chosen and rejected (when masks are present);
    * `edit_distance_splits.png`: mean distance before/after in each of the paper's `n_splits` splits (Fig. 5).
    """
    from matplotlib.figure import (
        Figure,  # Agg canvas, no pyplot global state: safe in threads and headless
    )

    _require_stats(dataset)
    rows = _bridged(dataset)
    if len(rows) == 0:
        raise ValueError("no bridged rows to plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"{len(rows)} bridged pairs" if STATUS in dataset.column_names else f"{len(rows)} pairs"
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=120)
        paths.append(path)

    def overlay(name: str, title: str, xlabel: str, series: list[tuple[str, str]], unit_range: bool) -> None:
        present = [(label, np.asarray(rows[col], dtype=float)) for label, col in series if col in rows.column_names]
        if not present:
            return
        values = np.concatenate([v for _, v in present])
        edges = np.linspace(0.0, 1.0, 41) if unit_range else np.histogram_bin_edges(values, bins=40)
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        ax = fig.add_subplot()
        for label, v in present:
            ax.hist(v, bins=edges, alpha=0.55, label=f"{label} (mean {v.mean():.3g}, median {np.median(v):.3g})")
        ax.set_title(f"{title} — {suffix}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairs")
        ax.legend()
        save(fig, name)

    for level in ("word", "token"):
        before, after = f"bmc_{level}_edit_distance_before", f"bmc_{level}_edit_distance_after"
        if before not in rows.column_names:
            continue
        overlay(f"{level}_edit_distance.png", f"{level.capitalize()}-level edit distance", "Levenshtein distance",
                [("before: y_w vs y_l", before), ("after: ỹ_w vs y_l", after)], unit_range=False)
        overlay(f"{level}_norm_edit_distance.png", f"Normalised {level}-level edit distance",
                "distance / longer length",
                [("before: y_w vs y_l", f"bmc_{level}_norm_edit_distance_before"),
                 ("after: ỹ_w vs y_l", f"bmc_{level}_norm_edit_distance_after")], unit_range=True)
    overlay("diff_token_fraction.png", "Fraction of diff-masked tokens", "marked tokens / response tokens",
            [("chosen (ỹ_w)", CHOSEN_DIFF_FRACTION), ("rejected (y_l)", REJECTED_DIFF_FRACTION)], unit_range=True)

    key = _default_split_key(rows)
    after_key = key.replace("_before", "_after")
    if len(rows) >= n_splits:
        splits = edit_distance_splits(rows, n_splits, by=key)
        x = np.arange(1, n_splits + 1)
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        ax = fig.add_subplot()
        ax.bar(x - 0.2, [np.mean(s[key]) for s in splits], width=0.4, label="before: y_w vs y_l")
        if after_key in rows.column_names:
            ax.bar(x + 0.2, [np.mean(s[after_key]) for s in splits], width=0.4, label="after: ỹ_w vs y_l")
        ax.set_xticks(x)
        ax.set_xlabel(f"split by increasing {key.removeprefix('bmc_').removesuffix('_before')} (y_w vs y_l)")
        ax.set_ylabel("mean Levenshtein distance")
        ax.set_title(f"{n_splits} equal-size splits — {suffix}")
        ax.legend()
        save(fig, "edit_distance_splits.png")
    return paths
