"""A reviewer's keep / drop / flag decisions (exported from the review page, `bmc_data.report`) applied to the
dataset: `drop` rows go, every row gets its decision and note as columns.

The decisions file is JSONL, one line per decided row:

    {"row": 12, "id": "ecqa-12", "decision": "drop", "note": "answer is wrong", "dataset": "3f2a…"}

`row` is the row's index in the dataset as the page shows it (all statuses, in file order); `id` is there when the
data has an `id` column and must then match; `dataset` (optional) is the page's fingerprint of the dataset
(`review_fingerprint`) and must match too. Anything that does not fit is refused with a `ReviewMismatch` naming
the rows, never silently skipped: a decision applied to the wrong row is worse than none.

This module lives in `pairs` (stage 1) because both `python -m bmc_data.publish` and `bmc_train` apply reviews,
and `bmc_train` may import only `pairs`, `tokens`, `errors` and `runner`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmc_data.errors import InputError, MissingFileError

from . import schema

__all__ = ["DECISIONS", "REVIEW_DECISION", "REVIEW_NOTE", "Review", "ReviewMismatch", "apply_review",
           "read_decisions", "review_fingerprint"]

logger = logging.getLogger(__name__)

DECISIONS = ("keep", "drop", "flag")
REVIEW_DECISION = "bmc_review_decision"  # "" for rows nobody decided
REVIEW_NOTE = "bmc_review_note"
_SHOWN = 5  # rows named in one error line


class ReviewMismatch(InputError):
    """A decisions file that does not fit the dataset: unknown rows, ids that differ, another dataset."""


@dataclass
class Review:
    """What `apply_review` did: counts for the log, the run summary and the dataset card."""

    rows: int = 0  # rows before
    decided: Counter = field(default_factory=Counter)  # decision -> rows

    @property
    def reviewed(self) -> int:
        return sum(self.decided.values())

    @property
    def dropped(self) -> int:
        return self.decided.get("drop", 0)

    def counts(self) -> dict[str, int]:
        """{"rows", "reviewed", "keep", "drop", "flag"}: what the dataset card and the manifest record."""
        return {"rows": self.rows, "reviewed": self.reviewed, **{d: self.decided.get(d, 0) for d in DECISIONS}}

    def headline(self) -> str:
        parts = ", ".join(f"{self.decided.get(d, 0):,} {d}" for d in DECISIONS)
        return f"review: {self.reviewed:,} of {self.rows:,} rows reviewed ({parts}); {self.dropped:,} dropped"


def review_fingerprint(dataset: Any) -> str:
    """Short sha256 of what a reviewer saw: every row's prompt, chosen and rejected, in order.

    Independent of how the data were loaded (parquet, jsonl, Arrow chunking) and of the page's options, so the
    page and `apply_review` compute the same value for the same rows."""
    digest = hashlib.sha256(str(len(dataset)).encode())
    columns = [c for c in (schema.PROMPT, schema.CHOSEN, schema.REJECTED) if c in dataset.column_names]
    for start in range(0, len(dataset), 2000):
        batch = dataset.select_columns(columns)[start:start + 2000]
        for values in zip(*(batch[c] for c in columns)):
            digest.update(json.dumps(values, ensure_ascii=False, sort_keys=True).encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()[:16]


def read_decisions(source: str | Path | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Decisions from a JSONL file (or already parsed), each checked: a bad line is an `InputError` naming it."""
    where = str(source) if isinstance(source, (str, Path)) else "decisions"
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise MissingFileError(f"{path}: no such decisions file (export it from the review page)")
        lines = path.read_text(encoding="utf-8").splitlines()
        items: list[Any] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                items.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise InputError(f"{where} line {number}: not JSON ({error.msg})") from None
    else:
        items = list(enumerate(source, 1))
    out = []
    for number, item in items:
        if not isinstance(item, Mapping):
            raise InputError(f"{where} line {number}: expected an object like "
                             '{"row": 0, "decision": "keep", "note": ""}')
        row, decision, note = item.get("row"), item.get("decision"), item.get("note", "")
        if not isinstance(row, int) or isinstance(row, bool) or row < 0:
            raise InputError(f"{where} line {number}: `row` must be a row index >= 0, got {row!r}")
        if decision not in DECISIONS:
            raise InputError(f"{where} line {number}: `decision` must be one of {list(DECISIONS)}, got {decision!r}")
        if not isinstance(note, str):
            raise InputError(f"{where} line {number}: `note` must be a string, got {type(note).__name__}")
        out.append({**item, "note": note, "line": number})
    if not out:
        raise InputError(f"{where}: no decisions in it")
    return out


