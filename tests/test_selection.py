"""Implicit reward margins (tiny random Llama, hand computation), alignment potential, dual margin, select_top."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from bmc_data.selection.margins import (
    ALIGNMENT_POTENTIAL,
    CHOSEN_TOKENS,
    DUAL_MARGIN,
    IMPLICIT_MARGIN,
    POLICY_CHOSEN_LOGPS,
    REF_CHOSEN_LOGPS,
    REJECTED_TOKENS,
    SELECTION_INDEX,
    add_alignment_potential,
    add_dual_margin,
    add_implicit_reward_margins,
    select_top,
)
from bmc_data.selection.pair_quality import REWARD_MARGIN
from bmc_data.tokens.tokenization import tokenize_pair
from bmc_train.testing import build_tiny_model, read_qa_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def margins(explicit: list[float], implicit: list[float]) -> Dataset:
    return Dataset.from_dict({
        "prompt": [f"q{i}" for i in range(len(explicit))],
        "score_chosen": [5.0 + e for e in explicit],
        "score_rejected": [5.0] * len(explicit),
        IMPLICIT_MARGIN: implicit,
    })


# --- select_top -------------------------------------------------------------------------------------------------


def scored(values: list) -> Dataset:
    return Dataset.from_dict({"id": list(range(len(values))), "score": values})


@pytest.mark.parametrize(
    ("n", "fraction", "kept"),
    [(10, 0.3, 3), (95, 0.1, 9), (100, 0.1, 10), (5, 0.1, 1), (7, 1.0, 7), (10, 0.25, 2), (1, 0.01, 1)],
)
def test_select_top_rounding(n, fraction, kept):
    out = select_top(scored([float(i) for i in range(n)]), "score", fraction)
    assert len(out) == kept
    assert out["score"] == [float(n - 1 - i) for i in range(kept)]  # best first


def test_select_top_order_ties_missing_and_log(caplog):
    ds = scored([0.5, None, 2.0, 2.0, float("nan"), -1.0, 3.0, 0.0, 1.0, 2.0])
    with caplog.at_level(logging.INFO, logger="bmc_data.selection"):
        out = select_top(ds, "score", 0.5)
    assert out["score"] == [3.0, 2.0, 2.0, 2.0, 1.0]  # ties stay in dataset order
    assert out[SELECTION_INDEX] == [6, 2, 3, 9, 8] and out["id"] == out[SELECTION_INDEX]
    assert "kept 5 of 10 row(s)" in caplog.text and "2 row(s) without a score" in caplog.text
    low = select_top(ds, "score", 0.2, largest=False, index_column=None)
    assert low["score"] == [-1.0, 0.0] and SELECTION_INDEX not in low.column_names
    # never more rows than have a score
    assert len(select_top(ds, "score", 1.0)) == 8


def test_select_top_errors():
    ds = scored([1.0, 2.0])
    with pytest.raises(ValueError, match="no column 'bmc_dcrm'"):
        select_top(ds, "bmc_dcrm", 0.1)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            select_top(ds, "score", bad)
    with pytest.raises(ValueError, match="'id'"):
        select_top(ds, "score", 0.5, index_column="id")


# --- alignment potential & dual margin ----------------------------------------------------------------------------


def test_alignment_potential_hand_computed():
    ex, im = [3.0, 1.0, 2.0, 0.0], [0.5, -2.0, 1.0, 0.25]
    raw = add_alignment_potential(margins(ex, im), normalize="none")
    # M_AP = Δr_ex - |Δr_im|; equal rewards (row 3): -|Δr_im|
    assert raw[ALIGNMENT_POTENTIAL] == pytest.approx([2.5, -1.0, 1.0, -0.25])
    assert raw[REWARD_MARGIN] == pytest.approx(ex)

    z = add_alignment_potential(margins(ex, im))
    ex_mean, ex_std = 1.5, math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 4)
    abs_im = [0.5, 2.0, 1.0, 0.25]
    im_mean = sum(abs_im) / 4
    im_std = math.sqrt(sum((a - im_mean) ** 2 for a in abs_im) / 4)
    expected = [(e - ex_mean) / ex_std - (a - im_mean) / im_std for e, a in zip(ex, abs_im)]
    assert z[ALIGNMENT_POTENTIAL] == pytest.approx(expected)

    weighted = add_alignment_potential(margins(ex, im), normalize="none", implicit_weight=2.0)
    assert weighted[ALIGNMENT_POTENTIAL] == pytest.approx([2.0, -3.0, 0.0, -0.5])
    # a column of explicit margins instead of scores; constant columns z-score to 0
    own = Dataset.from_dict({"m": [1.0, 1.0], "im": [0.0, 0.0]})
    out = add_alignment_potential(own, implicit_margin_column="im", explicit_margin_column="m")
    assert out[ALIGNMENT_POTENTIAL] == [0.0, 0.0] and REWARD_MARGIN not in out.column_names


def test_dual_margin_fusions():
    ex, im = [2.0, 0.0, -1.0], [1.0, 0.0, 3.0]
    mul = add_dual_margin(margins(ex, im))
    assert mul[DUAL_MARGIN] == pytest.approx([sigmoid(2) * sigmoid(1), 0.25, sigmoid(-1) * sigmoid(3)])
    add = add_dual_margin(margins(ex, im), fusion="add")
    assert add[DUAL_MARGIN] == pytest.approx([3.0, 0.0, 2.0])
    bayes = add_dual_margin(margins(ex, im), fusion="bayes")
    both = [sigmoid(a) * sigmoid(b) for a, b in zip(ex, im)]
    neither = [sigmoid(-a) * sigmoid(-b) for a, b in zip(ex, im)]
    assert bayes[DUAL_MARGIN] == pytest.approx([p / (p + q) for p, q in zip(both, neither)])
    assert bayes[DUAL_MARGIN] == pytest.approx([sigmoid(3), 0.5, sigmoid(2)])
    scaled = add_dual_margin(margins(ex, im), fusion="add", external_scale=0.5)
    assert scaled[DUAL_MARGIN] == pytest.approx([2.0, 0.0, 2.5])
    # large margins do not overflow
    big = add_dual_margin(margins([1e4], [-1e4]))
    assert big[DUAL_MARGIN] == [0.0]


def test_score_errors_name_the_column():
    ds = margins([1.0], [0.0])
    with pytest.raises(ValueError, match="no column 'bmc_implicit_reward_margin'"):
        add_alignment_potential(ds.remove_columns(IMPLICIT_MARGIN))
    with pytest.raises(ValueError, match="no column 'score_rejected'"):
        add_dual_margin(ds.remove_columns("score_rejected"))
    with pytest.raises(ValueError, match=r"row 1: column 'bmc_implicit_reward_margin'"):
        add_dual_margin(margins([1.0, 2.0], [0.0, float("inf")]))
    with pytest.raises(ValueError, match="fusion"):
        add_dual_margin(ds, fusion="max")
    with pytest.raises(ValueError, match="normalize"):
        add_alignment_potential(ds, normalize="rank")


# --- implicit reward margins with a tiny random Llama -------------------------------------------------------------


@pytest.fixture(scope="module")
def qa_rows(shared_data):
    return read_qa_rows(shared_data / "qa" / "ecqa-train.jsonl", limit=24)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, qa_rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"), [r["problem"] + "\n" + r["solution"] for r in qa_rows])
    policy = AutoModelForCausalLM.from_pretrained(folder)
    ref = copy.deepcopy(policy)
    torch.manual_seed(1)
    with torch.no_grad():  # a reference that differs from the policy
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref, AutoTokenizer.from_pretrained(folder)


def wrong_answer(row: dict) -> str:
    options = [o.strip() for o in row["problem"].split("Options:", 1)[-1].splitlines()]
    wrong = next(o for o in options if o and o != row["answer"])
    body, _, _ = row["solution"].rpartition("The answer is")
    return f"{body}The answer is {wrong}"


def qa_pairs(rows: list[dict], conversational: bool = False) -> Dataset:
    def prompt(r):
        return [{"role": "user", "content": r["problem"]}] if conversational else r["problem"] + "\n"

    return Dataset.from_dict({
        "prompt": [prompt(r) for r in rows],
        "chosen": [r["solution"] for r in rows],
        "rejected": [wrong_answer(r) for r in rows],
        "score_chosen": [8.0 - (i % 3) for i in range(len(rows))],
        "score_rejected": [2.0 + (i % 4) for i in range(len(rows))],
    })


def summed_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """Σ_t log π(y_t | x, y_<t) over the completion, one unpadded forward in float64 arithmetic."""
    ids = prompt_ids + completion_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logps = torch.log_softmax(logits, dim=-1)
    return sum(float(logps[t - 1, ids[t]]) for t in range(len(prompt_ids), len(ids)))


@pytest.mark.parametrize("conversational", [False, True])
def test_implicit_margins_match_a_hand_computation(tiny, qa_rows, conversational):
    policy, ref, tok = tiny
    ds = qa_pairs(qa_rows[:3], conversational)
    beta = 0.25
    out = add_implicit_reward_margins(ds, policy, tok, ref_model=ref, beta=beta, batch_size=2, progress=False)
    for i, row in enumerate(ds):
        t = tokenize_pair(tok, row["prompt"], row["chosen"], row["rejected"])  # TRL's one-row reference
        pc, pr = (summed_logps(policy, t["prompt_ids"], t[s]) for s in ("chosen_ids", "rejected_ids"))
        rc, rr = (summed_logps(ref, t["prompt_ids"], t[s]) for s in ("chosen_ids", "rejected_ids"))
        assert out[POLICY_CHOSEN_LOGPS][i] == pytest.approx(pc, abs=1e-3)
        assert out[REF_CHOSEN_LOGPS][i] == pytest.approx(rc, abs=1e-3)
        assert out[CHOSEN_TOKENS][i] == len(t["chosen_ids"]) and out[REJECTED_TOKENS][i] == len(t["rejected_ids"])
        assert out[IMPLICIT_MARGIN][i] == pytest.approx(beta * ((pc - rc) - (pr - rr)), abs=1e-3)
        assert out[IMPLICIT_MARGIN][i] != 0.0
    assert len(out) == len(ds) and out["score_chosen"] == ds["score_chosen"]


def test_implicit_margins_limits_padding_and_truncation(tiny, qa_rows):
    policy, ref, tok = tiny
    ds = qa_pairs(qa_rows[:5])
    policy.train()
    same = add_implicit_reward_margins(ds, policy, tok, ref_model=policy, progress=False)
    assert same[IMPLICIT_MARGIN] == [0.0] * 5  # model == ref_model: exactly 0
    assert policy.training  # mode restored

    one = add_implicit_reward_margins(ds, policy, tok, ref_model=ref, batch_size=1, progress=False)
    many = add_implicit_reward_margins(ds, policy, tok, ref_model=ref, batch_size=5, progress=False)
    assert many[IMPLICIT_MARGIN] == pytest.approx(one[IMPLICIT_MARGIN], abs=1e-4)  # right padding changes nothing

    free = add_implicit_reward_margins(ds, policy, tok, beta=1.0, progress=False)  # reference-free
    assert REF_CHOSEN_LOGPS not in free.column_names
    assert free[IMPLICIT_MARGIN] == pytest.approx(
        [c - r for c, r in zip(one[POLICY_CHOSEN_LOGPS], one["bmc_policy_rejected_logps"])], abs=1e-4)
    mean = add_implicit_reward_margins(ds, policy, tok, beta=1.0, length_normalize=True, progress=False)
    assert mean[IMPLICIT_MARGIN] == pytest.approx([
        c / nc - r / nr for c, r, nc, nr in zip(
            one[POLICY_CHOSEN_LOGPS], one["bmc_policy_rejected_logps"], one[CHOSEN_TOKENS], one[REJECTED_TOKENS])
    ], abs=1e-4)

    limit = 40
    cut = add_implicit_reward_margins(ds, policy, tok, ref_model=ref, max_length=limit, progress=False)
    for i, row in enumerate(ds):
        t = tokenize_pair(tok, row["prompt"], row["chosen"], row["rejected"])
        kept = max(0, min(len(t["chosen_ids"]), limit - len(t["prompt_ids"])))
        assert cut[CHOSEN_TOKENS][i] == kept
        assert cut[POLICY_CHOSEN_LOGPS][i] == pytest.approx(
            summed_logps(policy, t["prompt_ids"], t["chosen_ids"][:kept]), abs=1e-3)
    with pytest.raises(ValueError, match="prompt"):
        add_implicit_reward_margins(ds.remove_columns("prompt"), policy, tok)


def test_real_pairs_scores_and_best_ten_percent(tiny, qa_rows):
    policy, ref, tok = tiny
    ds = add_implicit_reward_margins(qa_pairs(qa_rows), policy, tok, ref_model=ref, progress=False)
    ds = add_dual_margin(add_alignment_potential(ds))
    potential, dual = np.array(ds[ALIGNMENT_POTENTIAL]), np.array(ds[DUAL_MARGIN])
    assert np.isfinite(potential).all() and ((dual > 0) & (dual < 1)).all()
    # among pairs with the same explicit margin, the one the model already separates more has less potential
    explicit, implicit = np.array(ds[REWARD_MARGIN]), np.abs(np.array(ds[IMPLICIT_MARGIN]))
    for m in np.unique(explicit):
        group = np.flatnonzero(explicit == m)
        order = group[np.argsort(implicit[group])]
        assert (np.diff(potential[order]) <= 1e-12).all()

    best = select_top(ds, ALIGNMENT_POTENTIAL, 0.1)
    assert len(best) == 2  # floor(0.1 * 24)
    dropped = sorted(set(range(len(ds))) - set(best[SELECTION_INDEX]))
    assert min(best[ALIGNMENT_POTENTIAL]) >= max(potential[dropped])


def test_select_top_works_on_a_bridged_dataset_and_keeps_its_source_index():
    """bridge_dataset writes `bmc_source_index` (the row's place in the bridging source); select_top's own index
    once had the same name, so it refused every bridged dataset unless told another name."""
    ds = Dataset.from_dict({"bmc_source_index": [10, 11, 12, 13], "score": [0.1, 0.9, 0.5, 0.7]})
    best = select_top(ds, "score", 0.5)
    assert best["bmc_source_index"] == [11, 13] and best[SELECTION_INDEX] == [1, 3]
