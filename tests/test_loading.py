import json

import datasets
import pandas as pd
import pytest

from bmc_data import InvalidRowError, PreferencePair, load_pairs
from bmc_data.pairs.schema import Task

STANDARD = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
]
UF = [{
    "prompt": "Say hi", "prompt_id": "p1", "score_chosen": 8.5, "score_rejected": 3.0,
    "chosen": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}],
    "rejected": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "No."}],
}]


def _check_standard(pairs):
    assert pairs.layout == "standard"
    assert [p.rejected for p in pairs] == ["5", "Lyon"]


@pytest.mark.parametrize("kind", ["list", "dataframe", "dataset", "datasetdict", "jsonl", "json", "parquet", "csv", "folder"])
def test_every_source_kind(kind, tmp_path):
    ds = datasets.Dataset.from_list(STANDARD)
    source = {
        "list": STANDARD, "dataframe": pd.DataFrame(STANDARD), "dataset": ds,
        "datasetdict": datasets.DatasetDict(train=ds),
    }.get(kind)
    if kind in ("jsonl", "json", "parquet", "csv"):
        path = tmp_path / f"pairs.{kind}"
        if kind == "jsonl":
            ds.to_json(str(path), lines=True)
        elif kind == "json":
            path.write_text(json.dumps(STANDARD))
        elif kind == "parquet":
            ds.to_parquet(str(path))
        else:
            ds.to_csv(str(path), index=False)
        source = str(path)
    if kind == "folder":
        (tmp_path / "data").mkdir()
        ds.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
        source = tmp_path
    _check_standard(load_pairs(source))


def test_trl_conversational_explicit_and_implicit_prompt():
    explicit = [{"prompt": [{"role": "user", "content": "Hi"}],
                 "chosen": [{"role": "assistant", "content": "Hello!"}],
                 "rejected": [{"role": "assistant", "content": "Go away."}]}]
    pair = load_pairs(explicit)[0]
    assert pair.is_conversational and pair.chosen == "Hello!" and pair.rejected == "Go away."
    implicit = [{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                 "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}]
    loaded = load_pairs(implicit)
    assert loaded.layout == "conversational"
    assert loaded[0].prompt_messages() == [{"role": "user", "content": "Hi"}]


def test_ultrafeedback_binarized():
    pairs = load_pairs(UF)
    assert pairs.layout == "ultrafeedback"
    pair = pairs[0]
    assert pair.prompt_messages() == [{"role": "user", "content": "Say hi"}]
    assert (pair.chosen, pair.rejected, pair.id) == ("Hi there!", "No.", "p1")
    assert pair.metadata == {"score_chosen": 8.5, "score_rejected": 3.0, "prompt_id": "p1"}


def test_qa_ground_truth_plus_model_output(shared_data):
    rows = [json.loads(l) for l in (shared_data / "qa" / "ecqa-test.jsonl").read_text().splitlines()[:5]]
    for row in rows:
        row["model_output"] = "I am not sure.\nThe answer is boss"
    pairs = load_pairs(rows)
    assert pairs.layout == "qa"
    assert pairs[0].task is Task.QA
    assert pairs[0].chosen == rows[0]["solution"] and pairs[0].answer == rows[0]["answer"]
    assert pairs[0].rejected.endswith("boss")


def test_gsm8k_is_math_with_answer_after_hashes(shared_data):
    pairs = load_pairs(shared_data / "math" / "gsm8k-test.jsonl", rejected_column="answer", limit=3)
    assert pairs[0].task is Task.MATH and pairs[0].answer == "18"


def test_qa_without_model_answer_points_to_make_pairs():
    with pytest.raises(InvalidRowError, match="make_pairs"):
        load_pairs([{"problem": "q", "solution": "s\nThe answer is a", "answer": "a"}])


def test_bad_row_names_row_field_and_expectation():
    rows = STANDARD + [{"prompt": "x", "chosen": "ok", "rejected": 3}]
    with pytest.raises(InvalidRowError) as info:
        load_pairs(pd.DataFrame(rows).astype(object))
    assert (info.value.index, info.value.field) == (2, "rejected")
    assert "expected a string" in str(info.value)


def test_skip_mode_reports_and_keeps_order():
    rows = [STANDARD[0], {"prompt": "x", "chosen": "a", "rejected": "   "}, STANDARD[1]]
    pairs = load_pairs(rows, on_invalid="skip")
    assert [p.chosen for p in pairs] == ["4", "Paris"]
    assert pairs.source_indices == [0, 2]
    assert [(s.index, s.field) for s in pairs.skipped] == [(1, "rejected")]


def test_conversation_not_ending_with_assistant_is_rejected():
    rows = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "user", "content": "?"}],
             "rejected": [{"role": "assistant", "content": "x"}]}]
    with pytest.raises(InvalidRowError, match="end with an assistant message"):
        load_pairs(rows)


def test_unknown_layout_is_explained():
    with pytest.raises(ValueError, match="cannot tell the layout"):
        load_pairs([{"text": "hello"}])


def test_missing_path_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_pairs(str(tmp_path / "nope.jsonl"))


def test_preference_pair_validation():
    with pytest.raises(ValueError):
        PreferencePair(prompt="", chosen="a", rejected="b")
    pair = PreferencePair(prompt=[{"role": "user", "content": "q"}], chosen="a", rejected="b")
    assert pair.prompt_text().endswith("q")
