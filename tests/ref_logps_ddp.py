"""Run by tests/test_reference.py under `accelerate launch --cpu --num_processes 2`: precompute per-token reference
log-probs with BMCTrainer, count the rows each rank's model forwards, then train one step.

    accelerate launch --cpu --num_processes 2 tests/ref_logps_ddp.py MODEL_DIR PAIRS.parquet OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from bmc_train import BMCConfig, BMCTrainer


def main() -> None:
    model_dir, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = {"n": 0}

    def count(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows["n"] += ids.shape[0] // 2  # [chosen; rejected]

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    args = BMCConfig(
        output_dir=str(out / "run"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3, report_to="none",
        save_strategy="no", gradient_checkpointing=False, max_length=160, disable_tqdm=True, warmup_steps=0, seed=0,
        precompute_ref_log_probs=True, precompute_ref_dtype="float32", precompute_ref_batch_size=4,
        precompute_ref_cache_dir=str(out / "cache"), use_cpu=True,  # gloo: accelerate picks MULTI_CPU only with it
    )
    trainer = BMCTrainer(model=model, args=args, train_dataset=Dataset.from_parquet(data))
    hook.remove()
    acc = trainer.accelerator
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{acc.process_index}.json").write_text(
        json.dumps({"world": acc.num_processes, "rows_forwarded": rows["n"]}))
    trainer.train()


if __name__ == "__main__":
    main()
    # leave the process group before exit: a gloo thread still running at interpreter exit aborts the rank
    # ("terminate called without an active exception", exit -6) after the work is done
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
