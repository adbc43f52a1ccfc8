"""Precomputed per-token reference log-probs (`precompute_ref_log_probs=True`) against the live reference pass, on a
tiny random Llama (built offline) and real QA pairs: losses, gradients, training under gradient accumulation, PEFT,
the on-disk cache and its key, stored columns from `bmc_data`, two processes, and the reference-free error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from bmc_data.tokens.ref_logps import (
    REF_CHOSEN_TOKEN_LOGPS,
    REF_LOGPS_IDENTITY,
    REF_REJECTED_TOKEN_LOGPS,
    add_reference_logps,
    expected_token_counts,
)
from bmc_train import BMCConfig, BMCTrainer
from bmc_train.testing import build_tiny_model, loss_and_grads, qa_bridged_rows, read_qa_rows
from launch import accelerate_launch

REPO = Path(__file__).resolve().parents[1]
SHARED_QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"

pytestmark = [pytest.mark.skipif(not SHARED_QA.exists(), reason=f"QA data not found at {SHARED_QA}"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def qa_rows():
    return read_qa_rows(SHARED_QA, limit=48)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, qa_rows):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), [r["problem"] + "\n" + r["solution"] for r in qa_rows])


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, qa_rows):  # same shape and tokenizer, other weights
    return build_tiny_model(tmp_path_factory.mktemp("tiny2"), [r["problem"] + "\n" + r["solution"] for r in qa_rows],
                            seed=1)


@pytest.fixture(scope="module")
def pairs(qa_rows):
    return Dataset.from_list(qa_bridged_rows(qa_rows)[:12])


def _config(tmp_path, **kwargs) -> BMCConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to="none", save_strategy="no", logging_steps=1, gradient_checkpointing=False, max_length=160,
        disable_tqdm=True, warmup_steps=0, seed=0, precompute_ref_cache_dir=str(tmp_path / "refcache"),
        precompute_ref_dtype="float32", precompute_ref_batch_size=5,
    )
    defaults.update(kwargs)
    if not defaults.get("precompute_ref_log_probs"):
        del defaults["precompute_ref_batch_size"]  # refused without a precompute pass (it would be ignored)
    return BMCConfig(**defaults)


def _loss_and_grads(trainer, rows=range(4)):
    return loss_and_grads(trainer, rows)[1:]


@pytest.mark.parametrize("loss_type", ["bmc", "ipo_bmc", "rdpo"])
def test_precomputed_loss_and_gradients_equal_live_float32(tmp_path, tiny_model, pairs, loss_type):
    live = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, loss_type=loss_type), train_dataset=pairs)
    pre = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, loss_type=loss_type, precompute_ref_log_probs=True),
                     train_dataset=pairs)
    assert pre.ref_model is None and live.ref_model is not None  # training holds the policy alone
    assert {REF_CHOSEN_TOKEN_LOGPS, REF_REJECTED_TOKEN_LOGPS} <= set(pre.train_dataset.column_names)
    # a row truncated by max_length: only its scored tokens are stored
    lengths = [expected_token_counts(len(r["prompt_ids"]), len(r["chosen_ids"]), 160) for r in pre.train_dataset]
    assert [len(v) for v in pre.train_dataset[REF_CHOSEN_TOKEN_LOGPS]] == lengths
    assert any(len(r["prompt_ids"]) + len(r["chosen_ids"]) > 160 for r in pre.train_dataset)
    for rows in (range(4), range(4, 9)):  # two batches, other sizes than the precompute batch (5)
        loss_live, grads_live = _loss_and_grads(live, rows)
        loss_pre, grads_pre = _loss_and_grads(pre, rows)
        assert abs(loss_live.item() - loss_pre.item()) <= 1e-6
        assert grads_live.keys() == grads_pre.keys()
        worst = max((grads_live[n] - grads_pre[n]).abs().max().item() for n in grads_live)
        assert worst <= 1e-6, worst


def test_training_under_gradient_accumulation_matches_live(tmp_path, tiny_model, pairs):
    kw = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2, loss_type="bmc")
    live = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, **kw), train_dataset=pairs)
    live.train()
    pre = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True,
                                                        precompute_ref_dtype="auto", **kw), train_dataset=pairs)
    assert pre.train_dataset.features[REF_CHOSEN_TOKEN_LOGPS].feature.dtype == "float32"  # auto, float32 run
    pre.train()
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (live, pre)]
    assert len(losses[0]) == 2 and np.allclose(losses[0], losses[1], atol=1e-6, rtol=0)
    live_params = dict(live.model.named_parameters())
    worst = max((p - live_params[n]).abs().max().item() for n, p in pre.model.named_parameters())
    assert worst <= 1e-6
    # the policy moved, so equality above is not trivially the initial weights
    assert (live.state.log_history[-2]["rewards/margins"] != 0.0)


def test_float16_storage_error_on_the_loss_is_small(tmp_path, tiny_model, pairs):
    f32 = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True), train_dataset=pairs)
    f16 = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True,
                                                        precompute_ref_dtype="float16"), train_dataset=pairs)
    assert f16.train_dataset.features[REF_CHOSEN_TOKEN_LOGPS].feature.dtype == "float16"
    l32, _ = _loss_and_grads(f32)
    l16, _ = _loss_and_grads(f16)
    assert 0 < abs(l32.item() - l16.item()) < 1e-3


def test_peft_reference_is_the_adapter_disabled_model(tmp_path, tiny_model, pairs):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    def trainer(precompute):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
        lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        args = _config(tmp_path, precompute_ref_log_probs=precompute, max_steps=2, gradient_accumulation_steps=2)
        return BMCTrainer(model=model, args=args, train_dataset=pairs, peft_config=lora)

    live, pre = trainer(False), trainer(True)
    # adapters start non-zero (init_lora_weights=False), so policy ≠ reference and the reference must be adapter-off
    loss_live, grads_live = _loss_and_grads(live)
    loss_pre, grads_pre = _loss_and_grads(pre)
    assert abs(loss_live.item() - loss_pre.item()) <= 1e-6
    assert max((grads_live[n] - grads_pre[n]).abs().max().item() for n in grads_live) <= 1e-6
    pre.train()
    assert len([h for h in pre.state.log_history if "loss" in h]) == 2


def _messages(caplog):
    return "\n".join(r.getMessage() for r in caplog.records)


def test_cache_is_reused_and_its_key_forces_recompute(tmp_path, tiny_model, other_model, pairs, caplog):
    caplog.set_level(logging.INFO, logger="bmc_train.reference")
    cache = tmp_path / "refcache"
    BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True), train_dataset=pairs,
               eval_dataset=pairs.select(range(4)))
    assert "train dataset: computing per-token reference log-probs" in _messages(caplog)
    assert "eval dataset: computing per-token reference log-probs" in _messages(caplog)
    files = sorted(cache.glob("*.arrow"))
    assert len(files) == 2 and not list(cache.glob("*.rank*"))  # train + eval, shards merged

    caplog.clear()  # a rerun computes nothing
    again = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True),
                       train_dataset=pairs)
    assert "train dataset: reusing cached per-token reference log-probs" in _messages(caplog)
    assert "computing" not in _messages(caplog)
    assert len(again.train_dataset[REF_CHOSEN_TOKEN_LOGPS][0]) > 0

    for changed in (dict(model=str(other_model)), dict(max_length=128)):
        caplog.clear()
        args = _config(tmp_path, precompute_ref_log_probs=True, **{k: v for k, v in changed.items() if k != "model"})
        BMCTrainer(model=changed.get("model", str(tiny_model)), args=args, train_dataset=pairs)
        assert "train dataset: computing per-token reference log-probs" in _messages(caplog), changed
    assert len(list(cache.glob("*.arrow"))) == 4


def test_changed_tokenizer_forces_recompute(tmp_path, tiny_model, pairs, caplog):
    from transformers import AutoTokenizer

    caplog.set_level(logging.INFO, logger="bmc_train.reference")
    BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True), train_dataset=pairs)
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    tok.add_tokens(["<|extra|>"])  # ids of existing text unchanged, the fingerprint is not
    caplog.clear()
    BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True), train_dataset=pairs,
               processing_class=tok)
    assert "train dataset: computing per-token reference log-probs" in _messages(caplog)


def test_stored_columns_from_bmc_data_are_used_only_for_the_same_reference(tmp_path, tiny_model, other_model, pairs,
                                                                           caplog):
    from transformers import AutoTokenizer

    caplog.set_level(logging.INFO, logger="bmc_train.reference")
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    carried = add_reference_logps(pairs, str(tiny_model), tok, max_length=160, dtype="float32", batch_size=3)
    identity = json.loads(carried[0][REF_LOGPS_IDENTITY])
    assert identity["model"] == str(tiny_model) and identity["max_length"] == 160

    trainer = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True),
                         train_dataset=carried)
    assert "train dataset: using its stored per-token reference log-probs" in _messages(caplog)
    assert "computing" not in _messages(caplog)
    fresh = BMCTrainer(model=str(tiny_model), args=_config(tmp_path / "b", precompute_ref_log_probs=True),
                       train_dataset=pairs)
    for side in (REF_CHOSEN_TOKEN_LOGPS, REF_REJECTED_TOKEN_LOGPS):
        for a, b in zip(trainer.train_dataset[side], fresh.train_dataset[side]):
            assert np.allclose(a, b, atol=1e-6, rtol=0)

    caplog.clear()
    BMCTrainer(model=str(other_model), args=_config(tmp_path, precompute_ref_log_probs=True), train_dataset=carried)
    text = _messages(caplog)
    assert "recomputing its stored per-token reference log-probs" in text and "weights" in text
    assert "train dataset: computing per-token reference log-probs" in text


@pytest.mark.parametrize("loss_type", ["simpo", "orpo", "figa", "repo"])
def test_reference_free_loss_types_refuse_precompute(tmp_path, loss_type):
    with pytest.raises(ValueError, match=rf"loss_type='{loss_type}'.*reference-free.*nothing to precompute"):
        _config(tmp_path, loss_type=loss_type, precompute_ref_log_probs=True)


def test_two_processes_compute_every_row_once_and_match_one_process(tmp_path, tiny_model, pairs):
    data = tmp_path / "pairs.parquet"
    pairs.to_parquet(str(data))
    out = tmp_path / "ddp"
    proc = accelerate_launch(REPO / "tests" / "ref_logps_ddp.py", str(tiny_model), str(data), str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    counts = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [c["world"] for c in counts] == [2, 2]
    assert [c["rows_forwarded"] for c in counts] == [6, 6]  # 12 rows, each computed once, split evenly
    manifest = json.loads(next((out / "cache").glob("*.json")).read_text())
    assert manifest["shards"] == {"0": [0, 6], "1": [6, 12]}

    single = BMCTrainer(model=str(tiny_model), args=_config(tmp_path, precompute_ref_log_probs=True),
                        train_dataset=Dataset.from_parquet(str(data)))
    two = Dataset.from_file(str(next((out / "cache").glob("*.arrow"))))
    for side in (REF_CHOSEN_TOKEN_LOGPS, REF_REJECTED_TOKEN_LOGPS):
        assert len(two[side]) == len(single.train_dataset[side])
        for a, b in zip(two[side], single.train_dataset[side]):
            assert len(a) == len(b) and np.allclose(a, b, atol=1e-6, rtol=0)


def test_weights_fingerprint_of_a_large_tensor_and_of_peft_wrapping():
    from bmc_data.tokens.ref_logps import weights_fingerprint

    big = torch.nn.Module()
    big.register_buffer("w", torch.zeros(2**24 + 3, dtype=torch.uint8))  # past float32's exact integers
    first = weights_fingerprint(big)
    big.w[-1] = 1  # the last element is always sampled
    assert weights_fingerprint(big) != first
    plain, wrapped = torch.nn.Module(), torch.nn.Module()
    plain.layer = torch.nn.Linear(2, 2)
    wrapped.base_model = torch.nn.Module()
    wrapped.base_model.model = torch.nn.Module()
    wrapped.base_model.model.layer = torch.nn.Module()
    wrapped.base_model.model.layer.base_layer = plain.layer
    wrapped.base_model.model.layer.lora_A = torch.nn.Linear(2, 1)  # adapter: not part of the reference
    assert weights_fingerprint(wrapped) == weights_fingerprint(plain)


def test_peft_reference_rule_is_one_copy_live_and_precompute(tmp_path, tiny_model, pairs):
    """The rule `reference = adapter-disabled policy (or its `ref` adapter)` lives in
    `bmc_train.reference.peft_reference_context`, used by the live pass and the precompute pass alike."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from bmc_train.reference import peft_reference_context

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = BMCTrainer(model=model, args=_config(tmp_path), train_dataset=pairs, peft_config=lora)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    live = trainer._reference_per_token_logps(kwargs, labels)
    with torch.no_grad():
        logits = base(**kwargs).logits[:, :-1].log_softmax(-1)
    expected = logits.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels[:, 1:] != -100)
    assert torch.allclose(live, expected, atol=1e-5)  # the base model: the adapter is off
    with torch.no_grad():
        policy = trainer.model(**kwargs, labels=labels, fused_lm_head=True).log_probs
    assert not torch.allclose(policy, live, atol=1e-4)  # ... and the policy is not (init_lora_weights=False)
    with peft_reference_context(trainer), torch.no_grad():  # the same rule, the context the precompute uses
        assert torch.allclose(trainer.model(**kwargs, labels=labels, fused_lm_head=True).log_probs, live, atol=1e-6)
