"""`python -m bmc_train` / `bmc-train`: train a model with a BMC objective on a (bridged) preference dataset.

    python -m bmc_train --config recipes/qa.yaml --model_name_or_path ./sft-model --dataset_name ./bridged-qa \
        --output_dir ./qa-dpo-bmc

Every `BMCConfig` (i.e. `DPOConfig` / `TrainingArguments`) and `ModelConfig` option is a flag; `--config FILE.yaml`
sets defaults that flags override (TRL's `TrlParser`). `--help` lists them all.

Every option, the config file (keys and value types), the output folder, the dataset (each row checked with
bmc_data's loader) and the model path are checked before a model is loaded; a mistake is one line naming it, exit
code 2 (docs/errors.md). A bare `--debug` (or `--bmc_debug`, or `BMC_DEBUG=1`) shows the full traceback of an
error; `--debug VALUE` (e.g. `--debug underflow_overflow`) is transformers' own `debug` option, passed through.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmc_data.errors import InputError, MissingFileError, UsageError, first_line
from bmc_data.pairs.schema import CHOSEN, ORIGINAL_CHOSEN, PROMPT, REJECTED, STATUS
from bmc_data.runner import OneLineErrors, check_writable_folder, run_cli

logger = logging.getLogger("bmc_train")

#: what `python -m bmc_data bridge --out DIR` writes beside pairs.jsonl, bridged.jsonl and the summaries
BRIDGE_OUTPUT = "bridged.parquet"
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
    review: str | None = field(
        default=None,
        metadata={
            "help": "Decisions exported from the review page (JSONL, bmc_data.apply_review): rows marked drop are "
            "left out before training. A data file is matched row by row (the page's row numbers); a folder or Hub "
            "dataset by `id`."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on at most this many rows (after filtering), for quick runs."}
    )


def make_parser(prog: str | None = None):
    from trl import ModelConfig, TrlParser

    from .config import BMCConfig

    class Parser(OneLineErrors, TrlParser):
        """TRL's parser, with one-line usage errors."""

    return Parser(
        (BMCScriptArguments, BMCConfig, ModelConfig),
        prog=prog or "python -m bmc_train",
        description="Train a causal LM with a BMC objective (DPO-BMC by default) on TRL's DPOTrainer. "
        "--config FILE.yaml reads any of the options below from a YAML mapping (plus an optional `env:` mapping of "
        "environment variables); flags given on the command line override it. Recipes: recipes/{qa,math,instruction}.yaml.",
        epilog="output and diagnostics (read before the options above are parsed): --quiet: warnings only; --verbose: "
        "also every HTTP request; a bare --debug, --bmc_debug or BMC_DEBUG=1: the full traceback of an error "
        "(--debug VALUE is transformers' debug option, above). Exit codes: 0 done, "
        "2 bad option/config/input, 1 a bug (docs/errors.md).",
    )


def load_preference_dataset(name: str, config: str | None = None):
    """A `DatasetDict` from a bmc_data folder, a data file, or a Hub id; a bad source is an `InputError`."""
    from datasets import Dataset, DatasetDict, load_dataset

    from bmc_data.pairs.loading import looks_like_hub_id, read_records

    path = Path(name).expanduser()
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise InputError(f"--dataset_name {name}: unsupported file type {path.suffix!r}; use one of {sorted(_FILE_BUILDERS)}")
        if builder in ("json", "csv"):  # bmc_data's reader: JSON errors by line, CSV cells as written, bad cells by row
            rows = read_records(str(path), split="train")
            try:
                return DatasetDict({"train": Dataset.from_list(rows)})
            except Exception as error:  # a cell whose type differs between rows; select_rows checks the rest
                where = f"--dataset_name {name}"
                _checked_pairs(rows, where)  # names the row and field when one of ours is mistyped
                raise InputError(f"{where}: cannot build a table from its rows: {first_line(error)}") from None
        try:
            return load_dataset(builder, data_files={"train": str(path)})
        except Exception as error:
            raise InputError(f"--dataset_name {name}: cannot read it as {builder}: {first_line(error)}") from None
    if not path.is_dir() and not looks_like_hub_id(name):
        raise MissingFileError(f"--dataset_name {name}: no such file or folder")
    if (path / BRIDGE_OUTPUT).is_file():  # a `python -m bmc_data bridge --out` folder: its table, not every file in it
        try:
            return load_dataset("parquet", data_files={"train": str(path / BRIDGE_OUTPUT)})
        except Exception as error:
            raise InputError(f"--dataset_name {name}: cannot read {BRIDGE_OUTPUT}: {first_line(error)}") from None
    try:
        return load_dataset(name, name=config)
    except Exception as error:
        raise InputError(f"--dataset_name {name}: cannot load it: {first_line(error)}") from None


