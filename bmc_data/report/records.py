"""What the review page (`bmc_data.report`) embeds: one compact record per row, diff spans precomputed here.

The page only renders; every decision about what is highlighted is made in Python, where it can be tested:

* **token level** (the row has `chosen_diff_mask` / `rejected_diff_mask` and the tokenizer they were built with
  is at hand): each completion is tokenized as TRL's DPOTrainer does (the rules of `bmc_data.tokens.tokenization`:
  EOS appended to plain-text completions, the chat template rendered for conversational rows, the completion
  starting after the common prefix with the prompt) with character offsets, and every token whose mask entry is
  True becomes one highlighted span. The number of spans of a side is exactly the sum of its mask. A row whose
  mask length differs from its token count (another tokenizer, truncated data) falls back to words and says so.
* **word level** (no masks, or no usable tokenizer): the whitespace-separated words of y_l and of the chosen
  response are aligned with an optimal Levenshtein alignment (rapidfuzz, as `bmc_data.tokens.diff` does for tokens) and
  the words the alignment does not match are highlighted.

A side is stored as `{"t": text, "m": [gap, length, gap, length, ...], "n": units}`: the text shown, the marked
spans as (distance from the end of the previous span, length) pairs in characters, and the number of tokens
(or words) of the side. Tokens that share characters with an earlier token (a multi-byte character split across
byte-level tokens) get a span of length 0 at that place, so that they still count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import compress
from typing import Any

import datasets

from bmc_data.pairs import schema
from bmc_data.pairs.schema import response_text
from bmc_data.tokens.diff import token_diff_masks

__all__ = ["build_records", "decode_spans", "encode_spans", "token_sides", "word_diff_sides"]

_WORD = re.compile(r"\S+")


# --- span encoding ------------------------------------------------------------------------------------------
def encode_spans(spans: Iterable[tuple[int, int]]) -> list[int]:
    """(start, end) character spans in increasing order -> flat [gap, length, ...] relative to the previous end.

    Overlapping spans are clipped to start at the previous end (a length-0 span keeps the token counted)."""
    out: list[int] = []
    end = 0
    for s, e in spans:
        s = max(s, end)
        e = max(e, s)
        out += (s - end, e - s)
        end = e
    return out


def decode_spans(flat: Sequence[int]) -> list[tuple[int, int]]:
    """Inverse of `encode_spans` (what the page's JavaScript does)."""
    spans = []
    end = 0
    for k in range(0, len(flat), 2):
        s = end + flat[k]
        end = s + flat[k + 1]
        spans.append((s, end))
    return spans


# --- word level ---------------------------------------------------------------------------------------------
def word_diff_sides(chosen: str, rejected: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Word-level diff of chosen vs rejected: the words an optimal Levenshtein alignment does not match."""
    c_words = [(m.start(), m.end()) for m in _WORD.finditer(chosen)]
    r_words = [(m.start(), m.end()) for m in _WORD.finditer(rejected)]
    c_text = [chosen[s:e] for s, e in c_words]
    r_text = [rejected[s:e] for s, e in r_words]
    c_mark, r_mark = token_diff_masks(c_text, r_text)  # the mask alignment, over words instead of token ids
    return ({"t": chosen, "m": encode_spans(compress(c_words, c_mark)), "n": len(c_words)},
            {"t": rejected, "m": encode_spans(compress(r_words, r_mark)), "n": len(r_words)})


# --- token level --------------------------------------------------------------------------------------------
def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _completion(text: str, ids: list[int], offsets: list[tuple[int, int]], start: int) -> "Side":
    """The completion tokens (from `start`); their offsets stay in `text` and `first` says where the shown part
    starts (shifted only for the few marked tokens, in `masked_side`)."""
    ids, offsets = ids[start:], offsets[start:]
    first = next((s for s, e in offsets if e > s), len(text))
    return text[first:], ids, offsets, first


def _fast_ok(tokenizer: Any) -> bool:
    from bmc_data.tokens.tokenization import _batch_encoder, _stock_chat_template

    return _batch_encoder(tokenizer) is not None and _stock_chat_template(tokenizer)


def _encode(tokenizer: Any, texts: list[str], add_special_tokens: bool,
            offsets: bool = True) -> tuple[list[list[int]], list]:
    enc = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=offsets,
                    return_attention_mask=False)
    return enc["input_ids"], enc["offset_mapping"] if offsets else []


def _pieces(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Text and offsets from per-token decoding (tokenizers without offsets): exact token boundaries, text as
    the tokenizer decodes each token."""
    text, offsets = "", []
    for token in ids:
        piece = tokenizer.decode([token])
        offsets.append((len(text), len(text) + len(piece)))
        text += piece
    return text, offsets


# completion text, token ids, per-token (start, end) in the full text, where the completion text starts in it
Side = tuple[str, list[int], list[tuple[int, int]], int]


def token_sides(tokenizer: Any, prompts: Sequence[Any], chosens: Sequence[Any],
                rejecteds: Sequence[Any]) -> list[tuple[Side, Side]]:
    """Per row, the chosen and rejected completion tokens as DPOTrainer sees them, with character offsets.

    The token ids equal `bmc_data.tokens.tokenization.tokenize_pair`'s `chosen_ids` / `rejected_ids` (the tests check
    this row by row); the text is the completion as the trainer sees it (EOS or chat-template markup included).
    """
    from bmc_data.tokens.tokenization import (
        _as_messages,
        _text_tokenizer,
        tokenize_pair,
    )

    n = len(prompts)
    out: list[tuple[Side, Side] | None] = [None] * n
    fast = _fast_ok(tokenizer)
    eos = _text_tokenizer(tokenizer).eos_token
    plain = [i for i in range(n) if fast and eos is not None and isinstance(prompts[i], str)
             and isinstance(chosens[i], str) and isinstance(rejecteds[i], str)]
    chat = [i for i in range(n) if fast and isinstance(prompts[i], list) and prompts[i]
            and isinstance(chosens[i], (str, list)) and isinstance(rejecteds[i], (str, list))]

    def finish(i: int, p_ids: list[int], texts: tuple[str, str], ids: tuple[list[int], list[int]],
               offs: tuple[list, list]) -> None:
        start = min(_common_prefix(p_ids, ids[0]), _common_prefix(p_ids, ids[1]))
        out[i] = (_completion(texts[0], ids[0], offs[0], start), _completion(texts[1], ids[1], offs[1], start))

    if plain:
        ps = [prompts[i] for i in plain]
        cs = [ps[k] + (c if c.endswith(eos) else c + eos) for k, c in enumerate(chosens[i] for i in plain)]
        rs = [ps[k] + (r if r.endswith(eos) else r + eos) for k, r in enumerate(rejecteds[i] for i in plain)]
        p_ids, _ = _encode(tokenizer, ps, True, offsets=False)
        c_ids, c_offs = _encode(tokenizer, cs, True)
        r_ids, r_offs = _encode(tokenizer, rs, True)
        for k, i in enumerate(plain):
            finish(i, p_ids[k], (cs[k], rs[k]), (c_ids[k], r_ids[k]), (c_offs[k], r_offs[k]))
    if chat:
        render = tokenizer.apply_chat_template
        ps = [prompts[i] for i in chat]
        p_text = render(ps, tokenize=False, add_generation_prompt=True, tools=None)
        c_text = render([ps[k] + _as_messages(chosens[i], "chosen") for k, i in enumerate(chat)],
                        tokenize=False, tools=None)
        r_text = render([ps[k] + _as_messages(rejecteds[i], "rejected") for k, i in enumerate(chat)],
                        tokenize=False, tools=None)
        p_ids, _ = _encode(tokenizer, p_text, False, offsets=False)
        c_ids, c_offs = _encode(tokenizer, c_text, False)
        r_ids, r_offs = _encode(tokenizer, r_text, False)
        for k, i in enumerate(chat):
            finish(i, p_ids[k], (c_text[k], r_text[k]), (c_ids[k], r_ids[k]), (c_offs[k], r_offs[k]))
    for i in range(n):
        if out[i] is None:  # slow tokenizers, processors: TRL's own helpers, text from per-token decoding
            ids = tokenize_pair(tokenizer, prompts[i], chosens[i], rejecteds[i])
            c_text, c_offs = _pieces(tokenizer, ids["chosen_ids"])
            r_text, r_offs = _pieces(tokenizer, ids["rejected_ids"])
            out[i] = ((c_text, ids["chosen_ids"], c_offs, 0), (r_text, ids["rejected_ids"], r_offs, 0))
    return out  # type: ignore[return-value]


def masked_side(side: Side, mask: Sequence[bool]) -> dict[str, Any]:
    """A side record whose spans are exactly the tokens where `mask` is True (caller checked the lengths)."""
    text, _, offsets, first = side
    spans = ((max(s - first, 0), max(e - first, 0)) for s, e in compress(offsets, mask))
    return {"t": text, "m": encode_spans(spans), "n": len(offsets)}


def chosen_share(side: dict[str, Any]) -> float | None:
    """Fraction of the side's units (tokens or words) that are highlighted."""
    return len(side["m"]) / 2 / side["n"] if side["n"] else None


def texts_of(value: Any) -> str:
    return response_text(value) if value is not None else ""


# --- rows -> records ----------------------------------------------------------------------------------------
def build_records(batch: Mapping[str, list[Any]], tokenizer: Any) -> list[dict[str, Any]]:
    n = len(batch[schema.PROMPT])
    sides = token_sides(tokenizer, batch[schema.PROMPT], batch[schema.CHOSEN], batch[schema.REJECTED]) \
        if tokenizer is not None else [None] * n
    out = []
    for i in range(n):
        prompt = batch[schema.PROMPT][i]
        chosen, rejected = texts_of(batch[schema.CHOSEN][i]), texts_of(batch[schema.REJECTED][i])
        original = texts_of(batch[schema.ORIGINAL_CHOSEN][i])
        rec: dict[str, Any] = {
            "p": prompt if isinstance(prompt, str) else [dict(m) for m in prompt],
            "l": rejected,
            "c": chosen,
        }
        if original != chosen:
            rec["o"] = original
        for column, key in ((schema.ID, "id"), (schema.PROMPT_VERSION, "v"), (schema.PROVIDER, "pv"),
                            (schema.MODEL, "mo"), (schema.REASON, "why"), (schema.ANSWER, "a")):
            value = batch.get(column, [None] * n)[i]
            if value not in (None, ""):
                rec[key] = str(value)
        note = None
        if sides[i] is not None:
            c_side, r_side = sides[i]
            c_mask, r_mask = batch[schema.CHOSEN_DIFF_MASK][i], batch[schema.REJECTED_DIFF_MASK][i]
            if c_mask is None or r_mask is None:
                note = "this row has no masks"
            elif len(c_mask) != len(c_side[1]) or len(r_mask) != len(r_side[1]):
                note = (f"its masks have {len(c_mask)}/{len(r_mask)} entries but the tokenizer gives "
                        f"{len(c_side[1])}/{len(r_side[1])} chosen/rejected tokens")
            else:
                rec["cd"], rec["rd"], rec["k"] = masked_side(c_side, c_mask), masked_side(r_side, r_mask), "token"
        if "k" not in rec:
            rec["cd"], rec["rd"] = word_diff_sides(chosen, rejected)
            rec["k"] = "word"
            if note:
                rec["kn"] = f"word-level: {note}"
        for key, text in (("cd", chosen), ("rd", rejected)):  # the text is usually the response itself
            if rec[key]["t"] == text:
                del rec[key]["t"]
            elif text and text in rec[key]["t"]:
                full = rec[key].pop("t")
                at = full.index(text)
                if at:
                    rec[key]["a"] = full[:at]
                if full[at + len(text):]:
                    rec[key]["z"] = full[at + len(text):]
        out.append(rec)
    return out


def column_list(dataset: datasets.Dataset, name: str) -> list[Any]:
    """A whole column as a list in one Arrow conversion (iterating `dataset[name]` formats row by row)."""
    return dataset[name][:] if len(dataset) else []


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in prompt or [])