def _named(values: list[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOWN])
    return shown + (f" and {len(values) - _SHOWN} more" if len(values) > _SHOWN else "")


def apply_review(dataset: Any, decisions: str | Path | Iterable[Mapping[str, Any]], *, by: str = "row",
                 return_review: bool = False) -> Any:
    """Apply a reviewer's decisions: drop the `drop` rows, add `bmc_review_decision` / `bmc_review_note`.

    Args:
        dataset: the dataset the review page showed (a `datasets.Dataset`).
        decisions: a JSONL file exported from the page, or its parsed lines.
        by: "row" (default) matches each decision's `row` and checks its `id`; "id" matches by `id` alone, for
            a dataset that holds only some of the reviewed rows (one split of a published folder): decisions for
            ids not in it are counted and ignored.
        return_review: also return a `Review` with the counts.
    Raises:
        ReviewMismatch: a row that does not exist, an id that differs from the row's, a fingerprint of another
            dataset, or one row decided twice; the message names them.
    """
    items = read_decisions(decisions)
    n = len(dataset)
    has_id = schema.ID in dataset.column_names
    ids = [str(v) if v is not None else None for v in dataset[schema.ID]] if has_id else None
    fingerprints = {item["dataset"] for item in items if item.get("dataset")}
    if fingerprints and by == "row":
        mine = review_fingerprint(dataset)
        if fingerprints != {mine}:
            raise ReviewMismatch(f"the decisions are for dataset {_named(sorted(fingerprints))}, this one is {mine}: "
                                 "review its own page (or remove the `dataset` field to apply them anyway)")
    chosen: dict[int, dict[str, Any]] = {}
    if by == "id":
        if not has_id:
            raise ReviewMismatch(f"the dataset has no `{schema.ID}` column to match the decisions by")
        where = {v: i for i, v in enumerate(ids) if v is not None}
        unknown = [item["line"] for item in items if item.get("id") is None]
        if unknown:
            raise ReviewMismatch(f"decisions on line(s) {_named(unknown)} carry no `id` to match by")
        rows_of = Counter(v for v in ids if v is not None)
        shared = sorted({str(item["id"]) for item in items if rows_of[str(item["id"])] > 1})
        if shared:  # which of its rows the reviewer meant cannot be told by id
            raise ReviewMismatch(f"id {shared[0]!r} names {rows_of[shared[0]]} rows of the dataset"
                                 + (f" (and {len(shared) - 1} more such id(s))" if len(shared) > 1 else "")
                                 + ": decisions cannot be matched by id; apply them to the data file the review "
                                   "page showed, where they are matched by row")
        ignored = 0
        for item in items:
            i = where.get(str(item["id"]))
            if i is None:
                ignored += 1
            elif i in chosen:
                raise ReviewMismatch(f"id {item['id']!r} is decided twice (lines {chosen[i]['line']} and {item['line']})")
            else:
                chosen[i] = item
        if ignored:
            logger.info("review: %d decision(s) name ids not in this dataset (another split or status); ignored",
                        ignored)
    elif by == "row":
        missing = [item["row"] for item in items if item["row"] >= n]
        if missing:
            raise ReviewMismatch(f"the decisions name row(s) {_named(missing)}, but the dataset has {n:,} rows "
                                 f"(0..{n - 1})")
        wrong = [f"row {item['row']} has id {ids[item['row']]!r}, not {item['id']!r}" for item in items
                 if has_id and item.get("id") is not None and str(item["id"]) != ids[item["row"]]]
        if wrong:
            raise ReviewMismatch(f"ids do not match: {_named(wrong)} (decisions for another dataset or order?)")
        for item in items:
            if item["row"] in chosen:
                raise ReviewMismatch(f"row {item['row']} is decided twice (lines {chosen[item['row']]['line']} "
                                     f"and {item['line']})")
            chosen[item["row"]] = item
    else:
        raise ValueError(f"by must be 'row' or 'id', got {by!r}")

    review = Review(rows=n, decided=Counter(item["decision"] for item in chosen.values()))
    decision_col = [chosen[i]["decision"] if i in chosen else "" for i in range(n)]
    note_col = [chosen[i]["note"] if i in chosen else "" for i in range(n)]
    out = dataset
    for name in (REVIEW_DECISION, REVIEW_NOTE):
        if name in out.column_names:  # a second review replaces the first (our own columns)
            out = out.remove_columns(name)
    out = out.add_column(REVIEW_DECISION, decision_col).add_column(REVIEW_NOTE, note_col)
    keep = [i for i in range(n) if decision_col[i] != "drop"]
    if len(keep) < n:
        out = out.select(keep)
    logger.info("%s", review.headline())
    return (out, review) if return_review else out