def check_rows(rows, where: str, *, use_original_chosen: bool = False) -> None:
    """Every row through bmc_data's loader (the same checks as bridging) before TRL sees it: a wrong type or a
    missing field is an `InputError` naming the row and the field; pairs with chosen == rejected are counted in one
    warning (they carry no preference)."""
    pairs = _checked_pairs(rows, where, use_original_chosen=use_original_chosen)
    same = sum(1 for p in pairs if p.chosen.strip() == p.rejected.strip())
    if same:
        logger.warning("%s: %d of %d row(s) have chosen == rejected: they carry no preference signal", where, same,
                       len(pairs))


def _checked_pairs(rows, where: str, *, use_original_chosen: bool = False) -> list:
    """The rows' preference pairs (none when a whole column is missing: select_rows names it), or an `InputError`
    naming `where`, the row and the field."""
    from bmc_data.pairs.loading import load_pairs

    columns = [PROMPT, CHOSEN, REJECTED] + ([ORIGINAL_CHOSEN] if use_original_chosen else [])
    if not isinstance(rows, list):
        present = [c for c in columns if c in rows.column_names]
        rows = rows.select_columns(present).to_list()
    rows = [{k: r.get(k) for k in columns if k in r} for r in rows]
    if not rows or any(all(c not in r for r in rows) for c in columns):
        return []
    if use_original_chosen:
        rows = [{**r, CHOSEN: r.get(ORIGINAL_CHOSEN)} for r in rows]
    try:
        return load_pairs(rows, layout="auto").pairs
    except InputError as error:
        raise InputError(f"{where}: {error}") from None


def check_model_path(name: str) -> None:
    """A model given as a path must exist (a Hub id is left to transformers)."""
    from bmc_data.pairs.loading import looks_like_hub_id

    if not Path(name).expanduser().exists() and not looks_like_hub_id(name):
        raise MissingFileError(f"--model_name_or_path {name}: no such folder (nor a Hub model id of the form "
                               "'org/name')")


def check_chat_template(name: str, dataset, *, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """Conversational rows (lists of messages) need a tokenizer with a chat template: said before the model loads,
    naming the model, instead of TRL's error from inside the trainer after it."""
    if not len(dataset) or not isinstance(dataset[0][CHOSEN], list):
        return
    from transformers import AutoProcessor

    try:  # what DPOTrainer loads as its processing class
        processor = AutoProcessor.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - a best-effort early look: the trainer's own load reports what is wrong
        return
    from bmc_data.tokens.tokenization import has_chat_template

    if not has_chat_template(processor):
        raise InputError(f"--model_name_or_path {name}: its tokenizer has no chat template, but the dataset's rows "
                         "are conversations (lists of messages); train a chat (instruct/SFT) model, or give plain-text "
                         "prompt/chosen/rejected")


def check_config_file(argv: Sequence[str], parser) -> None:
    """`--config FILE`: it exists, is a YAML mapping, every key is an option and every value has the option's type
    (checked before TRL reads it)."""
    import yaml

    args = list(argv)
    if "--config" not in args:
        return
    index = args.index("--config")
    if index + 1 >= len(args):
        raise UsageError("--config needs a YAML file")
    path = Path(args[index + 1]).expanduser()
    if not path.is_file():
        raise MissingFileError(f"--config {path}: no such file")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"--config {path}{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    if config is None:
        raise UsageError(f"--config {path}: the file is empty")
    if not isinstance(config, dict):
        raise UsageError(f"--config {path}: expected a YAML mapping of options, got a {type(config).__name__}")
    known = {action.dest for action in parser._actions} | {"env"}
    unknown = [str(k) for k in config if k not in known]
    if unknown:
        raise UsageError(f"--config {path}: unknown key {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(
            unknown) > 1 else "") + ": not an option of python -m bmc_train (`--help` lists them)")
    actions = {action.dest: action for action in parser._actions}
    for key, value in config.items():
        if key != "env":
            problem = _config_value_problem(actions[key], value)
            if problem:
                raise UsageError(f"--config {path}: key {key!r}: expected {problem}, got {value!r}")


