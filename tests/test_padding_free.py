"""`padding_free=True`: the packed batch (one row, `position_ids`, no attention mask) gives the padded run's loss and
gradients on the same rows, for every BMC objective, with live and precomputed references and γ-SimPO's queue;
plus the packing round trip itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset

from bmc_train import BMCConfig, BMCTrainer
from bmc_train.collator import DIFF_MASK
from bmc_train.packing import SEQ_LENGTHS, pack_batch, unpack_shifted, unpack_tokens
from bmc_train.reference import REF_PER_TOKEN
from bmc_train.testing import build_tiny_model, loss_and_grads, qa_bridged_rows, read_qa_rows

REPO = Path(__file__).resolve().parents[1]
SHARED_QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"

pytestmark = [pytest.mark.skipif(not SHARED_QA.exists(), reason=f"QA data not found at {SHARED_QA}"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    rows = read_qa_rows(SHARED_QA, limit=24)
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), [r["problem"] + "\n" + r["solution"] for r in rows])


@pytest.fixture(scope="module")
def pairs():
    rows = qa_bridged_rows(read_qa_rows(SHARED_QA, limit=24))[:8]
    for i, row in enumerate(rows):
        row["reward_margin"] = [-8.0, 0.5, 3.0, 12.0][i % 4]  # MADPO's per-pair input
    return Dataset.from_list(rows)


def _trainer(tmp_path, model, pairs, padding_free, **kwargs):
    args = BMCConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-3,
                     report_to="none", save_strategy="no", gradient_checkpointing=False, max_length=192,
                     disable_tqdm=True, warmup_steps=0, seed=0, padding_free=padding_free,
                     precompute_ref_cache_dir=str(tmp_path / "refcache"), **kwargs)
    return BMCTrainer(model=str(model), args=args, train_dataset=pairs)


def _drift(trainer):
    """Move the policy off the reference (the same way in both runs), so rewards and accuracies are not noise."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _loss_and_grads(trainer, rows):
    _drift(trainer)
    return loss_and_grads(trainer, rows)


# every objective family in its BMC-weighted form (the plain types are the same functions with λ = 1), the paper's
# and the official reference weights, a precomputed reference, and γ-SimPO with its queue
CASES = [{"loss_type": t} for t in ("bmc", "ipo_bmc", "rdpo_bmc", "simpo_bmc", "orpo_bmc", "figa", "bpo_bmc",
                                     "bpo_hinge_bmc", "gammapo_bmc", "amapo_bmc", "repo_bmc", "madpo_bmc", "dpo")]
CASES += [{"loss_type": "gammapo_simpo_bmc", "gammapo_queue_size": 64},
          {"loss_type": "bmc", "bmc_reference_weights": "reference"},
          {"loss_type": "bmc", "precompute_ref_log_probs": True, "precompute_ref_dtype": "float32"},
          {"loss_type": "rdpo_bmc", "precompute_ref_log_probs": True, "precompute_ref_dtype": "float32",
               "bmc_reference_weights": "reference"}]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_padding_free_equals_padded_loss_and_gradients(tmp_path, tiny_model, pairs, case):
    padded = _trainer(tmp_path, tiny_model, pairs, False, **case)
    packed = _trainer(tmp_path, tiny_model, pairs, True, **case)
    rows = [0, 3, 5, 6]  # prompts and responses of different lengths
    batch_pad, loss_pad, grads_pad = _loss_and_grads(padded, rows)
    batch_pf, loss_pf, grads_pf = _loss_and_grads(packed, rows)
    assert "attention_mask" not in batch_pf and batch_pf["input_ids"].shape[0] == 1
    assert batch_pf["input_ids"].shape[1] == int(batch_pad["attention_mask"].sum()) < batch_pad["input_ids"].numel()
    assert abs(loss_pad.item() - loss_pf.item()) <= 1e-5, (loss_pad, loss_pf)
    assert grads_pad.keys() == grads_pf.keys()
    worst = max((grads_pad[n] - grads_pf[n]).abs().max().item() for n in grads_pad)
    assert worst <= 1e-5, worst
    # the logged metrics are the padded run's too (rewards, λ statistics, token counts)
    for key, values in padded._metrics["train"].items():
        assert packed._metrics["train"][key] == pytest.approx(values, abs=1e-5), key
    if case.get("gammapo_queue_size"):
        assert list(packed._gap_queue.gaps) == pytest.approx(list(padded._gap_queue.gaps), abs=1e-5)


def test_pack_and_unpack_round_trip():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])
    attention = (ids != 0).long()
    attention[2] = 1
    shifted = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.0, 0.0], [0.4, 0.5, 0.6]])
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": attention, DIFF_MASK: ids > 6,
             REF_PER_TOKEN: shifted}
    packed = pack_batch(batch, token_keys=("input_ids", "completion_mask", DIFF_MASK), shifted_keys=(REF_PER_TOKEN,),
                        pad_to_multiple_of=4)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4, 0, 0, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0, 0]]
    assert packed[SEQ_LENGTHS].tolist() == [3, 2, 4]
    # the value that scores token t + 1 of a row sits at its packed position; boundaries hold 0
    assert torch.allclose(packed[REF_PER_TOKEN][0, :9], torch.tensor([0.1, 0.2, 0.0, 0.3, 0.0, 0.4, 0.5, 0.6, 0.0]))
    assert torch.equal(unpack_tokens(packed["input_ids"], packed[SEQ_LENGTHS]), ids)
    assert torch.allclose(unpack_shifted(packed[REF_PER_TOKEN], packed[SEQ_LENGTHS]), shifted)
    assert torch.equal(unpack_tokens(packed[DIFF_MASK], packed[SEQ_LENGTHS]), ids > 6)
