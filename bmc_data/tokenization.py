"""Tokenize a preference pair exactly as TRL 1.16 `DPOTrainer._prepare_dataset` does.

Diff masks are computed once, offline, and stored next to the text. They are only usable if they have one entry per
completion token *as the trainer tokenizes it*, so this module reproduces the trainer's preparation step by step:

1. non-conversational rows: append `eos_token` to chosen and rejected unless they already end with it;
2. tokenize prompt, prompt+chosen and prompt+rejected with `trl.data_utils._tokenize` (plain `tokenizer(text)` for
   strings, `apply_chat_template(..., add_generation_prompt=True)` for the conversational prompt);
3. the completion starts at the shortest common prefix of the tokenized prompt with both tokenized
   prompt+completions (`trl.data_utils.common_prefix_length`).

The TRL helpers are imported rather than copied so that we follow TRL if they change. The result is the trainer's
`prompt_ids` / `chosen_ids` / `rejected_ids` *before* truncation (the collator truncates later, `keep_start` by
default, which keeps a prefix of the mask aligned).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trl.data_utils import _tokenize, common_prefix_length, is_conversational

__all__ = ["tokenize_pair", "tokenizer_fingerprint", "tokenizer_name"]

# Text the fingerprint tokenizes to capture behaviour that the vocabulary alone does not (merges, normalizer,
# pre-tokenizer, BOS/EOS post-processing): two tokenizers that agree on vocab but split this differently differ.
_PROBE_TEXT = (
    "Hello world!  The quick brown fox jumps over 13 lazy dogs.\n\n"
    "  def f(x):\n\treturn x**2 # ünïcödé, 数学, emoji 🙂; "
    "isn't it? \"Quotes\" and 'apostrophes' -- dashes — 3.14159 1,000,000\n"
)


def _text_tokenizer(tokenizer: Any) -> Any:
    """The text tokenizer of a tokenizer or processor (TRL reads `eos_token` from `processor.tokenizer`)."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def _as_messages(value: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list):
        return value
    raise TypeError(f"`{field}` must be a string or a list of chat messages, got {type(value).__name__}")


def tokenize_pair(
    tokenizer: Any,
    prompt: str | list[dict[str, Any]],
    chosen: str | list[dict[str, Any]],
    rejected: str | list[dict[str, Any]],
    *,
    tools: list | str | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> dict[str, list[int]]:
    """Token ids of one pair, identical to TRL 1.16 `DPOTrainer._prepare_dataset` (before truncation).

    Args:
        tokenizer: The `processing_class` the trainer will use.
        prompt: Plain text, or a list of chat messages (conversational data).
        chosen: Completion text, or a list of (assistant) messages. With a conversational prompt a plain string is
            taken as one assistant message.
        rejected: Same as `chosen`.
        tools: The row's `tools` field, if any (JSON string or list), as TRL passes it to the chat template.
        chat_template_kwargs: The row's `chat_template_kwargs` field, if any.

    Returns:
        `{"prompt_ids", "chosen_ids", "rejected_ids"}` exactly as the trainer's prepared dataset columns.
    """
    if isinstance(prompt, list):
        chosen = _as_messages(chosen, "chosen")
        rejected = _as_messages(rejected, "rejected")
    elif isinstance(chosen, list) or isinstance(rejected, list):
        raise ValueError(
            "a plain-text prompt needs plain-text chosen/rejected; got chat messages for a completion "
            "(TRL would not tokenize this layout consistently)"
        )
    example = {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    if is_conversational(example):
        tools = json.loads(tools) if isinstance(tools, str) else tools
        template_kwargs = {"tools": tools, **(chat_template_kwargs or {})}
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True, **template_kwargs)["input_ids"]
        prompt_chosen_ids = _tokenize(tokenizer, prompt + chosen, **template_kwargs)["input_ids"]
        prompt_rejected_ids = _tokenize(tokenizer, prompt + rejected, **template_kwargs)["input_ids"]
    else:
        eos_token = _text_tokenizer(tokenizer).eos_token
        if eos_token is None:
            raise ValueError(
                "the tokenizer has no eos_token; TRL appends it to non-conversational completions, set one first"
            )
        if not chosen.endswith(eos_token):
            chosen = chosen + eos_token
        if not rejected.endswith(eos_token):
            rejected = rejected + eos_token
        prompt_ids = _tokenize(tokenizer, prompt)["input_ids"]
        prompt_chosen_ids = _tokenize(tokenizer, prompt + chosen)["input_ids"]
        prompt_rejected_ids = _tokenize(tokenizer, prompt + rejected)["input_ids"]

    prompt_len = min(
        common_prefix_length(prompt_ids, prompt_chosen_ids),
        common_prefix_length(prompt_ids, prompt_rejected_ids),
    )
    return {
        "prompt_ids": list(prompt_ids[:prompt_len]),
        "chosen_ids": list(prompt_chosen_ids[prompt_len:]),
        "rejected_ids": list(prompt_rejected_ids[prompt_len:]),
    }


def tokenizer_name(tokenizer: Any) -> str:
    """`name_or_path` of the tokenizer (what the masks were built with), or its class name when unset."""
    name = getattr(tokenizer, "name_or_path", None) or getattr(_text_tokenizer(tokenizer), "name_or_path", None)
    return str(name) if name else type(tokenizer).__name__


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Short sha256 hex of what decides the token ids: vocabulary, special tokens, chat template and behaviour.

    Hashes the sorted vocabulary (added tokens included), the special tokens, the chat template, and the ids of a
    fixed probe text (so merges, normalization and BOS/EOS insertion count too). It is stable across
    `save_pretrained`/`from_pretrained` and across processes; two tokenizers with the same fingerprint give the same
    ids for the probe, and very likely for everything.
    """
    tok = _text_tokenizer(tokenizer)
    payload = {
        "vocab": sorted(tok.get_vocab().items()),
        "special_tokens": sorted((str(k), str(v)) for k, v in tok.special_tokens_map.items()),
        "added_special": sorted(str(t) for t in getattr(tok, "all_special_tokens", [])),
        "chat_template": getattr(tokenizer, "chat_template", None) or getattr(tok, "chat_template", None),
        "probe_ids": list(tok(_PROBE_TEXT)["input_ids"]),
    }
    blob = json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
