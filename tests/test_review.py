"""`bmc_data.apply_review`: a reviewer's decisions (exported from the review page) applied to a real dataset,
and every way a decisions file can fail to fit it refused with one line naming the rows."""

from __future__ import annotations

import json

import datasets
import pytest

import bmc_data
from bmc_data.errors import InputError, MissingFileError
from bmc_data.pairs import schema
from bmc_data.pairs.review import (
    REVIEW_DECISION,
    REVIEW_NOTE,
    ReviewMismatch,
    apply_review,
    review_fingerprint,
)


@pytest.fixture
def data() -> datasets.Dataset:
    return datasets.Dataset.from_list([
        {schema.ID: f"r{i}", schema.PROMPT: f"What is {i} + {i}?", schema.CHOSEN: f"It is {2 * i}.",
         schema.REJECTED: f"It is {2 * i + 1}.", "task": "math"} for i in range(6)])


def write(path, lines) -> str:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def test_drops_drop_rows_and_adds_decision_and_note(data, tmp_path):
    fp = review_fingerprint(data)
    path = write(tmp_path / "d.jsonl", [
        {"row": 1, "id": "r1", "decision": "drop", "note": "wrong", "dataset": fp},
        {"row": 2, "id": "r2", "decision": "flag", "note": "unsure", "dataset": fp},
        {"row": 4, "decision": "keep", "note": ""},
    ])
    out, review = bmc_data.apply_review(data, path, return_review=True)
    assert out[schema.ID] == ["r0", "r2", "r3", "r4", "r5"]
    assert out[REVIEW_DECISION] == ["", "flag", "", "keep", ""] and out[REVIEW_NOTE][1] == "unsure"
    assert review.counts() == {"rows": 6, "reviewed": 3, "keep": 1, "drop": 1, "flag": 1}
    assert out["task"] == ["math"] * 5  # other columns untouched
    again = apply_review(out, [{"row": 0, "decision": "flag", "note": "second look"}])  # a new review replaces ours
    assert again[REVIEW_DECISION][:2] == ["flag", ""] and again[REVIEW_NOTE][0] == "second look"


def test_fingerprint_ignores_how_the_rows_were_stored(data, tmp_path):
    data.to_parquet(str(tmp_path / "d.parquet"))
    data.to_json(str(tmp_path / "d.jsonl"))
    assert review_fingerprint(datasets.Dataset.from_parquet(str(tmp_path / "d.parquet"))) == \
        review_fingerprint(datasets.Dataset.from_json(str(tmp_path / "d.jsonl"))) == review_fingerprint(data)
    assert review_fingerprint(data.select(range(5))) != review_fingerprint(data)


@pytest.mark.parametrize("lines,needle", [
    ([{"row": 6, "decision": "drop"}, {"row": 9, "decision": "keep"}], "row(s) 6, 9, but the dataset has 6 rows"),
    ([{"row": 2, "id": "r3", "decision": "drop"}], "row 2 has id 'r2', not 'r3'"),
    ([{"row": 2, "decision": "drop", "dataset": "0123456789abcdef"}], "the decisions are for dataset 0123456789abcdef"),
    ([{"row": 2, "decision": "drop"}, {"row": 2, "decision": "keep"}], "row 2 is decided twice (lines 1 and 2)"),
])
def test_decisions_that_do_not_fit_are_refused_naming_them(data, tmp_path, lines, needle):
    with pytest.raises(ReviewMismatch) as info:
        apply_review(data, write(tmp_path / "d.jsonl", lines))
    assert needle in str(info.value) and isinstance(info.value, InputError)


@pytest.mark.parametrize("text,needle", [
    ('{"row": 1, "decision": "maybe"}\n', "line 1: `decision` must be one of ['keep', 'drop', 'flag'], got 'maybe'"),
    ('{"row": -1, "decision": "keep"}\n', "line 1: `row` must be a row index >= 0, got -1"),
    ('{"row": 1, "decision": "keep"}\nnot json\n', "line 2: not JSON"),
    ("\n", "no decisions in it"),
])
def test_bad_decisions_file_is_one_line_naming_the_line(data, tmp_path, text, needle):
    (tmp_path / "d.jsonl").write_text(text)
    with pytest.raises(InputError) as info:
        apply_review(data, tmp_path / "d.jsonl")
    assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MissingFileError):
        apply_review(data, tmp_path / "none.jsonl")


def test_by_id_matches_one_split_of_the_reviewed_rows(data):
    part = data.select([3, 4, 5])  # e.g. the train split of a published folder
    out, review = apply_review(part, [{"row": 4, "id": "r4", "decision": "drop"},
                                      {"row": 0, "id": "r0", "decision": "keep"}], by="id", return_review=True)
    assert out[schema.ID] == ["r3", "r5"] and review.dropped == 1 and review.reviewed == 1
    with pytest.raises(ReviewMismatch, match="carry no `id`"):
        apply_review(part, [{"row": 4, "decision": "drop"}], by="id")


def test_by_id_refuses_an_id_that_names_several_rows():
    # several pairs per prompt often share the prompt's id: matching by id would pick one of them, maybe not the
    # row the reviewer decided on (before: the last row with that id was dropped, silently)
    data = datasets.Dataset.from_list([
        {schema.ID: i, schema.PROMPT: "p", schema.CHOSEN: f"c{k}", schema.REJECTED: f"r{k}"}
        for k, i in enumerate(["p0", "p1", "p1", "p2"])])
    with pytest.raises(ReviewMismatch, match="id 'p1' names 2 rows"):
        apply_review(data, [{"row": 1, "id": "p1", "decision": "drop"}], by="id")
    out = apply_review(data, [{"row": 3, "id": "p2", "decision": "drop"}], by="id")  # unique ids still match
    assert out[schema.CHOSEN] == ["c0", "c1", "c2"]
