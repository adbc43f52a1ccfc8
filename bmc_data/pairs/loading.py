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

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pandas as pd
from pydantic import ValidationError

from bmc_data.errors import InputError, MissingFileError, UsageError, first_line

from .answers import known_answer
from .options import check_count, parse_task
from .schema import PreferencePair, Task

logger = logging.getLogger(__name__)

Layout = Literal["auto", "standard", "conversational", "ultrafeedback", "qa"]
OnInvalid = Literal["raise", "skip"]

_MODEL_OUTPUT_COLUMNS = ("rejected", "model_output", "model_answer", "output", "response", "prediction")
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


#: Suffixes that mark a path as a file the user meant, never a Hub repo id (even when it does not exist)
_FILE_LIKE_SUFFIXES = {*_FILE_BUILDERS, ".txt", ".tsv", ".arrow", ".gz", ".zip", ".yaml", ".yml", ".xlsx"}


class InvalidRowError(InputError):
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
        path = Path(source).expanduser()
        if path.is_file():
            builder = _check_file(path)
            try:
                return datasets.load_dataset(builder, data_files=str(path), split="train")
            except Exception as error:
                raise _file_error(path, error) from error
        if path.is_dir():
            try:
                loaded = _load_as_written(str(path))
            except Exception as error:
                raise InputError(f"{path}: cannot read the folder as a dataset: {first_line(error)}") from error
            return read_rows(loaded, split=split)
        if looks_like_hub_id(source):
            try:
                return _load_as_written(str(source), split=split)  # a Hub repo id
            except ValueError as error:
                if "split" in str(error).lower():
                    raise InputError(f"{source}: {first_line(error)}") from error
                raise InputError(f"{source}: no such local file or folder, and the Hub dataset could not be "
                                 f"loaded: {first_line(error)}") from error
            except (FileNotFoundError, ConnectionError, OSError) as error:
                raise InputError(f"{source}: no such local file or folder, and the Hub dataset could not be "
                                 f"loaded: {first_line(error)}") from error
        raise MissingFileError(f"{source}: no such file or folder" + (
            "" if _looks_like_path(source) else ", and not a Hub repo id of the form 'org/name'"))
    raise TypeError(f"unsupported data source of type {type(source).__name__}; expected a Dataset, DatasetDict, "
                    "path, Hub repo id, pandas DataFrame or list of dicts")


def _load_as_written(source: str, **kwargs: Any) -> Any:
    """`datasets.load_dataset(source)` for a folder or Hub repo; when it holds CSV files, their cells are read as
    the text written, as a single CSV file is (`_read_csv_rows`): every column a string, only an empty cell missing.
    `datasets` would otherwise infer types per column ("6" → 6, "1.50" → 1.5, "NA" → missing)."""
    builder = datasets.load_dataset_builder(source)
    if builder.name == "csv":
        files = [f for split_files in (builder.config.data_files or {}).values() for f in split_files]
        if files:
            columns = pd.read_csv(files[0], nrows=0, encoding="utf-8-sig").columns
            features = datasets.Features({str(c): datasets.Value("string") for c in columns})
            return datasets.load_dataset(source, features=features, keep_default_na=False, na_values=[""], **kwargs)
    return datasets.load_dataset(source, **kwargs)


def _looks_like_path(source: Any) -> bool:
    """A string the user meant as a path: starts like one, has a data-file suffix, or has several parts."""
    text = str(source)
    return (isinstance(source, Path) or text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
            or Path(text).suffix.lower() in _FILE_LIKE_SUFFIXES)


def looks_like_hub_id(source: Any) -> bool:
    """'org/name' that is not a path (a missing relative file like 'data/pairs.jsonl' is not a Hub id)."""
    text = str(source)
    return text.count("/") == 1 and all(text.split("/")) and not _looks_like_path(source)


