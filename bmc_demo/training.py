"""Step 4 of the demo: a few DPO-BMC steps on CPU with SmolLM2-135M-Instruct itself as the policy."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bmc_data.outputs import OutputFolder

#: metrics printed after each step: the loss, the implicit reward margin and the λ statistics on diff tokens
SHOWN = ("loss", "rewards/margins", "rewards/accuracies", "bmc/lambda_chosen_mean", "bmc/lambda_rejected_mean",
         "bmc/lambda_capped_fraction")


POLICY = "smollm2-135m-instruct-fp32"
TRAINED = "dpo-bmc"


def policy_folder(folder: OutputFolder) -> Path:
    """The embedded GGUF as a plain float32 transformers folder under the demo's folder: converted once, reused
    while every file in it is the one the demo wrote."""
    from bmc_data.providers.embedded import embedded_model_file
    from bmc_train.testing import save_gguf_as_float32

    if not folder.keep_tree(POLICY):
        gguf = embedded_model_file()
        with staging(folder) as tmp:
            save_gguf_as_float32(str(gguf.parent), gguf.name, tmp)
            folder.adopt_tree(tmp, POLICY)
    return folder.folder / POLICY


@contextmanager
def staging(folder: OutputFolder) -> Iterator[Path]:
    """A temporary folder inside the demo's folder (same file system: its files move into place, not copied)."""
    with tempfile.TemporaryDirectory(dir=folder.folder, prefix=".bmc-staging-") as tmp:
        yield Path(tmp)


def as_conversation(row: dict[str, Any]) -> dict[str, Any]:
    """A bridged row in TRL's conversational layout, so the policy sees its own chat template."""
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def train_policy(rows: list[dict[str, Any]], policy: Path, folder: OutputFolder, *, steps: int, delta: float = 3.0,
                 beta: float = 0.05) -> list[dict[str, float]]:
    """Train `steps` DPO-BMC steps (batch 2) on the bridged `rows`, save the weights to `dpo-bmc/` in `folder`, and
    return the logged metrics of each step. QA values of the paper: β 0.05, δ 3.0; the learning rate is raised so that a
    few steps move the policy visibly."""
    with staging(folder) as out:
        history = _train(rows, policy, out, steps=steps, delta=delta, beta=beta)
        folder.adopt_tree(out, TRAINED)
    return history


def _train(rows: list[dict[str, Any]], policy: Path, out: Path, *, steps: int, delta: float, beta: float
           ) -> list[dict[str, float]]:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    from bmc_train import BMCConfig, BMCTrainer

    args = BMCConfig(output_dir=str(out), loss_type="bmc", beta=beta, delta=delta, learning_rate=5e-5,
                     lr_scheduler_type="constant", warmup_steps=0, max_steps=steps, per_device_train_batch_size=2,
                     max_length=320, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                     use_cpu=True, dataloader_num_workers=0,
                     activation_checkpointing=False)  # 135M on CPU: no memory to save, only recomputation
    trainer = BMCTrainer(str(policy), args=args, train_dataset=Dataset.from_list([as_conversation(r) for r in rows]))
    trainer.remove_callback(PrinterCallback)  # the demo prints its own lines from the log history
    trainer.train()
    trainer.save_model(str(out))
    return [{k: float(v) for k, v in entry.items() if k in SHOWN}
            for entry in trainer.state.log_history if "loss" in entry]
