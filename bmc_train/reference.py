"""`precompute_ref_log_probs=True` for BMCTrainer: one no-grad reference pass, per-token values as dataset columns.

TRL precomputes one summed reference log-prob per response; BMC weights each token's log-ratio, so this pass keeps
the reference log-prob of every scored completion token (layout and identity in `bmc_data.tokens.ref_logps`). The pass:

* batches rows with the trainer's own collator (so tokenization, truncation and shifting are the training step's),
  longest first, `precompute_ref_batch_size` rows per batch, under a tqdm bar, in the reference model (or the PEFT
  model with its adapter disabled, or TRL's DeepSpeed inference engine);
* under `accelerate launch` gives rank r the contiguous rows [r·n/W, (r+1)·n/W): every row once, no duplicates (TRL's
  even-batches padding would compute some twice); each rank writes its shard to the cache folder, rank 0 checks that
  the shards cover every row exactly once and merges them (so the cache folder must be shared by all ranks: the
  datasets cache by default, `precompute_ref_cache_dir` otherwise);
* caches the merged columns as one Arrow file named by a hash of the dataset fingerprint and the reference identity
  (model, revision, weights fingerprint, tokenizer, max_length, truncation mode, dtype): a rerun, or `evaluate`, finds
  it and computes nothing. Columns a dataset already carries (`bmc_data.tokens.ref_logps.add_reference_logps`) are used only
  when their identity equals the trainer's; otherwise a log line says why they are recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, is_peft_model
from datasets import Dataset, IterableDataset, concatenate_datasets
from tqdm.auto import tqdm
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from bmc_data.tokens.ref_logps import (
    REF_CHOSEN_TOKEN_LOGPS,
    REF_COLUMNS,
    REF_LOGPS_IDENTITY,
    REF_REJECTED_TOKEN_LOGPS,
    STORAGE_DTYPES,
    compute_completion_logps,
    expected_token_counts,
    identity_json,
    reference_identity,
    weights_fingerprint,
)

__all__ = [
    "REF_PER_TOKEN",
    "cache_folder",
    "peft_reference_context",
    "precompute_reference_columns",
    "release_reference",
    "sampled_trl_weights_hash",
    "trainer_reference_identity",
]

logger = get_logger(__name__)

REF_PER_TOKEN = "ref_per_token_logps"  # the collated (2B, L-1) tensor; not a model input


@contextlib.contextmanager
def sampled_trl_weights_hash():
    """While TRL's `DPOTrainer.__init__` runs: its `hash_module` (every weight copied to CPU and hashed: tens of seconds
    for a 7B model, and unused here, where the cache key has its own fingerprint) becomes `weights_fingerprint`."""
    from trl.trainer import dpo_trainer

    original = dpo_trainer.hash_module
    dpo_trainer.hash_module = weights_fingerprint
    try:
        yield
    finally:
        dpo_trainer.hash_module = original


def cache_folder(args: Any) -> Path:
    if getattr(args, "precompute_ref_cache_dir", None):
        return Path(args.precompute_ref_cache_dir)
    import datasets.config

    return Path(datasets.config.HF_DATASETS_CACHE) / "bmc_ref_logps"


def peft_reference_context(trainer: Any) -> contextlib.AbstractContextManager:
    """The PEFT rule, in one place: with no separate reference model, π_ref is the policy with its adapter disabled
    (or its adapter named `ref`, as in TRL). A fresh context per forward (`use_adapter` is a one-shot generator
    context); a null context when there is a reference model or no PEFT."""
    if trainer.ref_model is not None or not is_peft_model(trainer.model):
        return contextlib.nullcontext()
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)


def _reference_module(trainer: Any) -> torch.nn.Module:
    if trainer.ref_model is not None:
        return trainer.accelerator.unwrap_model(trainer.ref_model)
    return trainer.accelerator.unwrap_model(trainer.model)


def storage_dtype(trainer: Any) -> str:
    """`precompute_ref_dtype`, with `auto` resolved: float32 for a float32 run, float16 under bf16/fp16 (where the
    live reference pass is itself computed in 16-bit, and float16's rounding is the smaller error)."""
    args = trainer.args
    if args.precompute_ref_dtype != "auto":
        return args.precompute_ref_dtype
    param = next(_reference_module(trainer).parameters())
    return "float32" if param.dtype == torch.float32 and not (args.bf16 or args.fp16) else "float16"


def trainer_reference_identity(trainer: Any) -> dict[str, Any]:
    """The identity of the trainer's reference (computed once, rank 0's value on every rank)."""
    if getattr(trainer, "_bmc_ref_identity", None) is None:
        args = trainer.args
        ref = _reference_module(trainer)
        tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        identity = reference_identity(
            ref, tokenizer, max_length=args.max_length, truncation_mode=args.truncation_mode,
            dtype=storage_dtype(trainer), revision=(args.model_init_kwargs or {}).get("revision"),
            # TRL's __init__ already fingerprinted the reference (sampled_trl_weights_hash), before any sharding
            weights=getattr(trainer, "_precompute_model_hash", None) or weights_fingerprint(ref),
        )
        box = [identity]
        broadcast_object_list(box, from_process=0)
        trainer._bmc_ref_identity = box[0]
    return trainer._bmc_ref_identity


def _stored_columns_fit(dataset: Dataset, identity: dict[str, Any], args: Any) -> str | None:
    """None when the dataset's stored columns are this reference's; else why not (for the log line)."""
    stored = dataset.unique(REF_LOGPS_IDENTITY)
    if len(stored) != 1:
        return f"the rows carry {len(stored)} different identities"
    theirs = json.loads(stored[0])
    if theirs != identity:
        diff = {k: (theirs.get(k), identity.get(k)) for k in identity if theirs.get(k) != identity.get(k)}
        return "they were computed for another reference: " + ", ".join(
            f"{k} {a!r} (stored) vs {b!r} (trainer)" for k, (a, b) in diff.items())
    table = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids", REF_CHOSEN_TOKEN_LOGPS,
                                    REF_REJECTED_TOKEN_LOGPS])
    for start, batch in enumerate(table.iter(batch_size=1024)):
        for k, p in enumerate(batch["prompt_ids"]):
            for side in ("chosen", "rejected"):
                n = expected_token_counts(len(p), len(batch[f"{side}_ids"][k]), args.max_length, args.truncation_mode)
                if len(batch[f"ref_{side}_token_logps"][k]) != n:
                    return f"row {start * 1024 + k}: {side} has a different number of scored tokens"
    return None


