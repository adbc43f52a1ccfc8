"""bmc_train's option edges (issue 19): each is one line and exit 2 before any model is loaded. The model path
given here never exists, so a run that gets past every check stops at "--model_name_or_path ...: no such folder"
(and a check that is missing shows up as that line, or as a traceback after loading)."""

from __future__ import annotations

import json

import pytest
from llm_servers import LLMServer, bridge_reply

from bmc_train.cli import main as cli_main


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                            for i in range(3)))
    return path


def _run(tmp_path, data, *extra, capsys, output_dir=None):
    code = cli_main(["--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(data),
                     "--output_dir", str(output_dir or tmp_path / "o"), "--report_to", "none", *extra])
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return code, lines[0]


def _reaches_the_model(code, line):
    return code == 2 and "--model_name_or_path" in line and "no such folder" in line


@pytest.mark.parametrize("extra,needle", [
    (["--learning_rate", "-1"], "learning_rate must be a finite number >= 0, got -1"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be >= 1, got 0"),
    (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be >= 1, got 0"),
    (["--max_steps", "0"], "max_steps must be >= 1 (or -1 to train num_train_epochs), got 0"),
    (["--num_train_epochs", "0"], "num_train_epochs must be a finite number > 0 (or set max_steps), got 0"),
    (["--eval_strategy", "steps"], "--eval_strategy steps needs an evaluation split: pass --dataset_test_split"),
])
def test_numeric_and_eval_options_exit_2_before_loading_a_model(tmp_path, data, capsys, extra, needle):
    code, line = _run(tmp_path, data, *extra, capsys=capsys)
    assert code == 2 and needle in line, line


def test_an_output_dir_that_is_a_file_names_output_dir(tmp_path, data, capsys):
    (tmp_path / "out.txt").write_text("notes")
    code, line = _run(tmp_path, data, capsys=capsys, output_dir=tmp_path / "out.txt")
    assert code == 2 and "--output_dir" in line and "is a file" in line and "model_name_or_path" not in line
    code, line = _run(tmp_path, data, capsys=capsys, output_dir="/proc/bmc-train-out")
    assert code == 2 and "--output_dir /proc/bmc-train-out" in line and "cannot write" in line
    assert (tmp_path / "out.txt").read_text() == "notes"


def test_config_equals_form_and_yaml_type_errors_name_the_key_and_the_file(tmp_path, data, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("beta: 0.1\nloss_type: bmc\n")
    assert _reaches_the_model(*_run(tmp_path, data, f"--config={config}", capsys=capsys))
    for text, key, expected in [("beta: abc\n", "beta", "a float"), ("max_steps: 2.5\n", "max_steps", "an int"),
                                ("beta: [0.1, 0.2]\n", "beta", "a float"),
                                ("loss_type: nonsense\n", "loss_type", "one of"),
                                ("use_original_chosen: maybe\n", "use_original_chosen", "a bool")]:
        config.write_text(text)
        code, line = _run(tmp_path, data, "--config", str(config), capsys=capsys)
        assert code == 2 and str(config) in line and f"key {key!r}" in line and expected in line, line


def test_a_bad_flag_value_is_one_line_not_a_usage_dump(tmp_path, data, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["--model_name_or_path", "m", "--dataset_name", str(data), "--beta", "abc"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) <= 2 and "--beta" in lines[-1] and "abc" in lines[-1] and "--help" in err, err


def test_transformers_debug_values_pass_through_and_bare_debug_is_bmcs(tmp_path, data, capsys):
    from bmc_train.cli import split_debug_flag

    argv, traceback = split_debug_flag(["--debug", "underflow_overflow", "--beta", "0.1"])
    assert argv == ["--debug=underflow_overflow", "--beta", "0.1"] and not traceback
    argv, traceback = split_debug_flag(["--beta", "0.1", "--debug"])
    assert argv == ["--beta", "0.1"] and traceback
    argv, traceback = split_debug_flag(["--bmc_debug", "--debug=tpu_metrics_debug"])
    assert argv == ["--debug=tpu_metrics_debug"] and traceback
    # a real run: transformers' option parses (the run reaches the model path), with no traceback
    assert _reaches_the_model(*_run(tmp_path, data, "--debug", "underflow_overflow", capsys=capsys))


def test_a_bridge_make_pairs_output_folder_loads_in_bmc_train(tmp_path, capsys, monkeypatch, shared_data):
    from bmc_data.__main__ import main as bridge_main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-trainEDGE-0123456789")

    def reply(messages):  # y_l sampling gets a wrong answer; the editor revises to the reference solution
        return bridge_reply(messages) if "### Student solution" in messages[-1]["content"] else "The answer is cake"

    out = tmp_path / "bridged"
    with LLMServer(reply=reply) as server:
        assert bridge_main(["bridge", "--source", str(shared_data / "qa" / "ecqa-train.jsonl"), "--task", "qa",
                            "--make-pairs", "--limit", "3", "--quiet", "--provider", "openai", "--model", "editor",
                            "--base-url", server.openai_base_url, "--out", str(out),
                            "--cache-dir", str(tmp_path / "c")]) == 0
    assert (out / "pairs.jsonl").exists() and (out / "bridged.parquet").exists()
    capsys.readouterr()
    assert _reaches_the_model(*_run(tmp_path, out, capsys=capsys))
    from bmc_train.cli import load_preference_dataset

    loaded = load_preference_dataset(str(out))
    assert list(loaded) == ["train"] and "bmc_status" in loaded["train"].column_names and len(loaded["train"]) == 3


def test_every_bundled_recipe_passes_the_config_type_check():
    from pathlib import Path

    from bmc_train.cli import check_config_file, make_parser

    parser = make_parser()
    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert len(recipes) >= 3
    for recipe in recipes:
        check_config_file(["--config", str(recipe)], parser)  # raises UsageError on a key or type it rejects


def test_a_csv_whose_responses_look_like_numbers_trains_as_text(tmp_path, capsys):
    from bmc_train.cli import load_preference_dataset

    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\nHalf of 3?,1.50,2\nIs 7 prime?,true,false\n")
    assert load_preference_dataset(str(path))["train"].to_list() == [
        {"prompt": "Half of 3?", "chosen": "1.50", "rejected": "2"},
        {"prompt": "Is 7 prime?", "chosen": "true", "rejected": "false"}]
    assert _reaches_the_model(*_run(tmp_path, path, capsys=capsys))
