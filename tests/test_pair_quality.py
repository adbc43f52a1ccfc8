"""DCRM and best-of-N² pairing on hand-computed cases, a tiny reward model, and real ECQA pairs."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from datasets import Dataset
from test_stats import word_tokenizer

from bmc_data.selection.pair_quality import (
    DCRM,
    DCRM_DISTANCE,
    PAIR_STATUS,
    REWARD_CHOSEN,
    REWARD_MARGIN,
    REWARD_REJECTED,
    SequenceClassifierReward,
    add_dcrm,
    best_of_n2_pairs,
    dcrm_value,
    pair_distance,
)
from bmc_data.tokens.diff import levenshtein_distance
from bmc_train.testing import build_tiny_model, read_qa_rows

EPS = 0.01


def pairs(rows: list[tuple[str, str, float, float]]) -> Dataset:
    """rows of (chosen, rejected, score_chosen, score_rejected)."""
    return Dataset.from_dict({
        "prompt": [f"question {i}\n" for i in range(len(rows))],
        "chosen": [r[0] for r in rows],
        "rejected": [r[1] for r in rows],
        "score_chosen": [r[2] for r in rows],
        "score_rejected": [r[3] for r in rows],
    })


# --- DCRM on constructed cases ------------------------------------------------------------------------------------


def test_limiting_cases_identical_disjoint_equal_rewards():
    out = add_dcrm(pairs([
        ("a b c", "a b c", 5.0, 3.0),  # identical responses: d = 0, DCRM = Δr / ε
        ("a b", "x y z", 7.0, 1.0),  # nothing in common: d = 1
        ("a b c d", "a b x d", 4.0, 4.0),  # equal rewards: Δr = 0, DCRM = 0 whatever d
    ]))
    assert out[DCRM_DISTANCE] == [0.0, 1.0, 0.25]
    assert out[REWARD_MARGIN] == [2.0, 6.0, 0.0]
    assert out[DCRM] == pytest.approx([2.0 / EPS, 6.0 / (1.0 + EPS), 0.0])
    assert len(out) == 3  # rows are never dropped


def test_hand_computed_dcrm_and_epsilon():
    rows = [
        ("the cat sat on the mat", "the cat sat on a hat", 8.0, 6.0),  # 2 of 6 words substituted
        ("one two three four", "one two", 4.0, 5.0),  # 2 of 4 deleted; chosen scored lower: negative margin
        ("alpha beta gamma", "alpha beta gamma delta epsilon", 3.5, 1.0),  # 2 inserted, longer side 5
    ]
    out = add_dcrm(pairs(rows))
    assert out[DCRM_DISTANCE] == pytest.approx([2 / 6, 2 / 4, 2 / 5])
    assert out[DCRM] == pytest.approx([2.0 / (1 / 3 + 0.01), -1.0 / (0.5 + 0.01), 2.5 / (0.4 + 0.01)])
    wide = add_dcrm(pairs(rows), epsilon=1.0)
    assert wide[DCRM] == pytest.approx([2.0 / (4 / 3), -1.0 / 1.5, 2.5 / 1.4])
    assert dcrm_value(2.0, 1 / 3) == pytest.approx(out[DCRM][0])
    # recomputing replaces the columns
    assert add_dcrm(out).column_names == out.column_names


def test_near_identical_noisy_pair_outranks_a_real_pair_unless_min_distance_floors_it():
    """DCRM = Δr / (d + ε) at d → 0: a one-word edit of 40 words whose reward gap is noise (0.5) outranks a real pair
    (half the words changed, gap 3.0); `min_distance` floors d in the ratio and the real pair ranks first."""
    base = " ".join(f"w{i}" for i in range(40))
    near = base.rsplit(" ", 1)[0] + " other"  # d = 1/40
    real_rejected = " ".join(f"w{i}" if i % 2 else f"x{i}" for i in range(40))  # d = 20/40
    rows = [(base, near, 5.5, 5.0), (base, real_rejected, 6.0, 3.0)]
    plain = add_dcrm(pairs(rows))
    assert plain[DCRM_DISTANCE] == pytest.approx([1 / 40, 0.5])
    assert plain[DCRM] == pytest.approx([0.5 / (1 / 40 + EPS), 3.0 / (0.5 + EPS)])  # 14.3 > 5.9: the noise wins
    assert plain[DCRM][0] > plain[DCRM][1]
    floored = add_dcrm(pairs(rows), min_distance=0.1)
    assert floored[DCRM_DISTANCE] == plain[DCRM_DISTANCE]  # the stored distance stays the true d
    assert floored[DCRM] == pytest.approx([0.5 / (0.1 + EPS), 3.0 / (0.5 + EPS)])  # 4.5 < 5.9: the real pair wins
    assert floored[DCRM][1] > floored[DCRM][0]
    assert dcrm_value(2.0, 0.0, min_distance=0.2) == pytest.approx(2.0 / 0.21)
    assert add_dcrm(pairs(rows), min_distance=0.0)[DCRM] == plain[DCRM]  # 0: no floor, the old values
    with pytest.raises(ValueError, match=r"min_distance must be in \[0, 1\]"):
        add_dcrm(pairs(rows), min_distance=1.5)


def test_token_level_distance_uses_the_tokenizer():
    texts = ["the cat sat on the mat", "the cat sat on a hat", "dogs bark loudly at night"]
    tok = word_tokenizer(texts)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    out = add_dcrm(pairs([(texts[0], texts[1], 1.0, 0.0), (texts[0], texts[2], 1.0, 0.0)]), tokenizer=tok)
    expected = [levenshtein_distance(ids[0], ids[1]) / 6, levenshtein_distance(ids[0], ids[2]) / 6]
    assert out[DCRM_DISTANCE] == pytest.approx(expected)
    assert pair_distance(texts[0], texts[1], tok) == pytest.approx(expected[0])
    # chat-message responses are compared by their text
    assert pair_distance([{"role": "assistant", "content": texts[0]}], texts[0]) == 0.0


def test_reward_fn_per_pair_and_batched():
    ds = pairs([("a b c d", "a b", 0.0, 0.0), ("x", "x y z", 0.0, 0.0)])
    out = add_dcrm(ds.remove_columns(["score_chosen", "score_rejected"]), reward_fn=lambda p, r: len(r.split()))
    assert out[REWARD_CHOSEN] == [4.0, 1.0] and out[REWARD_REJECTED] == [2.0, 3.0]
    assert out[REWARD_MARGIN] == [2.0, -2.0]
    assert out[DCRM] == pytest.approx([2.0 / (0.5 + EPS), -2.0 / (2 / 3 + EPS)])

    class Batched:
        calls = 0

        def __call__(self, prompt, response):
            raise AssertionError("batch() should be used")

        def batch(self, prompts, responses):
            Batched.calls += 1
            return [float(len(r)) for r in responses]

    out = add_dcrm(ds, reward_columns=None, reward_fn=Batched())
    assert Batched.calls == 2 and out[REWARD_MARGIN] == [4.0, -4.0]


def test_clear_errors():
    ds = pairs([("a", "b", 1.0, 0.0)])
    with pytest.raises(ValueError, match="score_chosen"):
        add_dcrm(ds.remove_columns("score_chosen"))
    with pytest.raises(ValueError, match="'rating_w'"):
        add_dcrm(ds, reward_columns=("rating_w", "score_rejected"))
    with pytest.raises(ValueError, match="not both"):
        add_dcrm(ds, reward_columns=("score_chosen", "score_rejected"), reward_fn=lambda p, r: 0.0)
    with pytest.raises(ValueError, match=r"row 1: column 'score_rejected'"):
        add_dcrm(pairs([("a", "b", 1.0, 0.0), ("a", "b", 1.0, float("nan"))]))
    with pytest.raises(ValueError, match="epsilon"):
        add_dcrm(ds, epsilon=0.0)
    with pytest.raises(ValueError, match="prompt"):
        add_dcrm(ds.remove_columns("prompt"), reward_fn=lambda p, r: 0.0)


# --- best-of-N² ---------------------------------------------------------------------------------------------------


def candidates(rows: list[tuple[list, list]]) -> Dataset:
    return Dataset.from_dict({
        "id": [f"q{i}" for i in range(len(rows))],
        "prompt": [f"question {i}" for i in range(len(rows))],
        "responses": [r[0] for r in rows],
        "rewards": [r[1] for r in rows],
    })


BEST_OF_4 = (
    [
        "the answer is paris because paris is the capital",  # 0: r = 9
        "the answer is lyon because paris is the capital",  # 1: r = 3, one word from 0
        "i do not know",  # 2: r = 5
        "completely different text with many words here now ok",  # 3: r = 1, nothing in common with 0
    ],
    [9.0, 3.0, 5.0, 1.0],
)


def test_best_of_n2_picks_highest_dcrm_not_largest_margin():
    out = best_of_n2_pairs(candidates([BEST_OF_4]))
    row = out[0]
    # (0, 1): Δr = 6, d = 1/9 -> 6 / (1/9 + ε) ≈ 49.5; the largest margin (0, 3): 8 / (1 + ε) ≈ 7.9
    assert (row["bmc_chosen_index"], row["bmc_rejected_index"]) == (0, 1)
    assert row["chosen"] == BEST_OF_4[0][0] and row["rejected"] == BEST_OF_4[0][1]
    assert (row["score_chosen"], row["score_rejected"], row[REWARD_MARGIN]) == (9.0, 3.0, 6.0)
    assert row[DCRM_DISTANCE] == pytest.approx(1 / 9)
    assert row[DCRM] == pytest.approx(6.0 / (1 / 9 + EPS))
    assert row[PAIR_STATUS] == "paired" and row["id"] == "q0" and row["prompt"] == "question 0"
    assert "responses" not in out.column_names and "rewards" not in out.column_names
    # brute force over all ordered pairs with r+ > r-
    responses, rewards = BEST_OF_4
    scores = {
        (i, j): dcrm_value(rewards[i] - rewards[j], pair_distance(responses[i], responses[j]))
        for i in range(4) for j in range(4) if rewards[i] > rewards[j]
    }
    assert max(scores, key=scores.get) == (0, 1) and row[DCRM] == pytest.approx(max(scores.values()))


def test_best_of_n2_min_distance_floor_changes_the_winning_pair():
    # the plain winner (0, 1) has d = 1/9; with d floored at 0.9 it scores 6 / 0.9 ≈ 6.7 and the largest margin
    # (0, 3), d = 1: 8 / 1 = 8, wins
    floored = best_of_n2_pairs(candidates([BEST_OF_4]), min_distance=0.9)[0]
    responses, rewards = BEST_OF_4
    scores = {
        (i, j): dcrm_value(rewards[i] - rewards[j], pair_distance(responses[i], responses[j]), min_distance=0.9)
        for i in range(4) for j in range(4) if rewards[i] > rewards[j]
    }
    best = max(scores, key=scores.get)
    assert best == (0, 3) and (floored["bmc_chosen_index"], floored["bmc_rejected_index"]) == best
    assert floored[DCRM] == pytest.approx(scores[best])
    assert floored[DCRM_DISTANCE] == pytest.approx(pair_distance(responses[best[0]], responses[best[1]]))
    with pytest.raises(ValueError, match=r"min_distance must be in \[0, 1\]"):
        best_of_n2_pairs(candidates([BEST_OF_4]), min_distance=-0.1)


def test_best_of_n2_ties_and_no_valid_pair_rows_are_kept(caplog):
    ds = candidates([
        (["a b", "a c", "a d"], [2, 1, 1]),  # (0,1) and (0,2) tie on DCRM and margin: the first pair wins
        (["only one"], [3.0]),
        (["x", "y", "z"], [2.0, 2.0, 2.0]),
        ([], []),
        BEST_OF_4,
    ])
    with caplog.at_level(logging.INFO, logger="bmc_data.selection.pair_quality"):
        out = best_of_n2_pairs(ds)
    assert len(out) == 5
    assert out[PAIR_STATUS] == ["paired", "too_few_responses", "all_rewards_equal", "too_few_responses", "paired"]
    assert (out[0]["bmc_chosen_index"], out[0]["bmc_rejected_index"]) == (0, 1)
    assert out["chosen"][1:4] == [None, None, None] and out[DCRM][1:4] == [None, None, None]
    assert out["id"] == ["q0", "q1", "q2", "q3", "q4"]
    assert "paired 2 of 5" in caplog.text and "2 with fewer than 2 responses, 1 with all rewards equal" in caplog.text

    dropped = best_of_n2_pairs(ds, drop_invalid=True)
    assert dropped["id"] == ["q0", "q4"]


def test_best_of_n2_errors_and_chat_responses():
    with pytest.raises(ValueError, match=r"row 1: 2 response\(s\) in 'responses' but 1 reward"):
        best_of_n2_pairs(candidates([BEST_OF_4, (["a", "b"], [1.0])]))
    with pytest.raises(ValueError, match="'scores'"):
        best_of_n2_pairs(candidates([BEST_OF_4]), rewards_column="scores")
    msg = [[{"role": "assistant", "content": t}] for t in BEST_OF_4[0]]
    out = best_of_n2_pairs(candidates([(msg, BEST_OF_4[1]), (msg[:1], [1.0])]))
    assert out[0]["chosen"] == msg[0] and out[0]["rejected"] == msg[1] and out[1]["chosen"] is None


# --- a transformers reward model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, shared_data):
    rows = read_qa_rows(shared_data / "qa" / "ecqa-train.jsonl", limit=32)
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), [r["problem"] + "\n" + r["solution"] for r in rows])


def test_sequence_classifier_reward_matches_a_single_forward(tiny_folder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_folder, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_folder)
    reward = SequenceClassifierReward(model, tok, batch_size=3)
    prompts = ["What is red?", "Where do fish live?", "Why?"]
    responses = ["An apple is red.", "Fish live in water, mostly in the sea.", "Because."]
    expected = []
    for p, r in zip(prompts, responses):
        text = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                       tokenize=False)
        with torch.no_grad():
            expected.append(float(model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0]))
    assert reward.batch(prompts, responses) == pytest.approx(expected, abs=1e-5)  # padded batch == one by one
    assert reward(prompts[1], responses[1]) == pytest.approx(expected[1], abs=1e-5)
    out = add_dcrm(Dataset.from_dict({"prompt": prompts[:2], "chosen": responses[:2], "rejected": responses[1:]}),
                   reward_fn=reward)
    # rejected responses are scored with their own row's prompt
    margins = [expected[0] - reward(prompts[0], responses[1]), expected[1] - reward(prompts[1], responses[2])]
    assert out[REWARD_MARGIN] == pytest.approx(margins, abs=1e-5)
    with pytest.raises(ValueError, match="num_labels=2"):
        SequenceClassifierReward(AutoModelForSequenceClassification.from_pretrained(tiny_folder, num_labels=2), tok)


# --- real pairs -------------------------------------------------------------------------------------------------


def perturbed(solution: str, problem: str, answer: str) -> str:
    """The solution with a wrong final answer (a small edit)."""
    options = [o.strip() for o in problem.split("Options:", 1)[-1].splitlines() if o.strip() and o.strip() != answer]
    body, _, _ = solution.rpartition("The answer is")
    return f"{body}The answer is {options[0]}"


def test_real_ecqa_pairs(shared_data):
    rows = read_qa_rows(shared_data / "qa" / "ecqa-train.jsonl", limit=40)
    n = len(rows)
    small = [(r["solution"], perturbed(r["solution"], r["problem"], r["answer"])) for r in rows]
    large = [(r["solution"], rows[(i + 1) % n]["solution"]) for i, r in enumerate(rows)]
    ds = pairs([(c, rj, 1.0, 0.0) for c, rj in small + large])
    out = add_dcrm(ds)
    d, score = out[DCRM_DISTANCE], out[DCRM]
    assert all(math.isfinite(v) for v in score) and all(0.0 <= v <= 1.0 for v in d)
    # same margin everywhere: a one-answer edit is closer, hence a better-calibrated pair, than another solution
    assert max(d[:n]) < min(d[n:]) and min(score[:n]) > max(score[n:])

    cands = candidates([  # best pair: the solution vs its one-answer edit, not vs another solution
        ([r["solution"], small[i][1], rows[(i + 1) % n]["solution"]], [1.0, 0.0, 0.0]) for i, r in enumerate(rows)
    ])
    best = best_of_n2_pairs(cands)
    assert set(best[PAIR_STATUS]) == {"paired"}
    assert set(zip(best["bmc_chosen_index"], best["bmc_rejected_index"])) == {(0, 1)}