def _check_file(path: Path) -> str:
    """The `datasets` builder for a data file, after the checks that give a clear line (type, emptiness)."""
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(_FILE_BUILDERS)}")
    size = path.stat().st_size
    if size == 0 or (builder != "parquet" and size < 1 << 20 and not path.read_bytes().strip()):
        raise InputError(f"{path}: the file is empty")
    return builder


def _file_error(path: Path, error: BaseException) -> InputError:
    """A file `datasets` could not read, as one line (with the line number for JSON Lines)."""
    if path.suffix.lower() in (".jsonl", ".json"):
        try:
            _read_json_rows(path)
        except InputError as precise:
            return precise
    return InputError(f"{path}: cannot read it as {path.suffix.lstrip('.')}: {first_line(error)}")


def _read_json_rows(path: Path) -> list[Any]:
    """The records of a .json (an array of objects) or .jsonl file, or an InputError naming the file, the line
    and the problem. Read with `json`, not Arrow: a cell whose type differs from the other rows' then reaches the
    row-level check, which names the row and the field, instead of failing the whole file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {error.start}); save it as UTF-8") from None
    if not text.strip():
        raise InputError(f"{path}: the file is empty")
    if path.suffix.lower() == ".json" and text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if text.lstrip().startswith("{") and "\n" in text.strip():
                return _json_lines(path, text)  # JSON Lines in a .json file, as datasets accepts
            raise InputError(f"{path}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") from None
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            return [data]
        raise InputError(f"{path}: expected a JSON array of objects, got a {type(data).__name__}")
    return _json_lines(path, text)


def _json_lines(path: Path, text: str) -> list[Any]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number}: not valid JSON: {error.msg} (column {error.colno})") from None
    return rows


def _read_csv_rows(path: Path) -> pd.DataFrame:
    """A CSV file as text, cell for cell: `6` stays "6" (not 6 or "6.0" in a column with an empty cell), `true` stays
    "true", and only an empty cell is missing (pandas' default would also turn "NA", "null" or "nan" into NaN)."""
    _check_file(path)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {error.start}); save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise InputError(f"{path}: cannot read it as csv: {first_line(error)}") from None


def _missing(value: Any) -> bool:
    """NaN, pandas' NA/NaT and None: a missing cell, never the text "nan"."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _python_value(value: Any) -> Any:
    """A DataFrame cell as a plain Python value: None when missing, numpy scalars and arrays (a parquet list
    column, e.g. chat messages) as numbers and lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if _missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _python_value(v) for k, v in record.items()} for record in frame.to_dict("records")]


