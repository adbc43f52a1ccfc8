"""Load preference pairs from anything a user has: a `datasets` object, a Hub name, a local file or folder,
a pandas DataFrame or a list of dicts, in any of the common layouts.

Layouts (detected from the columns, or forced with `layout=`):
- ``standard``: prompt / chosen / rejected strings (TRL standard preference format);
- ``conversational``: prompt, chosen and rejected as chat-message lists (TRL conversational format);
- ``ultrafeedback``: UltraFeedback-binarized: prompt string, chosen/rejected full conversations, scores;
- ``qa``: QA/math ground truth + a model's output: problem / solution / answer plus the model's answer in
  `rejected_column` (y_w is the solution, y_l the model's answer). GSM8K (question / answer with `#### X`) is
  recognised as this layout too. Without a model answer, use `bmc_data.make_pairs` first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import pandas as pd
from pydantic import ValidationError

from .schema import PreferencePair, Task

logger = logging.getLogger(__name__)

Layout = Literal["auto", "standard", "conversational", "ultrafeedback", "qa"]
OnInvalid = Literal["raise", "skip"]

_MODEL_OUTPUT_COLUMNS = ("rejected", "model_output", "model_answer", "output", "response", "prediction")
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class InvalidRowError(ValueError):
    """A row that cannot become a `PreferencePair`; names the row, the field and what was expected."""

    def __init__(self, index: int, field: str, message: str):
        super().__init__(f"row {index}: field {field!r}: {message}")
        self.index, self.field, self.message = index, field, message


@dataclass(frozen=True)
class SkippedRow:
    index: int
    field: str
    message: str


@dataclass
class LoadedPairs(Sequence[PreferencePair]):
    """The pairs that loaded, in input order, and the rows skipped with `on_invalid="skip"`."""

    pairs: list[PreferencePair]
    layout: str
    skipped: list[SkippedRow] = field(default_factory=list)
    source_indices: list[int] = field(default_factory=list)  # input row index of each pair

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):  # type: ignore[override]
        return self.pairs[i]

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)


# --- reading sources ---------------------------------------------------------------------------------


def read_rows(source: Any, *, split: str = "train") -> datasets.Dataset:
    """Any supported source as a `datasets.Dataset` (no row conversion yet)."""
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"split {split!r} not in the DatasetDict; available: {sorted(source)}")
        return source[split]
    if isinstance(source, pd.DataFrame):
        return datasets.Dataset.from_pandas(source, preserve_index=False)
    if isinstance(source, (list, tuple)):
        rows = [r.model_dump() if isinstance(r, PreferencePair) else dict(r) for r in source]
        return datasets.Dataset.from_list(rows)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(_FILE_BUILDERS)}")
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        if path.is_dir():
            loaded = datasets.load_dataset(str(path))
            return read_rows(loaded, split=split)
        if str(source).count("/") == 1 and not str(source).startswith((".", "/")):
            return datasets.load_dataset(str(source), split=split)  # a Hub repo id
        raise FileNotFoundError(f"{source}: no such file or folder, and not a Hub repo id of the form 'org/name'")
    raise TypeError(f"unsupported data source of type {type(source).__name__}; expected a Dataset, DatasetDict, "
                    "path, Hub repo id, pandas DataFrame or list of dicts")


def _python_rows(source: Any, *, split: str) -> list[dict[str, Any]]:
    """Rows as plain dicts. In-memory lists and DataFrames skip Arrow, so a mistyped cell reaches our
    row-level validation (with its row index) instead of failing the whole Arrow conversion."""
    if isinstance(source, pd.DataFrame):
        return source.to_dict("records")
    if isinstance(source, (list, tuple)):
        return [r.model_dump() if isinstance(r, PreferencePair) else dict(r) for r in source]
    return read_rows(source, split=split).to_list()


def detect_layout(columns: Iterable[str], first_row: Mapping[str, Any] | None = None) -> str:
    cols = set(columns)
    if {"problem", "solution"} <= cols or {"question", "answer"} <= cols and "chosen" not in cols:
        return "qa"
    if {"prompt", "chosen", "rejected"} <= cols or {"chosen", "rejected"} <= cols:
        chosen = first_row.get("chosen") if first_row else None
        if isinstance(chosen, list):
            prompt = first_row.get("prompt") if first_row else None
            return "conversational" if isinstance(prompt, list) or prompt is None else "ultrafeedback"
        return "standard"
    raise ValueError(
        f"cannot tell the layout from columns {sorted(cols)}: expected prompt/chosen/rejected (standard or "
        "conversational), UltraFeedback-binarized (prompt, chosen/rejected message lists) or QA/math "
        "(problem/solution/answer plus a model answer)"
    )


# --- row conversion ----------------------------------------------------------------------------------


def _messages(value: Any, index: int, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value):
        raise InvalidRowError(index, name, f"expected a list of {{'role', 'content'}} messages, got {type(value).__name__}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _last_assistant(messages: list[dict[str, str]], index: int, name: str) -> tuple[list[dict[str, str]], str]:
    if not messages or messages[-1]["role"] != "assistant":
        raise InvalidRowError(index, name, "expected the conversation to end with an assistant message")
    return messages[:-1], messages[-1]["content"]


def _text(value: Any, index: int, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidRowError(index, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidRowError(index, name, "expected a non-empty string")
    return value


def _gsm8k_answer(solution: str) -> str | None:
    return solution.rsplit("####", 1)[1].strip() if "####" in solution else None


def row_to_pair(row: Mapping[str, Any], index: int, layout: str, *, task: Task | None, rejected_column: str | None) -> PreferencePair:
    meta = {k: v for k, v in row.items() if k.startswith("score_") or k in ("source", "dataset", "prompt_id")}
    ident = row.get("id", row.get("prompt_id", row.get("idx")))
    ident = None if ident is None else str(ident)
    if layout == "standard":
        prompt = _text(row.get("prompt"), index, "prompt")
        chosen, rejected = _text(row.get("chosen"), index, "chosen"), _text(row.get("rejected"), index, "rejected")
    elif layout == "conversational":
        chosen_msgs = _messages(row.get("chosen"), index, "chosen")
        rejected_msgs = _messages(row.get("rejected"), index, "rejected")
        if row.get("prompt") is not None:
            prompt = _messages(row["prompt"], index, "prompt")
            chosen, rejected = _last_assistant(chosen_msgs, index, "chosen")[1], _last_assistant(rejected_msgs, index, "rejected")[1]
        else:  # implicit prompt: the shared conversation before the last assistant turn
            prompt, chosen = _last_assistant(chosen_msgs, index, "chosen")
            rejected = _last_assistant(rejected_msgs, index, "rejected")[1]
        chosen, rejected = _text(chosen, index, "chosen"), _text(rejected, index, "rejected")
    elif layout == "ultrafeedback":
        prompt_text = _text(row.get("prompt"), index, "prompt")
        context, chosen = _last_assistant(_messages(row.get("chosen"), index, "chosen"), index, "chosen")
        _, rejected = _last_assistant(_messages(row.get("rejected"), index, "rejected"), index, "rejected")
        prompt = context if len(context) > 1 else [{"role": "user", "content": prompt_text}]
        chosen, rejected = _text(chosen, index, "chosen"), _text(rejected, index, "rejected")
    elif layout == "qa":
        problem_key = "problem" if "problem" in row else "question"
        prompt = _text(row.get(problem_key), index, problem_key)
        solution_key = "solution" if "solution" in row else "answer"
        chosen = _text(row.get(solution_key), index, solution_key)
        answer = row.get("answer") if solution_key == "solution" else _gsm8k_answer(chosen)
        column = rejected_column or next((c for c in _MODEL_OUTPUT_COLUMNS if c in row), None)
        if column is None:
            raise InvalidRowError(index, "rejected", "QA/math rows need a model answer (y_l) column "
                                  f"(one of {list(_MODEL_OUTPUT_COLUMNS)}); build one with bmc_data.make_pairs")
        rejected = _text(row.get(column), index, column)
        task = task or (Task.MATH if solution_key == "answer" else Task.QA)
        return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, id=ident, task=task,
                              answer=None if answer is None else str(answer), metadata=meta)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    answer = row.get("answer")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, id=ident, task=task,
                          answer=None if answer is None else str(answer), metadata=meta)


def load_pairs(
    source: Any,
    *,
    task: Task | str | None = None,
    layout: Layout = "auto",
    split: str = "train",
    limit: int | None = None,
    rejected_column: str | None = None,
    on_invalid: OnInvalid = "raise",
) -> LoadedPairs:
    """Load and validate preference pairs, in input order.

    With ``on_invalid="raise"`` (default) the first bad row raises `InvalidRowError` naming the row index,
    the field and what was expected; with ``"skip"`` such rows are reported in `LoadedPairs.skipped`.
    """
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    task = Task(task) if task is not None else None
    rows = _python_rows(source, split=split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        return LoadedPairs([], layout if layout != "auto" else "standard")
    resolved = detect_layout(rows[0].keys(), rows[0]) if layout == "auto" else layout
    pairs, skipped, indices = [], [], []
    for index, row in enumerate(rows):
        try:
            pair = row_to_pair(row, index, resolved, task=task, rejected_column=rejected_column)
        except InvalidRowError as err:
            if on_invalid == "raise":
                raise
            skipped.append(SkippedRow(err.index, err.field, err.message))
            continue
        except ValidationError as err:
            first = err.errors()[0]
            bad = InvalidRowError(index, ".".join(str(p) for p in first["loc"]) or "row", first["msg"])
            if on_invalid == "raise":
                raise bad from err
            skipped.append(SkippedRow(bad.index, bad.field, bad.message))
            continue
        pairs.append(pair)
        indices.append(index)
    if skipped:
        logger.warning("skipped %d invalid row(s) of %d; first: row %d field %r: %s", len(skipped), len(rows),
                       skipped[0].index, skipped[0].field, skipped[0].message)
    return LoadedPairs(pairs, resolved, skipped, indices)