def _config_value_problem(action, value: Any) -> str | None:
    """What `value` (from YAML) should have been for the option `action`, or None when it converts as a flag would.
    TRL hands YAML values to the dataclasses unconverted, so a wrong type failed later naming neither key nor file."""
    import argparse

    kind = {float: "a float", int: "an int"}.get(action.type)
    if getattr(action.type, "__name__", "") == "string_to_bool":
        kind = "a bool (true or false)"
    if action.choices is not None:
        kind = f"one of {[str(c) for c in action.choices]}"
    if value is None or action.type in (None, str) and action.choices is None:
        return None  # a free-form string option (some take a dict or a list from YAML, e.g. model_init_kwargs)
    values = value if isinstance(value, list) and action.nargs in ("+", "*") else [value]
    for item in values:
        if isinstance(item, (list, dict)) or (isinstance(item, bool) and action.type in (int, float)):
            return kind or f"a single {getattr(action.type, '__name__', 'value')}"
        try:
            converted = action.type(item if isinstance(item, str) else str(item)) if action.type else item
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            return kind or f"a valid {getattr(action.type, '__name__', 'value')}"
        if action.choices is not None and converted not in action.choices and str(item) not in map(str, action.choices):
            return kind
    return None


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
    if not missing:
        check_rows(dataset, f"the {split_label} split", use_original_chosen=use_original_chosen)
    if missing:
        hint = " (use_original_chosen=True trains on it)" if ORIGINAL_CHOSEN in missing else ""
        if any(c in per_example for c in missing):
            hint += f" (loss_type={loss_type!r} reads it per example; see docs/related-objectives.md)"
        raise InputError(
            f"the {split_label} split is missing column(s) {missing}{hint}; it has {columns}. A preference dataset "
            f"needs `{PROMPT}`, `{CHOSEN}` and `{REJECTED}` (bmc_data writes them)."
        )
    keep = {s.strip() for s in status_filter.split(",") if s.strip()}
    filtered = STATUS in columns and status_filter.strip().lower() != "all"
    if per_example:  # a bad number would stop training when its batch comes up
        from .dataset_columns import check_batch_input_values

        try:
            check_batch_input_values(dataset, per_example, split_label,
                                     keep=(lambda row: row[STATUS] in keep) if filtered else None)
        except ValueError as error:
            raise InputError(str(error)) from None
    if filtered:
        before = len(dataset)
        dataset = dataset.filter(lambda status: status in keep, input_columns=STATUS, desc=f"Keeping {status_filter} rows")
        logger.info("kept %d of %d %s rows with %s in %s", len(dataset), before, split_label, STATUS, sorted(keep))
        if len(dataset) == 0:
            raise InputError(
                f"no {split_label} row has {STATUS} in {sorted(keep)}; pass --status_filter all to train on every row"
            )
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    return dataset


def _main(argv: list[str] | None) -> int:
    from bmc_data.runner import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(quiet="--quiet" in argv, verbose="--verbose" in argv)
    argv = [a for a in argv if a not in ("--quiet", "--verbose")]
    # --config=FILE is --config FILE (TRL looks for the separate form only)
    argv = [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]
    parser = make_parser()
    check_config_file(argv, parser)
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    except (ValueError, TypeError) as error:  # BMCConfig/TrainingArguments checks (e.g. beta > 0)
        raise UsageError(f"invalid option: {first_line(error)}") from None
    return train(script_args, training_args, model_args)