def read_records(source: Any, *, split: str = "train") -> list[dict[str, Any]]:
    """Rows as plain dicts. In-memory lists, DataFrames, CSV and JSON files skip Arrow, so a mistyped cell reaches
    our row-level validation (with its row index) instead of failing the whole Arrow conversion, and a CSV cell is
    the text the user wrote."""
    path = Path(source).expanduser() if isinstance(source, (str, Path)) else None
    if isinstance(source, pd.DataFrame):
        records: list[Any] = _frame_records(source)
    elif isinstance(source, (list, tuple)):
        records = list(source)
    elif path is not None and path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
        records = _read_json_rows(path)  # its own "the file is empty" and UTF-8 checks
    elif path is not None and path.is_file() and path.suffix.lower() == ".csv":
        records = _frame_records(_read_csv_rows(path))
    else:
        return read_rows(source, split=split).to_list()
    rows = []
    for index, record in enumerate(records):
        if isinstance(record, PreferencePair):
            record = record.model_dump()
        if not isinstance(record, Mapping):
            raise InvalidRowError(index, "row", f"expected an object of fields, got {type(record).__name__}")
        rows.append({str(k): v for k, v in record.items()})
    return rows


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
    raise InputError(
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


#: UTF-16 surrogate halves: a Python string may hold them (a bad decode, a JSON "\\ud800" escape), UTF-8 cannot
_SURROGATE = re.compile("[\ud800-\udfff]")


def unencodable(value: Any) -> str | None:
    """Where `value` (a string, or lists and mappings of them) holds text that cannot be written as UTF-8, in words;
    None when all of it can."""
    if isinstance(value, str):
        if value.isascii():  # the common case, checked in C without a regex scan
            return None
        found = _SURROGATE.search(value)
        return None if found is None else f"the lone surrogate U+{ord(found.group()):04X} at character {found.start()}"
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return next((where for where in map(unencodable, value) if where), None)
    return None


def _check_encodable(row: Mapping[str, Any], index: int) -> None:
    for name, value in row.items():
        where = unencodable(value)
        if where:
            raise InvalidRowError(index, str(name), f"contains {where}: text that cannot be encoded as UTF-8")


def answer_text(value: Any) -> str | None:
    """A ground-truth answer cell as text: a float column's 6.0 is the "6" the user wrote, a missing cell is None."""
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _same_context(a: list[dict[str, str]], b: list[dict[str, str]]) -> bool:
    return [(m["role"], m["content"]) for m in a] == [(m["role"], m["content"]) for m in b]


def _prompt_mismatch(index: int, name: str, other: str) -> InvalidRowError:
    """Chosen and rejected must answer one prompt; a pair across two conversations is no preference."""
    return InvalidRowError(index, name, f"the conversation's prompt (the messages before its last assistant reply) "
                           f"differs from {other}: chosen and rejected must answer the same prompt")


def _check_same_prompt(context: list[dict[str, str]], prompt: list[dict[str, str]], index: int, name: str,
                       other: str) -> None:
    """A conversation that repeats its prompt (a non-empty `context`) must repeat `prompt`."""
    if context and not _same_context(context, prompt):
        raise _prompt_mismatch(index, name, other)


def _text(value: Any, index: int, name: str) -> str:
    if value is None:
        raise InvalidRowError(index, name, "expected a non-empty string, got nothing")
    if not isinstance(value, str):
        raise InvalidRowError(index, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidRowError(index, name, "expected a non-empty string")
    return value


def _gsm8k_answer(solution: str) -> str | None:
    return solution.rsplit("####", 1)[1].strip() if "####" in solution else None


def row_to_pair(row: Mapping[str, Any], index: int, layout: str, *, task: Task | None, rejected_column: str | None) -> PreferencePair:
    _check_encodable(row, index)
    meta = {k: v for k, v in row.items() if k.startswith("score_") or k in ("source", "dataset", "prompt_id")}
    ident = row.get("id", row.get("prompt_id", row.get("idx")))
    ident = None if ident is None else str(ident)
    if layout == "standard":
        prompt = _text(row.get("prompt"), index, "prompt")
        chosen, rejected = _text(row.get("chosen"), index, "chosen"), _text(row.get("rejected"), index, "rejected")
    elif layout == "conversational":
        chosen_msgs = _messages(row.get("chosen"), index, "chosen")
        rejected_msgs = _messages(row.get("rejected"), index, "rejected")
        chosen_context, chosen = _last_assistant(chosen_msgs, index, "chosen")
        rejected_context, rejected = _last_assistant(rejected_msgs, index, "rejected")
        if row.get("prompt") is not None:
            prompt = _messages(row["prompt"], index, "prompt")
            _check_same_prompt(chosen_context, prompt, index, "chosen", "the 'prompt' field")
            _check_same_prompt(rejected_context, prompt, index, "rejected", "the 'prompt' field")
        else:  # implicit prompt: the shared conversation before the last assistant turn
            prompt = chosen_context
            if not _same_context(rejected_context, chosen_context):
                raise _prompt_mismatch(index, "rejected", "chosen's")
        chosen, rejected = _text(chosen, index, "chosen"), _text(rejected, index, "rejected")
    elif layout == "ultrafeedback":
        prompt_text = _text(row.get("prompt"), index, "prompt")
        context, chosen = _last_assistant(_messages(row.get("chosen"), index, "chosen"), index, "chosen")
        rejected_context, rejected = _last_assistant(_messages(row.get("rejected"), index, "rejected"), index,
                                                     "rejected")
        _check_same_prompt(rejected_context, context, index, "rejected", "chosen's")
        prompt = context if len(context) > 1 else [{"role": "user", "content": prompt_text}]
        chosen, rejected = _text(chosen, index, "chosen"), _text(rejected, index, "rejected")
    elif layout == "qa":
        problem_key = "problem" if "problem" in row else "question"
        prompt = _text(row.get(problem_key), index, problem_key)
        solution_key = "solution" if "solution" in row else "answer"
        chosen = _text(row.get(solution_key), index, solution_key)
        answer = answer_text(row.get("answer")) if solution_key == "solution" else _gsm8k_answer(chosen)
        column = rejected_column or next((c for c in _MODEL_OUTPUT_COLUMNS if c in row), None)
        if column is None:
            raise InvalidRowError(index, "rejected", "QA/math rows need a model answer (y_l) column "
                                  f"(one of {list(_MODEL_OUTPUT_COLUMNS)}); build one with bmc_data.make_pairs")
        rejected = _text(row.get(column), index, column)
        task = task or (Task.MATH if solution_key == "answer" else Task.QA)
        return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, id=ident, task=task, answer=answer,
                              metadata=meta)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, id=ident, task=task,
                          answer=answer_text(row.get("answer")), metadata=meta)


