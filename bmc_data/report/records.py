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
spans as (distance from the end of the previous span, length) pairs in UTF-16 code units (what JavaScript's
string indices count: a character beyond U+FFFF, an emoji, is two), and the number of tokens (or words) of the
side. Tokens that share characters with an earlier token (a multi-byte character split across
byte-level tokens) get a span of length 0 at that place, so that they still count.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import compress
from typing import Any

import datasets

from bmc_data.pairs import schema
from bmc_data.pairs.schema import response_text
from bmc_data.tokens.diff import levenshtein_distance, token_diff_masks

__all__ = ["build_records", "decode_spans", "encode_spans", "token_sides", "word_diff_sides"]

_WORD = re.compile(r"\S+")


# --- span encoding ------------------------------------------------------------------------------------------
def utf16_offsets(text: str) -> Callable[[int], int] | None:
    """Code-point offset -> UTF-16 offset in `text` (what JavaScript's string indices count), or None when the
    two agree (no character beyond U+FFFF: each of those is two UTF-16 units, a surrogate pair)."""
    if text.isascii():
        return None
    astral = [i for i, ch in enumerate(text) if ord(ch) > 0xFFFF]
    if not astral:
        return None
    return lambda offset: offset + bisect_left(astral, offset)


def encode_spans(spans: Iterable[tuple[int, int]], text: str | None = None) -> list[int]:
    """(start, end) character spans in increasing order -> flat [gap, length, ...] relative to the previous end.

    Overlapping spans are clipped to start at the previous end (a length-0 span keeps the token counted). With
    `text`, the spans are code-point offsets into it and come out in UTF-16 units, as the page slices strings."""
    out: list[int] = []
    end = 0
    to16 = utf16_offsets(text) if text is not None else None
    if to16 is not None:
        spans = ((to16(s), to16(e)) for s, e in spans)
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
    return ({"t": chosen, "m": encode_spans(compress(c_words, c_mark), chosen), "n": len(c_words)},
            {"t": rejected, "m": encode_spans(compress(r_words, r_mark), rejected), "n": len(r_words)})


# --- token level --------------------------------------------------------------------------------------------
# the completion as the trainer sees it, its token ids, each token's (start, end) in that text
Side = tuple[str, list[int], list[tuple[int, int]]]


def token_sides(tokenizer: Any, prompts: Sequence[Any], chosens: Sequence[Any],
                rejecteds: Sequence[Any]) -> list[tuple[Side, Side]]:
    """Per row, the chosen and rejected completion tokens as DPOTrainer sees them, with character spans.

    `bmc_data.tokens.tokenization.tokenize_pairs_batched(..., return_offsets=True)` does the work, so the ids
    are the trainer's by construction (the tests check them against `tokenize_pair` row by row)."""
    from bmc_data.tokens.tokenization import tokenize_pairs_batched

    rows = tokenize_pairs_batched(tokenizer, prompts, chosens, rejecteds, return_offsets=True)
    return [((r["chosen_text"], r["chosen_ids"], r["chosen_offsets"]),
             (r["rejected_text"], r["rejected_ids"], r["rejected_offsets"])) for r in rows]


def masked_side(side: Side, mask: Sequence[bool]) -> dict[str, Any]:
    """A side record whose spans are exactly the tokens where `mask` is True (caller checked the lengths)."""
    text, _, offsets = side
    return {"t": text, "m": encode_spans(compress(offsets, mask), text), "n": len(offsets)}


def chosen_share(side: dict[str, Any]) -> float | None:
    """Fraction of the side's units (tokens or words) that are highlighted."""
    return len(side["m"]) / 2 / side["n"] if side["n"] else None


def texts_of(value: Any) -> str:
    return response_text(value) if value is not None else ""


# --- rows -> records ----------------------------------------------------------------------------------------
def build_records(batch: Mapping[str, list[Any]], tokenizer: Any,
                  extra_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One record per row of `batch`; `extra_columns` are copied as they are (key "x"), for copy-as-JSON."""
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
            # the third view, ỹ_w against y_w: did the edit keep y_w's fix? (words: the masks are against y_l)
            ow_chosen, ow_original = word_diff_sides(chosen, original)
            rec["ow"] = {"c": ow_chosen["m"], "o": ow_original["m"]}
        for column, key in ((schema.CHOSEN, "cr"), (schema.REJECTED, "lr"), (schema.ORIGINAL_CHOSEN, "or")):
            if not isinstance(batch[column][i], str) and batch[column][i] is not None:  # chat messages, kept as such
                rec[key] = batch[column][i]
        extra = {c: batch[c][i] for c in extra_columns}
        if extra:
            rec["x"] = extra
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
                rec["td"] = levenshtein_distance(c_side[1], r_side[1])
        if "k" not in rec:
            rec["cd"], rec["rd"] = word_diff_sides(chosen, rejected)
            rec["k"] = "word"
            rec["td"] = levenshtein_distance(chosen.split(), rejected.split())
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


