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

`tokenize_pair` (one row, TRL's own helpers) is the reference. `tokenize_pairs_batched` gives the same ids for many
rows at once and is what `add_diff_masks` uses: with a stock fast (Rust) tokenizer it renders chat templates to text
and encodes all texts of a batch in one Rust call, skipping the per-call Python overhead that dominates one-row
tokenization; any row or tokenizer it cannot reproduce exactly goes through `tokenize_pair`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from trl.data_utils import _tokenize, common_prefix_length, is_conversational

__all__ = ["has_chat_template", "tokenize_pair", "tokenize_pairs_batched", "tokenizer_fingerprint", "tokenizer_name"]

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


def has_chat_template(tokenizer: Any) -> bool:
    """Whether a tokenizer (or processor) can render conversational rows, as DPOTrainer tokenizes them."""
    return bool(getattr(tokenizer, "chat_template", None) or getattr(_text_tokenizer(tokenizer), "chat_template", None))


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

    return _split(prompt_ids, prompt_chosen_ids, prompt_rejected_ids)


def _split(prompt_ids: list[int], prompt_chosen_ids: list[int], prompt_rejected_ids: list[int]) -> dict[str, Any]:
    # TRL's rule: the completion starts after the prompt tokens that both prompt+completions share
    prompt_len = min(
        common_prefix_length(prompt_ids, prompt_chosen_ids),
        common_prefix_length(prompt_ids, prompt_rejected_ids),
    )
    out: dict[str, Any] = {
        "prompt_ids": list(prompt_ids[:prompt_len]),
        "chosen_ids": list(prompt_chosen_ids[prompt_len:]),
        "rejected_ids": list(prompt_rejected_ids[prompt_len:]),
    }
    for side, full in (("chosen", prompt_chosen_ids), ("rejected", prompt_rejected_ids)):
        if isinstance(full, _Encoded):
            out[f"{side}_text"], out[f"{side}_offsets"] = _completion_text(full, prompt_len)
    return out


class _Encoded(list):
    """Token ids that also carry their character offsets and the text they came from (`return_offsets`)."""

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]], text: str) -> None:
        super().__init__(ids)
        self.offsets, self.text = offsets, text


def _completion_text(full: _Encoded, start: int) -> tuple[str, list[tuple[int, int]]]:
    """The completion (tokens from `start`) of an encoded prompt+completion: its text from the first character of
    its first non-empty token, and each token's span in that text (byte-level pieces of one character share it)."""
    offsets = full.offsets[start:]
    first = next((s for s, e in offsets if e > s), len(full.text))
    return full.text[first:], [(max(s - first, 0), max(e - first, 0)) for s, e in offsets]


