"""The review page's optional weight preview: λ = 1 + min(1/π_θ(token), δ) of every diff token (paper eq. 7), for
a sample of rows, with a given policy model. It shows which of the marked tokens DPO-BMC will emphasise.

The tokens are the trainer's (`bmc_data.tokens.tokenization.tokenize_pair`, as TRL 1.16 tokenizes them), so the
policy must use the tokenizer the masks were built with. torch / transformers are imported only here.
"""

from __future__ import annotations

import math
from typing import Any

import datasets

from bmc_data.errors import InputError, first_line
from bmc_data.pairs import schema
from bmc_data.tokens.tokenization import tokenize_pair, tokenizer_name

__all__ = ["lambda_weights", "preview_weights"]


def lambda_weights(logps: list[float], delta: float) -> list[float]:
    """1 + min(1/π, δ) for each log-probability (the same cap as bmc_train's `bmc_token_weights`)."""
    return [1.0 + (min(math.exp(-lp), delta) if delta > 0 else 0.0) for lp in logps]


def _completion_logps(model: Any, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    import torch

    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt_ids) - 1:].tolist()


def preview_weights(dataset: datasets.Dataset, model_path: str, tokenizer: Any, *, delta: float,
                    rows: int) -> tuple[dict[int, dict[str, list[float]]], str]:
    """{row: {"c": λ per marked chosen token, "r": λ per marked rejected token}} and a sentence for the header.

    Rows: the first `rows` bridged rows (then others) whose masks fit. Without a tokenizer that fits the masks
    there is nothing to weight, and the sentence says so.
    """
    if tokenizer is None:
        return {}, f"not computed: {model_path} needs token-level masks that fit the tokenizer (the page shows words)"
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise InputError(f"--model {model_path}: cannot load a causal LM from it: {first_line(error)}") from None
    model.eval()
    vocab = model.get_input_embeddings().num_embeddings
    statuses = dataset[schema.STATUS]
    order = [i for i, s in enumerate(statuses) if s == schema.Status.BRIDGED.value]
    order += [i for i, s in enumerate(statuses) if s != schema.Status.BRIDGED.value]
    out: dict[int, dict[str, list[float]]] = {}
    for i in order:
        if len(out) >= rows:
            break
        row = dataset[i]
        ids = tokenize_pair(tokenizer, row[schema.PROMPT], row[schema.CHOSEN], row[schema.REJECTED])
        c_mask, r_mask = row[schema.CHOSEN_DIFF_MASK], row[schema.REJECTED_DIFF_MASK]
        if c_mask is None or len(c_mask) != len(ids["chosen_ids"]) or len(r_mask) != len(ids["rejected_ids"]):
            continue
        if max(ids["prompt_ids"] + ids["chosen_ids"] + ids["rejected_ids"]) >= vocab:
            raise InputError(f"--model {model_path}: its vocabulary ({vocab}) does not cover the ids of the mask "
                             f"tokenizer {tokenizer_name(tokenizer)}; the policy must use that tokenizer")
        weights = {}
        for key, completion, mask in (("c", ids["chosen_ids"], c_mask), ("r", ids["rejected_ids"], r_mask)):
            logps = _completion_logps(model, ids["prompt_ids"], completion)
            weights[key] = [round(w, 4) for w, m in zip(lambda_weights(logps, delta), mask) if m]
        out[i] = weights
    info = (f"model {model_path}, δ = {delta:g}: λ = 1 + min(1/π_θ, δ) of the marked tokens of {len(out)} row(s) "
            "(bridged rows first), shaded in their diffs")
    return out, info