def _forward_fn(trainer: Any):
    """The reference forward of one collated batch: TRL's `compute_ref_log_probs` without its summation."""
    model = trainer.ref_model
    if model is None and trainer.is_deepspeed_enabled:
        from trl.models import prepare_deepspeed

        if trainer._precompute_engine is None:
            trainer._precompute_engine = prepare_deepspeed(trainer.model, trainer.accelerator)
        model = trainer._precompute_engine
    model = model or trainer.model

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        with (torch.no_grad(), disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs),
              peft_reference_context(trainer), trainer.accelerator.autocast()):
            return model(**kwargs, labels=labels, use_cache=False, fused_lm_head=True).log_probs

    return forward, model


def _padded_collator(collator: Any) -> Any:
    """The precompute pass reads `(2B, L)` rows: under `padding_free` it collates padded (its batches are sorted by
    length, so they hold little padding) with the same truncation; the stored values are then scattered into the
    packed layout at training time."""
    if getattr(collator, "padding_free", False):
        return dataclasses.replace(collator, padding_free=False)
    return collator


def _write_arrow(path: Path, columns: dict[str, Any]) -> None:
    table = pa.table(columns)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def _read_arrow(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def _attach(dataset: Dataset, path: Path) -> Dataset:
    dataset = dataset.remove_columns([c for c in REF_COLUMNS if c in dataset.column_names])
    return concatenate_datasets([dataset, Dataset.from_file(str(path))], axis=1)


def precompute_reference_columns(trainer: Any, dataset: Dataset, name: str, batch_size: int) -> Dataset:
    """`dataset` with `ref_chosen_token_logps` / `ref_rejected_token_logps` of the trainer's reference (see module)."""
    if isinstance(dataset, IterableDataset):
        raise ValueError("precompute_ref_log_probs=True needs a map-style Dataset (it stores columns); the "
                         f"{name} dataset is streaming. Set precompute_ref_log_probs=False.")
    args, acc = trainer.args, trainer.accelerator
    if getattr(trainer, "_bmc_ref_released", False):
        raise ValueError(
            f"cannot precompute reference log-probs for the {name} dataset: the reference model was released after "
            "the precompute pass at init. Pass this dataset as eval_dataset when creating the trainer."
        )
    identity = trainer_reference_identity(trainer)
    if all(c in dataset.column_names for c in REF_COLUMNS):
        why = _stored_columns_fit(dataset, identity, args)
        if why is None:
            logger.info(f"{name} dataset: using its stored per-token reference log-probs ({identity['model']})",
                        main_process_only=True)
            return dataset
        logger.warning(f"{name} dataset: recomputing its stored per-token reference log-probs: {why}",
                       main_process_only=True)
    dataset = dataset.remove_columns([c for c in REF_COLUMNS if c in dataset.column_names])

    key = [hashlib.sha256(f"{dataset._fingerprint}|{identity_json(identity)}".encode()).hexdigest()[:32]]
    broadcast_object_list(key, from_process=0)
    folder = cache_folder(args)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{key[0]}.arrow"
    cached = [final.exists()]
    broadcast_object_list(cached, from_process=0)  # one decision for all ranks, or the barriers below would not match
    if cached[0]:
        logger.info(f"{name} dataset: reusing cached per-token reference log-probs {final}", main_process_only=True)
        return _attach(dataset, final)

    logger.info(f"{name} dataset: computing per-token reference log-probs of {identity['model']} (weights "
                f"{identity['weights'][:12]}, max_length {identity['max_length']}); no cache entry {final.name}",
                main_process_only=True)
    n, rank, world = len(dataset), acc.process_index, acc.num_processes
    lo, hi = n * rank // world, n * (rank + 1) // world
    forward, _ = _forward_fn(trainer)
    bar = tqdm(total=hi - lo, desc=f"Computing per-token reference log-probs for {name} dataset", unit="pair",
               disable=not acc.is_local_main_process or bool(os.environ.get("TQDM_DISABLE", "")))
    with bar:
        ids = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])  # not the masks and texts
        values = compute_completion_logps(forward, ids, range(lo, hi), _padded_collator(trainer.data_collator),
                                          batch_size=batch_size, device=acc.device, progress=bar)
    pa_type = pa.list_(pa.float16() if identity["dtype"] == "float16" else pa.float32())
    np_dtype = STORAGE_DTYPES[identity["dtype"]]
    idx = list(range(lo, hi))
    shard = folder / f"{key[0]}.rank{rank}-of-{world}.arrow"
    _write_arrow(shard, {
        "index": pa.array(idx, pa.int64()),
        REF_CHOSEN_TOKEN_LOGPS: pa.array([values[i][0].astype(np_dtype) for i in idx], pa_type),
        REF_REJECTED_TOKEN_LOGPS: pa.array([values[i][1].astype(np_dtype) for i in idx], pa_type),
    })
    acc.wait_for_everyone()
    if acc.is_main_process:
        shards = [folder / f"{key[0]}.rank{r}-of-{world}.arrow" for r in range(world)]
        missing = [str(s) for s in shards if not s.exists()]
        if missing:
            raise RuntimeError(f"reference log-prob shards {missing} not found: every rank must see the cache folder "
                               f"{folder}; set precompute_ref_cache_dir to a folder all nodes share")
        table = pa.concat_tables([_read_arrow(s) for s in shards])
        index = table.column("index").to_numpy()
        if len(index) != n or not np.array_equal(np.sort(index), np.arange(n)):
            raise RuntimeError(f"reference log-prob shards cover {len(index)} rows ({len(np.unique(index))} distinct) "
                               f"of {n}")
        table = table.take(pa.array(np.argsort(index, kind="stable"))).drop_columns(["index"])
        _write_arrow(final, {c: table.column(c) for c in table.column_names})
        (folder / f"{key[0]}.json").write_text(json.dumps(
            {"identity": identity, "dataset_fingerprint": dataset._fingerprint, "rows": n,
             "shards": {r: [n * r // world, n * (r + 1) // world] for r in range(world)}}, indent=1))
        for s in shards:
            s.unlink()
        logger.info(f"{name} dataset: per-token reference log-probs cached in {final}", main_process_only=True)
    acc.wait_for_everyone()
    return _attach(dataset, final)


def release_reference(trainer: Any) -> None:
    """Drop the reference model once its values are stored: training then holds only the policy."""
    if trainer.ref_model is None:
        return
    trainer.ref_model = None
    trainer._bmc_ref_released = True  # a later dataset would get another reference (policy / adapter-off model)
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
