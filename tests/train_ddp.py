"""Run by tests/test_multiprocess.py: train three steps of DPO-BMC (live reference, precomputed reference) and of
γ-SimPO-BMC with its queue, under `accelerate launch --num_processes 2` (per-device batch 2) or as one plain process
(per-device batch 4: the same global batch), and write what each process saw.

    accelerate launch --cpu --num_processes 2 tests/train_ddp.py MODEL_DIR PAIRS.parquet OUT_DIR 2
    python tests/train_ddp.py MODEL_DIR PAIRS.parquet OUT_DIR 4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset

from bmc_train import BMCConfig, BMCTrainer

CONFIGS = {
    "live": {"loss_type": "bmc"},
    "precomputed": {"loss_type": "bmc", "precompute_ref_log_probs": True, "precompute_ref_dtype": "float32"},
    "gammapo": {"loss_type": "gammapo_simpo_bmc", "gammapo_simpo_beta": 2.0},
}


class RecordingTrainer(BMCTrainer):
    """Keeps every micro-batch loss unrounded (the log history rounds `loss` to 4 digits)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.recorded.append((loss[0] if return_outputs else loss).item())
        return loss


def main() -> None:
    model_dir, data, out, per_device = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    for name, extra in CONFIGS.items():
        args = BMCConfig(
            output_dir=str(out / name), max_steps=3, per_device_train_batch_size=per_device, learning_rate=0.5,
            optim="sgd",  # weights linear in the gradients: Adam's g/√v would blow float noise up to ±lr
            report_to="none", save_strategy="steps", save_steps=3, save_only_model=False, logging_steps=1,
            gradient_checkpointing=False, max_length=160, disable_tqdm=True, warmup_steps=0, seed=0, use_cpu=True,
            precompute_ref_cache_dir=str(out / "cache"), **extra,
        )
        trainer = RecordingTrainer(model=model_dir, args=args, train_dataset=Dataset.from_parquet(data))
        trainer.recorded = []
        trainer.train()
        acc = trainer.accelerator
        rank = acc.process_index
        record = {"world": acc.num_processes, "losses": trainer.recorded,
                  "log_history": [h for h in trainer.state.log_history if "loss" in h]}
        if trainer._gap_queue is not None:
            record["queue"] = list(trainer._gap_queue.gaps)
        (out / f"{name}_rank{rank}.json").write_text(json.dumps(record))
        if acc.is_main_process:
            state = acc.unwrap_model(trainer.model).state_dict()
            torch.save({k: v.detach().cpu() for k, v in state.items()}, out / f"{name}_weights.pt")
        acc.wait_for_everyone()


if __name__ == "__main__":
    main()
    # leave the process group before exit: a gloo thread still running at interpreter exit aborts the rank
    # ("terminate called without an active exception", exit -6) after the work is done
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