def split_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(argv for TrlParser, whether bmc shows tracebacks). transformers has a `--debug` option with values
    (`underflow_overflow`, `tpu_metrics_debug`): `--debug VALUE` is that one, passed on as `--debug=VALUE`; a bare
    `--debug`, or `--bmc_debug`, is bmc's traceback flag."""
    args, traceback, i = [], False, 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg == "--bmc_debug":
            traceback = True
        elif arg == "--debug" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            args.append(f"--debug={argv[i + 1]}")
            i += 1
        elif arg == "--debug":
            traceback = True
        else:
            args.append(arg)
        i += 1
    return args, traceback


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bmc_train ...`: the exit code; every failure is one line on stderr (`--debug`: traceback)."""
    args, traceback = split_debug_flag(sys.argv[1:] if argv is None else argv)
    return run_cli(_main, args + (["--debug"] if traceback else []))


def _checkpoint_to_resume(training_args: Any) -> str | None:
    """`--resume_from_checkpoint`, else the last checkpoint an earlier (killed) run left in `--output_dir`: a rerun of
    the same command continues where it stopped, as alignment-handbook's scripts do, instead of training from step
    0 again over the checkpoints it had saved."""
    if training_args.resume_from_checkpoint is not None or not training_args.output_dir \
            or not Path(training_args.output_dir).is_dir():
        return training_args.resume_from_checkpoint
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(training_args.output_dir)
    if last is not None:
        logger.info("--output_dir %s holds checkpoints of an earlier run: resuming from %s (choose another "
                    "--output_dir to start over)", training_args.output_dir, last)
    return last


def train(script_args: BMCScriptArguments, training_args: Any, model_args: Any) -> int:
    from trl import get_peft_config, get_quantization_config

    if not script_args.dataset_name:
        raise UsageError("--dataset_name is required (a bmc_data folder, a data file, or a Hub dataset id)")
    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required")
    if script_args.max_train_samples is not None and script_args.max_train_samples < 1:
        raise UsageError(f"--max_train_samples must be >= 1, got {script_args.max_train_samples}")
    output_dir = training_args.output_dir
    if output_dir:
        check_writable_folder(output_dir, f"--output_dir {output_dir}")
        model_dir = Path(model_args.model_name_or_path).expanduser()
        if model_dir.is_dir() and model_dir.resolve() == Path(output_dir).expanduser().resolve():
            raise UsageError(f"--output_dir {output_dir} is the folder of --model_name_or_path: the trained model "
                             "would be saved over the model it starts from; choose another --output_dir")
    eval_strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    # Data first: a bad dataset fails here, before minutes of model loading
    dataset = load_preference_dataset(script_args.dataset_name, script_args.dataset_config)

    if script_args.review and script_args.dataset_train_split in dataset:  # split() names a missing one
        from bmc_data.pairs.review import apply_review

        # a data file is what the page showed, row for row; a folder or Hub dataset holds the rows in configs
        # and splits the page concatenated, so there the decisions are matched by id
        by = "row" if Path(script_args.dataset_name).expanduser().is_file() else "id"
        train_split = script_args.dataset_train_split
        dataset[train_split], review = apply_review(dataset[train_split], script_args.review, by=by, return_review=True)
        logger.info("--review %s: %s", script_args.review, review.headline())

    def split(name: str, max_rows: int | None):
        if name not in dataset:
            raise InputError(f"--dataset_name {script_args.dataset_name}: split {name!r} not in {list(dataset)}")
        return select_rows(dataset[name], name, status_filter=script_args.status_filter, max_rows=max_rows,
                           use_original_chosen=training_args.use_original_chosen, loss_type=training_args.loss_type)

    train_dataset = split(script_args.dataset_train_split, script_args.max_train_samples)
    if eval_strategy != "no" and not script_args.dataset_test_split:
        raise UsageError(f"--eval_strategy {eval_strategy} needs an evaluation split: pass --dataset_test_split (the "
                         f"dataset has {list(dataset)}), or --eval_strategy no")
    eval_dataset = None
    if eval_strategy != "no" and script_args.dataset_test_split:
        eval_dataset = split(script_args.dataset_test_split, None)
    check_model_path(model_args.model_name_or_path)
    check_chat_template(model_args.model_name_or_path, train_dataset, revision=model_args.model_revision,
                        trust_remote_code=training_args.trust_remote_code)

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

    try:
        trainer = BMCTrainer(
            model=model_args.model_name_or_path,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            quantization_config=get_quantization_config(model_args),
            peft_config=get_peft_config(model_args),
        )
    except OSError as error:  # no weights, no config, no tokenizer at that path or Hub id
        raise InputError(f"--model_name_or_path {model_args.model_name_or_path}: cannot load the model or its "
                         f"tokenizer: {first_line(error)}") from None
    trainer.train(resume_from_checkpoint=_checkpoint_to_resume(training_args))
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.save_state()  # trainer_state.json with the log history (bmc/* metrics included)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
