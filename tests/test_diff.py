"""token_diff_masks against a brute-force O(nm) Levenshtein DP."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmc_data.tokens.diff import levenshtein_distance, token_diff_masks


def dp_distance(a: list[int], b: list[int]) -> int:
    """Textbook unit-cost Levenshtein DP."""
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return prev[-1]


def unmasked(ids: list[int], mask: list[bool]) -> list[int]:
    return [t for t, m in zip(ids, mask) if not m]


def implied_cost(chosen: list[int], chosen_mask: list[bool], rejected: list[int], rejected_mask: list[bool]) -> int:
    """Fewest edits consistent with the masks: the k-th unmasked tokens of both sides are aligned, and a gap with
    a marked rejected and b marked chosen tokens between two aligned tokens costs max(a, b) (substitutions first)."""

    def gaps(mask: list[bool]) -> list[int]:
        out, run = [], 0
        for m in mask:
            if m:
                run += 1
            else:
                out.append(run)
                run = 0
        out.append(run)
        return out

    return sum(max(a, b) for a, b in zip(gaps(rejected_mask), gaps(chosen_mask), strict=True))


def check_optimal(chosen: list[int], rejected: list[int]) -> None:
    chosen_mask, rejected_mask = token_diff_masks(chosen, rejected)
    assert len(chosen_mask) == len(chosen) and len(rejected_mask) == len(rejected)
    assert all(isinstance(m, bool) for m in chosen_mask + rejected_mask)
    # the unmasked tokens of both sides are one common subsequence ...
    assert unmasked(chosen, chosen_mask) == unmasked(rejected, rejected_mask)
    # ... and the edit script the masks imply is a minimal one
    distance = dp_distance(rejected, chosen)
    assert implied_cost(chosen, chosen_mask, rejected, rejected_mask) == distance
    assert levenshtein_distance(rejected, chosen) == distance


small_ids = st.lists(st.integers(min_value=0, max_value=5), max_size=14)


@settings(max_examples=400, deadline=None)
@given(chosen=small_ids, rejected=small_ids)
def test_masks_are_an_optimal_alignment(chosen, rejected):
    check_optimal(chosen, rejected)


@settings(max_examples=200, deadline=None)
@given(
    base=st.lists(st.integers(min_value=0, max_value=50_000), min_size=1, max_size=40),
    edits=st.lists(st.tuples(st.sampled_from("isd"), st.integers(0, 10_000), st.integers(0, 50_000)), max_size=8),
)
def test_few_edits_on_large_vocab(base, edits):
    # Bridged pairs look like this: a long shared sequence with a few local edits.
    chosen = list(base)
    for op, pos, tok in edits:
        pos %= len(chosen) + 1
        if op == "i":
            chosen.insert(pos, tok)
        elif chosen and pos < len(chosen):
            if op == "s":
                chosen[pos] = tok
            else:
                del chosen[pos]
    check_optimal(chosen, base)
    chosen_mask, rejected_mask = token_diff_masks(chosen, base)
    assert dp_distance(base, chosen) <= len(edits)
    assert sum(chosen_mask) <= len(edits) and sum(rejected_mask) <= len(edits)


@pytest.mark.parametrize("seed", range(3))
def test_optimal_on_response_length_sequences(seed):
    # ~UltraFeedback response length with a small vocabulary (many equal-cost alignments to choose from)
    rng = random.Random(seed)
    rejected = [rng.randrange(30) for _ in range(rng.randint(250, 400))]
    chosen = list(rejected)
    for _ in range(rng.randint(10, 60)):
        pos = rng.randrange(len(chosen))
        op = rng.random()
        if op < 0.4:
            chosen[pos] = rng.randrange(30)
        elif op < 0.7:
            chosen.insert(pos, rng.randrange(30))
        else:
            del chosen[pos]
    check_optimal(chosen, rejected)


def test_substitution_marks_one_token_on_each_side():
    assert token_diff_masks([1, 9, 3], [1, 2, 3]) == ([False, True, False], [False, True, False])


def test_insertion_and_deletion():
    # chosen inserts 7 → only chosen is marked; chosen deletes 2 → only rejected is marked
    assert token_diff_masks([1, 7, 2, 3], [1, 2, 3]) == ([False, True, False, False], [False, False, False])
    assert token_diff_masks([1, 3], [1, 2, 3]) == ([False, False], [False, True, False])


def test_identical_and_empty_sequences():
    assert token_diff_masks([4, 5, 6], [4, 5, 6]) == ([False] * 3, [False] * 3)
    assert token_diff_masks([], []) == ([], [])
    assert token_diff_masks([1, 2], []) == ([True, True], [])
    assert token_diff_masks([], [1, 2, 3]) == ([], [True, True, True])
    assert levenshtein_distance([], [1, 2, 3]) == 3


def test_accepts_tuples_and_generators():
    assert token_diff_masks((1, 2), iter([1, 3])) == ([False, True], [False, True])


@settings(max_examples=200, deadline=None)
@given(chosen=small_ids, rejected=small_ids, ignore=st.sets(st.integers(0, 5), max_size=3))
def test_ignored_ids_are_never_marked(chosen, rejected, ignore):
    base_c, base_r = token_diff_masks(chosen, rejected)
    chosen_mask, rejected_mask = token_diff_masks(chosen, rejected, ignore_token_ids=ignore)
    assert chosen_mask == [m and t not in ignore for m, t in zip(base_c, chosen)]
    assert rejected_mask == [m and t not in ignore for m, t in zip(base_r, rejected)]
    assert not any(m for m, t in zip(chosen_mask + rejected_mask, chosen + rejected) if t in ignore)


def test_ignored_ids_break_the_equal_subsequence_property():
    # documented: the ignored token 0 is inserted in chosen and stays unmarked there only
    chosen_mask, rejected_mask = token_diff_masks([1, 0, 2], [1, 2], ignore_token_ids={0})
    assert chosen_mask == [False, False, False] and rejected_mask == [False, False]
    assert unmasked([1, 0, 2], chosen_mask) != unmasked([1, 2], rejected_mask)


def _word_ids(words: list[str], vocab: dict[str, int]) -> list[int]:
    return [vocab.setdefault(w, len(vocab)) for w in words]


def test_real_text_with_word_edits(shared_data):
    rows = [json.loads(line) for line in (shared_data / "qa" / "ecqa-train.jsonl").read_text().splitlines()[:60]]
    rng = random.Random(0)
    vocab: dict[str, int] = {}
    for row in rows:
        rejected_words = (row["problem"] + " " + row["solution"]).split()
        chosen_words = list(rejected_words)
        for _ in range(rng.randint(0, 6)):
            pos = rng.randrange(len(chosen_words))
            op = rng.choice("isd")
            if op == "i":
                chosen_words.insert(pos, rng.choice(rejected_words))
            elif op == "s":
                chosen_words[pos] = rng.choice(["however", "therefore", "correct", "wrong"])
            elif len(chosen_words) > 1:
                del chosen_words[pos]
        check_optimal(_word_ids(chosen_words, vocab), _word_ids(rejected_words, vocab))


def test_long_sequences_are_fast():
    # ~UltraFeedback-sized responses: the alignment must stay well under a millisecond or two per pair
    import time

    rng = random.Random(1)
    rejected = [rng.randrange(32_000) for _ in range(2_000)]
    chosen = list(rejected)
    for _ in range(200):
        chosen[rng.randrange(len(chosen))] = rng.randrange(32_000)
    start = time.perf_counter()
    for _ in range(20):
        chosen_mask, rejected_mask = token_diff_masks(chosen, rejected)
    assert (time.perf_counter() - start) / 20 < 0.05
    assert sum(chosen_mask) == sum(rejected_mask) <= 200


@pytest.mark.parametrize("a,b,expected", [("kitten", "sitting", 3), (["a", "b"], ["a", "c", "b"], 1), ([], [], 0)])
def test_levenshtein_distance(a, b, expected):
    assert levenshtein_distance(a, b) == expected
