"""`python -m bmc_train` / `bmc-train`: train a model with a BMC objective on a (bridged) preference dataset.

    python -m bmc_train --config recipes/qa.yaml --model_name_or_path ./sft-model --dataset_name ./bridged-qa \
        --output_dir ./qa-dpo-bmc

Every `BMCConfig` (i.e. `DPOConfig` / `TrainingArguments`) and `ModelConfig` option is a flag; `--config FILE.yaml`
sets defaults that flags override (TRL's `TrlParser`). `--help` lists them all.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmc_data.schema import CHOSEN, ORIGINAL_CHOSEN, PROMPT, REJECTED, STATUS

logger = logging.getLogger("bmc_train")

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass
class BMCScriptArguments:
    """Where the data comes from and which rows are trained on."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "The preference dataset: a local folder written by bmc_data (parquet under data/), a data file "
            "(.parquet/.jsonl/.json/.csv), or a Hugging Face Hub dataset id."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration (Hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (used when eval_strategy is not 'no')."}
    )
    status_filter: str = field(
        default="bridged",
        metadata={
            "help": f"Keep only rows whose `{STATUS}` is in this comma-separated list when the column exists "
            "(default: the bridged pairs). 'all' keeps every row, e.g. to train plain DPO on the original pairs."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on at most this many rows (after filtering), for quick runs."}
    )


def make_parser(prog: str | None = None):
    from trl import ModelConfig, TrlParser

    from .config import BMCConfig

    return TrlParser(
        (BMCScriptArguments, BMCConfig, ModelConfig),
        prog=prog or "python -m bmc_train",
        description="Train a causal LM with a BMC objective (DPO-BMC by default) on TRL's DPOTrainer. "
        "--config FILE.yaml reads any of the options below from a YAML mapping (plus an optional `env:` mapping of "
        "environment variables); flags given on the command line override it. Recipes: recipes/{qa,math,instruction}.yaml.",
    )


def load_preference_dataset(name: str, config: str | None = None):
    """A `DatasetDict` from a bmc_data folder, a data file, or a Hub id."""
    from datasets import load_dataset

    path = Path(name)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"--dataset_name {name}: unsupported file type {path.suffix!r}; use one of {sorted(_FILE_BUILDERS)}")
        return load_dataset(builder, data_files={"train": str(path)})
    return load_dataset(name, name=config)


def select_rows(dataset, split_label: str, *, status_filter: str, use_original_chosen: bool, max_rows: int | None,
                loss_type: str | None = None):
    """Check the columns the trainer needs (before any model is loaded) and apply the `bmc_status` filter.

    `loss_type` adds the per-example columns that objective reads (MADPO's `reward_margin`)."""
    columns = dataset.column_names
    needed = [PROMPT, CHOSEN, REJECTED] + ([ORIGINAL_CHOSEN] if use_original_chosen else [])
    per_example = []
    if loss_type is not None:
        from .losses import get_loss_type

        per_example = list(get_loss_type(loss_type).batch_inputs.values())
    missing = [c for c in needed + per_example if c not in columns]
    if missing:
        hint = " (use_original_chosen=True trains on it)" if ORIGINAL_CHOSEN in missing else ""
        if any(c in per_example for c in missing):
            hint += f" (loss_type={loss_type!r} reads it per example; see docs/related-objectives.md)"
        raise ValueError(
            f"the {split_label} split is missing column(s) {missing}{hint}; it has {columns}. A preference dataset "
            f"needs `{PROMPT}`, `{CHOSEN}` and `{REJECTED}` (bmc_data writes them)."
        )
    if STATUS in columns and status_filter.strip().lower() != "all":
        keep = {s.strip() for s in status_filter.split(",") if s.strip()}
        before = len(dataset)
        dataset = dataset.filter(lambda status: status in keep, input_columns=STATUS, desc=f"Keeping {status_filter} rows")
        logger.info("kept %d of %d %s rows with %s in %s", len(dataset), before, split_label, STATUS, sorted(keep))
        if len(dataset) == 0:
            raise ValueError(
                f"no {split_label} row has {STATUS} in {sorted(keep)}; pass --status_filter all to train on every row"
            )
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    return dataset


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    return train(script_args, training_args, model_args)


def train(script_args: BMCScriptArguments, training_args: Any, model_args: Any) -> int:
    from trl import get_peft_config, get_quantization_config

    if not script_args.dataset_name:
        raise SystemExit("error: --dataset_name is required (a bmc_data folder, a data file, or a Hub dataset id)")
    if not model_args.model_name_or_path:
        raise SystemExit("error: --model_name_or_path is required")

    # Data first: a bad dataset fails here, before minutes of model loading
    dataset = load_preference_dataset(script_args.dataset_name, script_args.dataset_config)
    if script_args.dataset_train_split not in dataset:
        raise SystemExit(f"error: split {script_args.dataset_train_split!r} not in {list(dataset)}")
    try:
        train_dataset = select_rows(
            dataset[script_args.dataset_train_split], script_args.dataset_train_split,
            status_filter=script_args.status_filter, use_original_chosen=training_args.use_original_chosen,
            max_rows=script_args.max_train_samples, loss_type=training_args.loss_type,
        )
        eval_dataset = None
        if training_args.eval_strategy != "no" and script_args.dataset_test_split:
            eval_dataset = select_rows(
                dataset[script_args.dataset_test_split], script_args.dataset_test_split,
                status_filter=script_args.status_filter, use_original_chosen=training_args.use_original_chosen,
                max_rows=None, loss_type=training_args.loss_type,
            )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    from .trainer import BMCTrainer

    trainer = BMCTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.save_state()  # trainer_state.json with the log history (bmc/* metrics included)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