def check_known_answer(pair: PreferencePair, index: int, task: Task | None = None) -> None:
    """QA/math rows need the final answer ỹ_w is checked against (unless the user turned the check off)."""
    task = task or pair.task
    if task is not None and task.has_ground_truth and known_answer(pair) is None:
        raise InvalidRowError(index, "answer", "no known final answer: the row has no 'answer' and its chosen "
                              "response states none ('The answer is X', '#### X' or \\boxed{X}); add an answer "
                              "column, or bridge without the ground-truth check (answer_check=False, "
                              "--no-answer-check)")


def _detectable(row: Mapping[str, Any]) -> bool:
    try:
        detect_layout(row.keys(), row)
    except InputError:
        return False
    return True


def load_pairs(
    source: Any,
    *,
    task: Task | str | None = None,
    layout: Layout = "auto",
    split: str = "train",
    limit: int | None = None,
    rejected_column: str | None = None,
    on_invalid: OnInvalid = "raise",
    answer_check: bool = True,
) -> LoadedPairs:
    """Load and validate preference pairs, in input order.

    With ``on_invalid="raise"`` (default) the first bad row raises `InvalidRowError` naming the row index,
    the field and what was expected; with ``"skip"`` such rows are reported in `LoadedPairs.skipped`. QA/math
    rows without a known final answer are invalid unless ``answer_check=False`` (bridging then skips the
    ground-truth check).
    """
    if on_invalid not in ("raise", "skip"):
        raise UsageError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    check_count("limit", limit, none_means="every row")
    if layout not in ("auto", "standard", "conversational", "ultrafeedback", "qa"):
        raise UsageError(f"layout must be one of auto, standard, conversational, ultrafeedback, qa; got {layout!r}")
    task = parse_task(task) if task is not None else None
    rows = read_records(source, split=split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        return LoadedPairs([], layout if layout != "auto" else "standard")
    if on_invalid == "skip" and layout == "auto":  # the first row may be the bad one: detect from a good-looking row
        first = next((r for r in rows if _detectable(r)), rows[0])
    else:
        first = rows[0]
    resolved = detect_layout(first.keys(), first) if layout == "auto" else layout
    pairs, skipped, indices = [], [], []
    for index, row in enumerate(rows):
        try:
            pair = row_to_pair(row, index, resolved, task=task, rejected_column=rejected_column)
            if answer_check:
                check_known_answer(pair, index)
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
        logger.warning("skipped %d invalid row(s) of %d: %s", len(skipped), len(rows), "; ".join(
            f"row {r.index} field {r.field!r}: {r.message}" for r in skipped[:5]) + ("; ..." if len(skipped) > 5 else ""))
    return LoadedPairs(pairs, resolved, skipped, indices)
