"""Per-token reference log-probs of the completion tokens, stored as dataset columns.

BMC weights each token's log-ratio log π_θ − log π_ref, so a precomputed reference must keep one value per
completion token (TRL's `precompute_ref_log_probs` keeps one sum per response). This module holds what both the
trainer (`bmc_train.reference`) and an offline pass over a dataset (`add_reference_logps`, so a published dataset can
carry the columns for a named reference model) need:

* the storage layout: `ref_chosen_token_logps[i]` is the reference log-prob of the i-th *scored* completion token of
  `prompt + chosen` after the collator's truncation, i.e. the values of the shifted log-prob row where the shifted
  completion mask is 1, in order (`extract_completion_logps` / `scatter_completion_logps`). Padding never enters;
* the identity the values belong to (`reference_identity`): model name or path, revision, a weights fingerprint,
  tokenizer fingerprint, `max_length`, truncation mode and storage dtype, stored as a JSON string column so it
  survives parquet and the Hub. The trainer uses stored columns only when this identity equals its own;
* the no-grad pass itself (`compute_completion_logps`), batched with a collator and sorted by length.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "REF_CHOSEN_TOKEN_LOGPS",
    "REF_COLUMNS",
    "REF_LOGPS_IDENTITY",
    "REF_REJECTED_TOKEN_LOGPS",
    "STORAGE_DTYPES",
    "add_reference_logps",
    "compute_completion_logps",
    "expected_token_counts",
    "extract_completion_logps",
    "reference_identity",
    "scatter_completion_logps",
    "weights_fingerprint",
]

REF_CHOSEN_TOKEN_LOGPS = "ref_chosen_token_logps"
REF_REJECTED_TOKEN_LOGPS = "ref_rejected_token_logps"
REF_LOGPS_IDENTITY = "bmc_ref_logps_identity"  # JSON of `reference_identity`, the same in every row
REF_COLUMNS = (REF_CHOSEN_TOKEN_LOGPS, REF_REJECTED_TOKEN_LOGPS, REF_LOGPS_IDENTITY)
# float16 keeps ~3 significant digits over the log-prob range (|x| < 65504); measured effect on the loss in
# docs/training.md. Arrow has no bfloat16, and bfloat16 measured 8x worse anyway.
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}
_FORMAT_VERSION = 1
# PEFT wraps base weights as `base_model.model.<name>` / `<module>.base_layer.weight`; adapters are not the reference
_PEFT_PREFIX = re.compile(r"^base_model\.model\.")
_ADAPTER_KEY = re.compile(r"\.(lora_[A-Za-z_]+|lora_magnitude_vector|modules_to_save|ia3_l|prompt_encoder)\b")
_SAMPLE = 1 << 16  # elements hashed per large tensor


# --- layout -----------------------------------------------------------------------------------------------------


def extract_completion_logps(log_probs: torch.Tensor, completion_mask: torch.Tensor) -> list[np.ndarray]:
    """Rows of the shifted `(N, L-1)` log-prob tensor at the shifted completion mask's positions, as float32 arrays."""
    shift = completion_mask[:, 1:].bool()
    log_probs = log_probs[:, -shift.size(1):].detach().float().cpu()
    shift = shift.cpu()
    return [log_probs[i][shift[i]].numpy() for i in range(shift.size(0))]


def scatter_completion_logps(rows: Sequence[Sequence[float]], completion_mask: torch.Tensor) -> torch.Tensor:
    """Inverse of `extract_completion_logps`: a float32 `(N, L-1)` tensor, zero outside the shifted completion mask.

    A row whose length differs from its number of scored completion tokens was computed for another tokenization or
    truncation: a ValueError names it."""
    shift = completion_mask[:, 1:].bool()
    out = torch.zeros(shift.shape, dtype=torch.float32)
    counts = shift.sum(dim=1).tolist()
    for i, (row, n) in enumerate(zip(rows, counts)):
        if len(row) != n:
            raise ValueError(
                f"batch row {i}: {len(row)} stored reference log-probs but {n} scored completion tokens after "
                "truncation; they were computed for another tokenization or max_length"
            )
        if n:
            out[i][shift[i]] = torch.as_tensor(np.asarray(row, dtype=np.float32))
    return out


def expected_token_counts(
    prompt_len: int, completion_len: int, max_length: int | None, truncation_mode: str = "keep_start"
) -> int:
    """How many completion tokens of one `prompt + completion` row the collator scores (shifted mask's ones)."""
    total = prompt_len + completion_len
    kept = total if max_length is None else min(total, max_length)
    start = 0 if truncation_mode == "keep_start" else total - kept  # first kept position, in the untruncated row
    # kept positions [start, start + kept); the first one scores nothing (the shift drops it)
    return max(0, start + kept - max(prompt_len, start + 1))


# --- identity ---------------------------------------------------------------------------------------------------


