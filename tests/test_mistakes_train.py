"""bmc_train's rows of docs/errors.md: every option, the config file, the dataset and the model path are checked
before any model is loaded (the model path given here never exists: reaching a load would be another error), and
the mask-recompute warning names both tokenizers."""

from __future__ import annotations

import json
import logging

import pytest
from datasets import Dataset
from test_hub import tiny_tokenizer

from bmc_data.pairs.schema import (
    CHOSEN_DIFF_MASK,
    MASK_TOKENIZER,
    MASK_TOKENIZER_HASH,
    REJECTED_DIFF_MASK,
)
from bmc_train.cli import main as cli_main
from bmc_train.trainer import compute_diff_mask_columns


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                            for i in range(3)))
    return path


def _run(tmp_path, data, *extra, capsys):
    code = cli_main(["--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(data),
                     "--output_dir", str(tmp_path / "o"), "--report_to", "none", *extra])
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return code, lines[0]


@pytest.mark.parametrize("extra,needle", [
    (["--beta", "-1"], "beta must be a finite number > 0"),
    (["--delta", "-1"], "delta must be >= 0"),
    (["--bpo_alpha", "0"], "bpo_alpha must be in (0, 1]"),
    (["--orpo_lambda", "-0.5"], "orpo_lambda must be a finite number >= 0"),
    (["--max_train_samples", "0"], "--max_train_samples must be >= 1"),
])
def test_bad_options_exit_2_before_loading_a_model(tmp_path, data, capsys, extra, needle):
    code, line = _run(tmp_path, data, *extra, capsys=capsys)
    assert code == 2 and needle in line


def test_config_file_mistakes(tmp_path, data, capsys):
    code, line = _run(tmp_path, data, "--config", str(tmp_path / "missing.yaml"), capsys=capsys)
    assert code == 2 and "missing.yaml: no such file" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: 0.1\nbogus_key: 3\n")
    code, line = _run(tmp_path, data, "--config", str(bad), capsys=capsys)
    assert code == 2 and "unknown key 'bogus_key'" in line
    bad.write_text("beta: [0.1\n")
    code, line = _run(tmp_path, data, "--config", str(bad), capsys=capsys)
    assert code == 2 and "not valid YAML" in line
    bad.write_text("")
    code, line = _run(tmp_path, data, "--config", str(bad), capsys=capsys)
    assert code == 2 and "the file is empty" in line


def test_dataset_and_model_path_mistakes(tmp_path, data, capsys, monkeypatch):
    code, line = _run(tmp_path, data, capsys=capsys)  # a valid dataset: the missing model path is what is named
    assert code == 2 and "--model_name_or_path" in line and "no-model: no such folder" in line
    monkeypatch.chdir(tmp_path)
    code, line = _run(tmp_path, "data/missing.jsonl", capsys=capsys)
    assert code == 2 and "--dataset_name data/missing.jsonl: no such file or folder" in line
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{oops}\n')
    code, line = _run(tmp_path, broken, capsys=capsys)
    assert code == 2 and "broken.jsonl:2: not valid JSON" in line
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": ["not", "a", "string"]}) + "\n")
    code, line = _run(tmp_path, wrong, capsys=capsys)
    assert code == 2 and "row 0: field 'rejected'" in line
    mixed = tmp_path / "mixed.jsonl"  # a cell whose type differs from the row above: Arrow cannot build the table
    mixed.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n"
                     + json.dumps({"prompt": "p", "chosen": "c", "rejected": ["not", "a", "string"]}) + "\n")
    code, line = _run(tmp_path, mixed, capsys=capsys)
    assert code == 2 and "row 1: field 'rejected'" in line


def test_a_missing_split_is_named(tmp_path, data, capsys):
    code, line = _run(tmp_path, data, "--dataset_train_split", "nope", capsys=capsys)
    assert code == 2 and f"--dataset_name {data}: split 'nope' not in ['train']" in line
    code, line = _run(tmp_path, data, "--eval_strategy", "steps", "--dataset_test_split", "held", capsys=capsys)
    assert code == 2 and f"--dataset_name {data}: split 'held' not in ['train']" in line


