"""Edit-distance statistics on constructed cases, with real datasets objects and real PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from bmc_data.tokens.diff import levenshtein_distance
from bmc_data.tokens.masks import add_diff_masks
from bmc_data.tokens.stats import (
    CHOSEN_DIFF_FRACTION,
    REJECTED_DIFF_FRACTION,
    TOKEN_DISTANCE_AFTER,
    TOKEN_DISTANCE_BEFORE,
    TOKEN_NORM_BEFORE,
    WORD_DISTANCE_AFTER,
    WORD_DISTANCE_BEFORE,
    WORD_NORM_AFTER,
    WORD_NORM_BEFORE,
    add_edit_distance_stats,
    edit_distance_splits,
    plot_edit_distances,
    summarize_edit_distances,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]")


def bridged(rows: list[tuple[str, str, str, str]]) -> Dataset:
    """rows of (original_chosen, chosen, rejected, status)."""
    return Dataset.from_dict({
        "prompt": [f"question {i}\n" for i in range(len(rows))],
        "original_chosen": [r[0] for r in rows],
        "chosen": [r[1] for r in rows],
        "rejected": [r[2] for r in rows],
        "bmc_status": [r[3] for r in rows],
    })


def test_identical_and_disjoint_pairs():
    ds = bridged([
        ("a b c", "x y z", "x y z", "bridged"),  # after bridging identical to y_l
        ("p q", "a b c d", "x y", "bridged"),  # nothing in common
        ("a b c d", "a b c d", "a b x d", "filtered"),
    ])
    out = add_edit_distance_stats(ds)
    assert out[WORD_DISTANCE_BEFORE] == [3, 2, 1]
    assert out[WORD_DISTANCE_AFTER] == [0, 4, 1]
    assert out[WORD_NORM_AFTER][:2] == [0.0, 1.0]
    assert out[WORD_NORM_BEFORE] == [1.0, 1.0, 0.25]


def test_token_level_and_diff_fractions():
    texts = ["the cat sat on the mat", "the cat sat on a hat", "dogs bark loudly at night"]
    tok = word_tokenizer(texts)
    ds = bridged([(texts[2], texts[1], texts[0], "bridged"), (texts[0], texts[0], texts[0], "bridged")])
    ds = add_diff_masks(ds, tok)
    out = add_edit_distance_stats(ds, tok)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert out[TOKEN_DISTANCE_BEFORE][0] == levenshtein_distance(ids[2], ids[0])
    assert out[TOKEN_DISTANCE_AFTER] == [2, 0]
    assert out[TOKEN_NORM_BEFORE][1] == 0.0
    # masks include the EOS token TRL appends: 2 of 7 tokens differ on each side for row 0, none for row 1
    assert out[CHOSEN_DIFF_FRACTION] == pytest.approx([2 / 7, 0.0])
    assert out[REJECTED_DIFF_FRACTION] == pytest.approx([2 / 7, 0.0])


def test_conversational_rows_and_recompute():
    ds = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": "q"}]],
        "original_chosen": [[{"role": "assistant", "content": "one two three"}]],
        "chosen": [[{"role": "assistant", "content": "one two four"}]],
        "rejected": [[{"role": "assistant", "content": "one two five"}]],
    })
    out = add_edit_distance_stats(ds)
    assert out[WORD_DISTANCE_BEFORE] == [1] and out[WORD_DISTANCE_AFTER] == [1]
    again = add_edit_distance_stats(out)  # recomputing replaces, no duplicate-column error
    assert again.column_names == out.column_names


def test_unbridged_dataset_has_only_before():
    out = add_edit_distance_stats(Dataset.from_dict({"chosen": ["a b"], "rejected": ["a c"]}))
    assert out[WORD_DISTANCE_BEFORE] == [1] and WORD_DISTANCE_AFTER not in out.column_names
    summary = summarize_edit_distances(out)
    assert list(summary.index) == [("word_edit_distance", "before"), ("word_norm_edit_distance", "before")]


def test_summary_only_over_bridged_rows():
    ds = add_edit_distance_stats(bridged([
        ("a b c d", "a b c x", "a b c d e f", "bridged"),
        ("a", "a", "b c d e f g h", "failed"),
        ("a b", "a b", "a b", "bridged"),
    ]))
    summary = summarize_edit_distances(ds)
    assert summary.attrs == {"n_rows": 3, "n_bridged": 2}
    before = summary.loc[("word_edit_distance", "before")]
    after = summary.loc[("word_edit_distance", "after")]
    assert before["count"] == 2 and before["mean"] == pytest.approx(1.0)  # 2 and 0
    assert after["mean"] == pytest.approx(1.5)  # 3 and 0
    assert list(summary.columns) == ["count", "mean", "std", "p10", "p25", "p50", "p75", "p90"]
    assert before["p50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="add_edit_distance_stats"):
        summarize_edit_distances(Dataset.from_dict({"chosen": ["a"]}))


def test_six_equal_splits_ordered_by_distance():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(62):
        k = int(rng.integers(0, 20))
        rows.append((" ".join(f"w{j}" for j in range(k)), "x", "", "bridged" if i % 3 else "failed"))
    splits = edit_distance_splits(bridged(rows), 6)
    assert [len(s) for s in splits] == [11, 11, 10, 10, 10, 10]
    maxima = [max(s[WORD_DISTANCE_BEFORE]) for s in splits]
    minima = [min(s[WORD_DISTANCE_BEFORE]) for s in splits]
    assert all(maxima[i] <= minima[i + 1] for i in range(5))
    assert sum(len(s) for s in splits) == 62  # all rows, bridged or not
    with pytest.raises(ValueError):
        edit_distance_splits(bridged(rows), 0)


def test_plots_are_written(tmp_path):
    if not (SHARED_DATA / "qa" / "qasc-train.jsonl").exists():
        pytest.skip("../shared/data is not available")
    lines = (SHARED_DATA / "qa" / "qasc-train.jsonl").read_text().splitlines()[:40]
    solutions = [json.loads(line)["solution"] for line in lines]
    rows = []
    for i, text in enumerate(solutions):
        words = text.split()
        chosen = " ".join(words[:-1] + ["indeed"])  # a small edit of y_l
        rows.append((solutions[(i + 1) % len(solutions)], chosen, text, "bridged" if i % 4 else "failed"))
    tok = word_tokenizer(solutions + ["indeed"])
    ds = add_edit_distance_stats(add_diff_masks(bridged(rows), tok), tok)
    summary = summarize_edit_distances(ds)
    assert summary.loc[("word_edit_distance", "after"), "mean"] < summary.loc[("word_edit_distance", "before"), "mean"]
    paths = plot_edit_distances(ds, tmp_path / "figs")
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "word_edit_distance.png", "word_norm_edit_distance.png", "token_edit_distance.png",
        "token_norm_edit_distance.png", "diff_token_fraction.png", "edit_distance_splits.png",
    ])
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="no bridged rows"):
        plot_edit_distances(ds.filter(lambda r: r["bmc_status"] == "failed"), tmp_path / "none")


def test_num_proc_gives_the_same_columns():
    rows = [(f"a b c {i}", f"a b {i}", f"a x c {i} d", "bridged") for i in range(12)]
    tok = word_tokenizer([" ".join(r[:3]) for r in rows])
    single = add_edit_distance_stats(bridged(rows), tok)
    parallel = add_edit_distance_stats(bridged(rows), tok, num_proc=2)
    assert single.column_names == parallel.column_names
    for column in (WORD_DISTANCE_BEFORE, WORD_DISTANCE_AFTER, TOKEN_DISTANCE_BEFORE, TOKEN_DISTANCE_AFTER):
        assert single[column] == parallel[column]


def test_editor_statistics_say_what_the_editor_did():
    from bmc_data.tokens.stats import editor_statistics, only_final_answer_changed

    y_l = "Two plus two.\n2+2=5\nThe answer is 5"
    rows = [
        {"bmc_status": "bridged", "rejected": y_l, "chosen": y_l.replace("is 5", "is 4."), "task": "math",
         "original_chosen": "We add.\n2+2=4\nso the sum is four\nThe answer is 4"},            # answer line only
        {"bmc_status": "bridged", "rejected": y_l, "chosen": y_l.replace("5", "4"), "task": "math",
         "original_chosen": "2+2=4\nThe answer is 4"},                                           # a real fix
        {"bmc_status": "bridged", "rejected": "Hi there", "chosen": "Hi there, friend", "task": "instruction",
         "original_chosen": "Hello friend, how can I help?"},
        {"bmc_status": "failed", "rejected": y_l, "chosen": "x", "task": "math", "original_chosen": "x"},
    ]
    stats = editor_statistics(Dataset.from_list(rows))
    # word distances of the bridged rows, before: 9, 5, 6; after: 1, 2, 2
    assert stats == {"rows": 4, "bridged": 3, "bridged_share": 0.75, "median_word_edit_distance_before": 6.0,
                     "median_word_edit_distance_after": 2.0, "answer_rows": 2, "only_final_answer_changed": 1,
                     "only_final_answer_changed_share": 0.5}
    assert only_final_answer_changed("a\nb", "a\nb\nThe answer is 7.")  # an added answer line
    assert not only_final_answer_changed("a\nThe answer is 7", "a\nThe answer is 7")  # no change at all
    assert editor_statistics([])["bridged_share"] is None