def _normalized_key(name: str) -> str | None:
    if _ADAPTER_KEY.search(name):
        return None
    return _PEFT_PREFIX.sub("", name).replace(".base_layer.", ".")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the reference weights: names, dtypes, shapes, and every value of small tensors / 65,536 evenly
    spaced values of large ones (a fine-tuned checkpoint differs everywhere, so the sample tells checkpoints apart at
    a fraction of a full hash's cost on a 7B model). PEFT adapter tensors are skipped and PEFT's name wrapping removed,
    so a PEFT model hashes like its base model, which is its reference."""
    h = hashlib.sha256()
    named = {}
    for name, tensor in model.state_dict().items():
        key = _normalized_key(name)
        if key is not None:
            named[key] = tensor
    for key in sorted(named):
        t = named[key].detach()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        flat = t.reshape(-1)
        if flat.numel() > _SAMPLE:
            # integer spacing: a float linspace rounds past the last index once numel > 2**24
            idx = torch.arange(_SAMPLE, device=flat.device, dtype=torch.int64) * (flat.numel() - 1) // (_SAMPLE - 1)
            flat = flat[idx]
        h.update(flat.to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:32]


def reference_identity(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    max_length: int | None,
    truncation_mode: str = "keep_start",
    dtype: str = "float16",
    name: str | None = None,
    revision: str | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """What a stored reference log-prob depends on. Equal identities ⇒ the stored values are the ones the trainer
    would compute (up to float non-determinism)."""
    from .tokenization import tokenizer_fingerprint

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"reference log-prob dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    base = getattr(model, "get_base_model", lambda: model)()
    return {
        "format": _FORMAT_VERSION,
        "model": name if name is not None else str(getattr(base.config, "_name_or_path", "")),
        "revision": revision,
        "weights": weights if weights is not None else weights_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "truncation_mode": truncation_mode,
        "dtype": dtype,
    }


def identity_json(identity: dict[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True)


# --- the pass ---------------------------------------------------------------------------------------------------


def compute_completion_logps(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    rows: Sequence[dict[str, Any]] | Any,
    indices: Sequence[int],
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    progress: Any = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Reference log-probs for `rows[i]`, i in `indices`: `{i: (chosen_values, rejected_values)}` (float32).

    `forward(batch)` returns the `(2B, L-1)` shifted per-token log-probs of a collated `[chosen; rejected]` batch.
    Rows are taken longest first, so each batch pads to similar lengths (causal attention and right padding make a
    row's values independent of its batch-mates); `progress` (a tqdm bar) is advanced by rows."""
    if batch_size < 1:
        raise ValueError(f"precompute batch size must be >= 1, got {batch_size}")
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    examples = {}
    for i in indices:
        row = rows[i]  # one read per row (a Dataset decodes the whole row on each indexing)
        examples[i] = {k: row[k] for k in keys}
    order = sorted(indices, key=lambda i: -(len(examples[i]["prompt_ids"]) + max(len(examples[i]["chosen_ids"]),
                                                                               len(examples[i]["rejected_ids"]))))
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collator([examples[i] for i in chunk])
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            log_probs = forward(batch)
        values = extract_completion_logps(log_probs, batch["completion_mask"])
        n = len(chunk)
        for j, i in enumerate(chunk):
            out[i] = (values[j], values[n + j])
        if progress is not None:
            progress.update(n)
    return out


def add_reference_logps(
    dataset: Any,
    model: str | torch.nn.Module,
    tokenizer: Any,
    *,
    max_length: int | None = 2048,
    truncation_mode: str = "keep_start",
    batch_size: int = 8,
    dtype: str = "float16",
    revision: str | None = None,
    device: str | None = None,
) -> Any:
    """Add `ref_chosen_token_logps`, `ref_rejected_token_logps` and `bmc_ref_logps_identity` to a preference dataset
    (`prompt`, `chosen`, `rejected`), computed with reference `model` (a path or Hub id, loaded here, or a loaded
    model) exactly as `BMCTrainer(precompute_ref_log_probs=True)` would with the same `max_length`,
    `truncation_mode` (`BMCConfig` defaults) and `tokenizer`. A trainer whose reference has another identity
    ignores the columns and recomputes them (with a log line)."""
    from datasets import Features, List, Value
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from .tokenization import tokenize_pairs_batched

    if isinstance(model, str):
        name = model
        model = AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype="auto")
    else:
        name = None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    add_fused_lm_head(model)
    identity = reference_identity(model, tokenizer, max_length=max_length, truncation_mode=truncation_mode,
                                  dtype=dtype, name=name, revision=revision)
    ids = tokenize_pairs_batched(tokenizer, dataset["prompt"], dataset["chosen"], dataset["rejected"],
                                 tools=dataset["tools"] if "tools" in dataset.column_names else None,
                                 chat_template_kwargs=dataset["chat_template_kwargs"]
                                 if "chat_template_kwargs" in dataset.column_names else None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = DataCollatorForPreference(pad_token_id=pad, max_length=max_length, truncation_mode=truncation_mode)

    def forward(batch):
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                     use_cache=False, fused_lm_head=True).log_probs

    with tqdm(total=len(ids), desc=f"Reference log-probs ({identity['model']})", unit="pair") as bar:
        values = compute_completion_logps(forward, ids, range(len(ids)), collator, batch_size=batch_size,
                                          device=device, progress=bar)
    np_dtype = STORAGE_DTYPES[dtype]
    dataset = dataset.remove_columns([c for c in REF_COLUMNS if c in dataset.column_names])
    features = Features(dataset.features)
    features[REF_CHOSEN_TOKEN_LOGPS] = List(Value(dtype))
    features[REF_REJECTED_TOKEN_LOGPS] = List(Value(dtype))
    features[REF_LOGPS_IDENTITY] = Value("string")
    text = identity_json(identity)
    return dataset.map(
        lambda _, i: {REF_CHOSEN_TOKEN_LOGPS: values[i][0].astype(np_dtype),
                      REF_REJECTED_TOKEN_LOGPS: values[i][1].astype(np_dtype), REF_LOGPS_IDENTITY: text},
        with_indices=True, features=features, desc="Storing reference log-probs",
    )