def test_identical_pairs_are_warned_about(tmp_path, capsys, caplog):
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
    caplog.set_level(logging.WARNING)
    code, _ = _run(tmp_path, same, capsys=capsys)
    assert code == 2  # stops at the missing model, after the data check
    warnings = [r.getMessage() for r in caplog.records if "chosen == rejected" in r.getMessage()]
    assert len(warnings) == 1, warnings  # the rows are checked once: one warning, not one per check
    assert "1 of 1 row(s) have chosen == rejected" in warnings[0]


def test_recomputing_masks_for_another_tokenizer_warns_naming_both(caplog):
    tok = tiny_tokenizer()
    ds = Dataset.from_list([{"chosen_ids": [1, 2, 3], "rejected_ids": [1, 4], CHOSEN_DIFF_MASK: [False, True, True],
                             REJECTED_DIFF_MASK: [False, True], MASK_TOKENIZER: "Qwen/Qwen2.5-7B-Instruct",
                             MASK_TOKENIZER_HASH: "0123abcd"}])
    caplog.set_level(logging.WARNING)
    out = compute_diff_mask_columns(ds, tok)
    warnings = [r.getMessage() for r in caplog.records if "diff masks were built for" in r.getMessage()]
    assert len(warnings) == 1
    assert "Qwen/Qwen2.5-7B-Instruct" in warnings[0] and "tiny-bpe-600" in warnings[0]
    assert out[0][CHOSEN_DIFF_MASK] == [False, True, True]


def test_output_dir_that_is_the_model_folder_is_refused(tmp_path, data, capsys):
    # save_model would write the trained weights over the model the run starts from (and its reference)
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "config.json").write_text("{}")
    code = cli_main(["--model_name_or_path", str(sft), "--dataset_name", str(data), "--output_dir",
                     str(tmp_path / "." / "sft"), "--report_to", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "--output_dir" in err and "would be saved over the model it starts from" in err
    assert (sft / "config.json").read_text() == "{}" and sorted(p.name for p in sft.iterdir()) == ["config.json"]


def test_conversational_rows_with_a_model_without_chat_template_exit_2(tmp_path, capsys):
    # before: TRL's ValueError after the model had loaded, reported as a bug (exit 1, "please report it")
    from bmc_train.testing import build_tiny_model

    model = build_tiny_model(tmp_path / "base", ["the answer is 4"] * 8)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    for file in model.glob("chat_template*"):
        file.unlink()
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"q{i}"}],
                                        "chosen": [{"role": "assistant", "content": f"good {i}"}],
                                        "rejected": [{"role": "assistant", "content": f"bad {i}"}]}) + "\n"
                            for i in range(3)))
    code = cli_main(["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir",
                     str(tmp_path / "o"), "--report_to", "none"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"--model_name_or_path {model}: its tokenizer has no chat template" in lines[0]
    assert "please report it" not in lines[0]


def test_ignore_stopwords_applies_to_masks_stored_in_the_dataset(caplog):
    # before: masks stored for the same tokenizer were kept as they were, so --ignore_stopwords had no effect
    from bmc_data.tokens.stopwords import stopword_token_ids
    from bmc_data.tokens.tokenization import tokenizer_fingerprint, tokenizer_name

    tok = tiny_tokenizer()
    stop = min(stopword_token_ids(tok))
    word = next(i for i in range(50, len(tok)) if i not in stopword_token_ids(tok))
    ds = Dataset.from_list([{"chosen_ids": [word, stop], "rejected_ids": [word, word + 1],
                             CHOSEN_DIFF_MASK: [False, True], REJECTED_DIFF_MASK: [False, True],
                             MASK_TOKENIZER: tokenizer_name(tok), MASK_TOKENIZER_HASH: tokenizer_fingerprint(tok)}])
    assert compute_diff_mask_columns(ds, tok)[0][CHOSEN_DIFF_MASK] == [False, True]  # stored masks fit: kept
    caplog.set_level(logging.INFO)
    out = compute_diff_mask_columns(ds, tok, ignore_stopwords=True)
    assert out[0][CHOSEN_DIFF_MASK] == [False, False] and out[0][REJECTED_DIFF_MASK] == [False, True]
    assert any("ignore_stopwords" in r.getMessage() for r in caplog.records)
