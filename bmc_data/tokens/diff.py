"""Token-level differences between the pseudo-winning response ỹ_w and the losing response y_l.

The paper (§3.2) obtains "the token-level differences between ỹ_w and y_l ... through dynamic programming
algorithms like Levenshtein distance". We align the two token-id sequences with an *optimal* Levenshtein alignment
(unit cost for insertion, deletion and substitution) computed by rapidfuzz, then mark every token that the alignment
does not match:

* a chosen (ỹ_w) token is marked when it is substituted or inserted (it is new relative to y_l);
* a rejected (y_l) token is marked when it is substituted or deleted (it was changed or removed).

Without `ignore_token_ids`, the unmarked tokens of both sides form the same subsequence, and the number of edits of
an optimal alignment equals `#marked_rejected + #marked_chosen - #substitutions`, i.e. the Levenshtein distance.

The official BMC code used `difflib.SequenceMatcher` (a heuristic, not a minimal alignment, and much slower on long
sequences); see `bench/mask_building.py` for the comparison.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rapidfuzz.distance import Levenshtein

__all__ = ["levenshtein_distance", "token_diff_masks"]


def levenshtein_distance(a: Sequence, b: Sequence) -> int:
    """Unit-cost Levenshtein distance between two sequences of hashables (str, or lists of ints/strings)."""
    return Levenshtein.distance(a, b)


def token_diff_masks(
    chosen_ids: Sequence[int],
    rejected_ids: Sequence[int],
    *,
    ignore_token_ids: Collection[int] | None = None,
) -> tuple[list[bool], list[bool]]:
    """Per-token diff masks of a (chosen, rejected) pair from an optimal Levenshtein alignment.

    Args:
        chosen_ids: Token ids of the chosen response (ỹ_w, or y_w for an unbridged pair).
        rejected_ids: Token ids of the rejected response (y_l).
        ignore_token_ids: Token ids that are never marked, even when the alignment changes them. The official BMC
            code never marks stopword tokens; pass `bmc_data.tokens.stopwords.stopword_token_ids(tokenizer)` to do the same.
            With ignore ids the unmarked tokens of both sides are in general *not* the same subsequence any more
            (an ignored token can be unmarked on one side only).

    Returns:
        `(chosen_mask, rejected_mask)`: one bool per token, `True` where the token differs.
    """
    # rapidfuzz converts its inputs element by element; plain lists are the cheapest input overall. Measured on
    # ~350-token pairs (bench/mask_building.py): array('q') inputs, str via chr() per token, `opcodes` + slice filling
    # and a `score_hint` were all slower or equal; the bit-parallel editops itself is ~75% of the ~45 µs per pair.
    chosen = chosen_ids if isinstance(chosen_ids, list) else list(chosen_ids)
    rejected = rejected_ids if isinstance(rejected_ids, list) else list(rejected_ids)
    chosen_mask = [False] * len(chosen)
    rejected_mask = [False] * len(rejected)
    # editops(source=rejected, dest=chosen) is the edit script that turns y_l into ỹ_w; one op per changed token.
    for tag, r, c in Levenshtein.editops(rejected, chosen).as_list():
        if tag == "replace":
            rejected_mask[r] = True
            chosen_mask[c] = True
        elif tag == "delete":
            rejected_mask[r] = True
        else:  # insert
            chosen_mask[c] = True
    if ignore_token_ids:
        ignore = ignore_token_ids if isinstance(ignore_token_ids, (set, frozenset)) else set(ignore_token_ids)
        chosen_mask = [m and t not in ignore for m, t in zip(chosen_mask, chosen)]
        rejected_mask = [m and t not in ignore for m, t in zip(rejected_mask, rejected)]
    return chosen_mask, rejected_mask