def _pieces(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Text and spans from per-token decoding (tokenizers without offsets): exact token boundaries, text as the
    tokenizer decodes each token."""
    text, offsets = "", []
    for token in ids:
        piece = tokenizer.decode([token])
        offsets.append((len(text), len(text) + len(piece)))
        text += piece
    return text, offsets


def _batch_encoder(tokenizer: Any) -> Callable[[list[str], bool], list[list[int]]] | None:
    """A function encoding many texts at once with exactly the ids `tokenizer(text=t, add_special_tokens=a)` gives.

    Only for stock fast tokenizers: `__call__` and `_encode_plus` not overridden, which makes a one-text call a Rust
    `encode_batch` of one text with no truncation or padding. None otherwise (slow tokenizers, processors, tokenizers
    with their own encoding logic), and callers then tokenize row by row.
    """
    cls = type(tokenizer)
    if not (
        isinstance(tokenizer, PreTrainedTokenizerFast)
        and cls.__call__ is PreTrainedTokenizerBase.__call__
        and cls._encode_plus is PreTrainedTokenizerFast._encode_plus
    ):
        return None
    backend = tokenizer._tokenizer
    # Rust: same ids as `encode_batch`, without the char offsets we do not need (tokenizers >= 0.21)
    encode_fast = getattr(backend, "encode_batch_fast", backend.encode_batch)
    # Tokenizers with input/target modes (`_switch_to_input_mode`) set their backend state in `__call__`.
    direct_ok = not hasattr(tokenizer, "_switch_to_input_mode")

    def encode(texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        if direct_ok and backend.truncation is None and backend.padding is None:
            # what `_encode_plus` does before its Rust call, minus the per-encoding Python conversion
            if backend.encode_special_tokens != tokenizer.split_special_tokens:
                backend.encode_special_tokens = tokenizer.split_special_tokens
            return [encoding.ids for encoding in encode_fast(texts, add_special_tokens=add_special_tokens)]
        # the public call (it also resets truncation/padding left on the backend, so the next batch is direct)
        return tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"]

    return encode


def _stock_chat_template(tokenizer: Any) -> bool:
    return type(tokenizer).apply_chat_template is PreTrainedTokenizerBase.apply_chat_template


def tokenize_pairs_batched(
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, Any]]],
    chosens: Sequence[str | list[dict[str, Any]]],
    rejecteds: Sequence[str | list[dict[str, Any]]],
    *,
    tools: Sequence[list | str | None] | None = None,
    chat_template_kwargs: Sequence[dict[str, Any] | None] | None = None,
    return_offsets: bool = False,
) -> list[dict[str, Any]]:
    """`tokenize_pair` for many rows at once: the same ids, computed with one Rust call per kind of text.

    Plain-text rows: EOS is appended as TRL does, and prompts, prompt+chosen and prompt+rejected are encoded in
    batches exactly as `tokenizer(text=...)` (special tokens added). Conversational rows: the chat template is
    rendered to text (`apply_chat_template(..., tokenize=False)`, generation prompt for the prompt alone) and encoded
    with `add_special_tokens=False`, which is what `apply_chat_template(..., tokenize=True)` does. Rows with `tools`
    or `chat_template_kwargs`, rows `tokenize_pair` would reject, and all rows of a tokenizer without a stock fast
    `__call__` / `apply_chat_template` go through `tokenize_pair` itself.

    Args:
        tokenizer: The `processing_class` the trainer will use.
        prompts: One prompt per row (text or chat messages).
        chosens: One chosen completion per row.
        rejecteds: One rejected completion per row.
        tools: Optional per-row `tools` values.
        chat_template_kwargs: Optional per-row `chat_template_kwargs` values.
        return_offsets: Also return, per side, the completion as the trainer sees it (`chosen_text`,
            `rejected_text`: EOS or chat markup included) and each completion token's (start, end) character span
            in it (`chosen_offsets`, `rejected_offsets`; byte-level pieces of one multi-byte character all span that
            character). Rows the Rust
            path cannot reproduce take their text from per-token decoding.

    Returns:
        One `{"prompt_ids", "chosen_ids", "rejected_ids"}` dict per row, equal to `tokenize_pair`'s.
    """
    n = len(prompts)
    if len(chosens) != n or len(rejecteds) != n:
        raise ValueError(f"got {n} prompts, {len(chosens)} chosen and {len(rejecteds)} rejected completions")
    encode = _batch_encoder(tokenizer)
    chat_ok = encode is not None and _stock_chat_template(tokenizer)
    if encode is not None and return_offsets:
        def encode(texts: list[str], add_special_tokens: bool) -> list[Any]:
            enc = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                            return_attention_mask=False)
            return [_Encoded(ids, offs, text) for ids, offs, text in zip(enc["input_ids"], enc["offset_mapping"], texts)]

    eos_token = _text_tokenizer(tokenizer).eos_token if encode is not None else None

    text_rows: list[int] = []
    chat_rows: list[int] = []
    results: list[dict[str, list[int]] | None] = [None] * n
    for i in range(n):
        prompt, chosen, rejected = prompts[i], chosens[i], rejecteds[i]
        special = (tools is not None and tools[i] is not None) or (
            chat_template_kwargs is not None and chat_template_kwargs[i]
        )
        if encode is None or special:
            pass
        elif isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
            if eos_token is not None:
                text_rows.append(i)
                continue
        elif chat_ok and isinstance(prompt, list) and prompt and chosen and rejected and (
            isinstance(chosen, (str, list)) and isinstance(rejected, (str, list))
        ):
            # classify as tokenize_pair does (TRL's own test on the wrapped row)
            example = {
                "prompt": prompt,
                "chosen": _as_messages(chosen, "chosen"),
                "rejected": _as_messages(rejected, "rejected"),
            }
            if is_conversational(example):
                chat_rows.append(i)
                continue
        # row by row, with TRL's helpers (and tokenize_pair's errors for layouts TRL does not handle)
        results[i] = tokenize_pair(
            tokenizer,
            prompt,
            chosen,
            rejected,
            tools=tools[i] if tools is not None else None,
            chat_template_kwargs=chat_template_kwargs[i] if chat_template_kwargs is not None else None,
        )
        if return_offsets:  # no offsets without the Rust path: the text is the tokens decoded one by one
            for side in ("chosen", "rejected"):
                results[i][f"{side}_text"], results[i][f"{side}_offsets"] = _pieces(tokenizer, results[i][f"{side}_ids"])

    if text_rows:
        text_prompts = [prompts[i] for i in text_rows]
        # TRL appends EOS unless the completion already ends with it
        text_chosen = [c if c.endswith(eos_token) else c + eos_token for c in (chosens[i] for i in text_rows)]
        text_rejected = [r if r.endswith(eos_token) else r + eos_token for r in (rejecteds[i] for i in text_rows)]
        prompt_ids = encode(text_prompts, True)
        chosen_ids = encode([p + c for p, c in zip(text_prompts, text_chosen)], True)
        rejected_ids = encode([p + r for p, r in zip(text_prompts, text_rejected)], True)
        for k, i in enumerate(text_rows):
            results[i] = _split(prompt_ids[k], chosen_ids[k], rejected_ids[k])

    if chat_rows:
        chat_prompts = [prompts[i] for i in chat_rows]
        chat_chosen = [chat_prompts[k] + _as_messages(chosens[i], "chosen") for k, i in enumerate(chat_rows)]
        chat_rejected = [chat_prompts[k] + _as_messages(rejecteds[i], "rejected") for k, i in enumerate(chat_rows)]
        # batched rendering renders each conversation as a one-row call would; the ids come from the rendered text
        # encoded without special tokens, as `apply_chat_template(tokenize=True)` does
        render = tokenizer.apply_chat_template
        prompt_ids = encode(render(chat_prompts, tokenize=False, add_generation_prompt=True, tools=None), False)
        chosen_ids = encode(render(chat_chosen, tokenize=False, tools=None), False)
        rejected_ids = encode(render(chat_rejected, tokenize=False, tools=None), False)
        for k, i in enumerate(chat_rows):
            results[i] = _split(prompt_ids[k], chosen_ids[k], rejected_ids[k])

    return results  # type: ignore[return-value]


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
