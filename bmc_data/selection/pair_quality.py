"""Response-pair quality: DCRM (Distance Calibrated Reward Margin) and best-of-N² pairing.

Huang & Goyal, "DCRM: A Heuristic to Measure Response Pair Quality in Preference Optimization" (Findings of EMNLP
2025, arXiv:2506.14157; official code github.com/HCY123902/DCRM). The paper's observation (abstract, introduction):
what a model learns from a pair (y+, y-) is the set of differences between them; the reward margin measures the
*desired* difference, the distance between the two responses the *total* difference (much of it noise: style,
length, phrasing). DCRM combines the two so that it "encourages minimal noisy differences and maximal desired
differences"; we implement it as the reward margin per unit of distance:

    Δr(x, y+, y-)   = r(x, y+) - r(x, y-)                     (reward margin)
    d(y+, y-)       = Levenshtein(y+, y-) / max(|y+|, |y-|)   (normalised edit distance, in [0, 1])
    DCRM(x, y+, y-) = Δr / (d + ε)

Best-of-N² pairing (the paper's data-construction method): from N responses to one prompt with rewards, consider
every ordered pair (y_i, y_j) with r_i > r_j and keep the one with the highest DCRM.

Neither the paper's full text nor its code could be read when this was written (only the abstract): the combination
above is our most faithful reading of it, not a verified copy of the paper's equation; docs/data-selection.md says
so and lists the choices made:

* distance: this library's edit distance (`bmc_data.tokens.stats`, rapidfuzz Levenshtein), at token level when a tokenizer
  is given (response tokens, no special tokens), else at word level (whitespace split); normalised by the longer side
  as in `add_edit_distance_stats`, so 0 = identical and 1 = nothing in common;
* ε = 0.01 by default keeps DCRM finite for identical responses (d = 0) and caps their weight at 100·Δr;
* the margin is used as given (raw score difference), so DCRM has the reward's unit; pass `reward_fn` or rescale
  the score columns to change it;
* best-of-N² ties are broken by the larger margin, then by the first pair in (i, j) order.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from datasets import Dataset, Features, Value

from bmc_data.pairs.schema import CHOSEN, PROMPT, REJECTED, response_text
from bmc_data.tokens.stats import (
    _distance,  # the same normalised Levenshtein as the edit-distance statistics
)

__all__ = [
    "DCRM",
    "DCRM_DISTANCE",
    "DEFAULT_EPSILON",
    "PAIR_STATUS",
    "REWARD_MARGIN",
    "BatchRewardFn",
    "RewardFn",
    "SequenceClassifierReward",
    "add_dcrm",
    "best_of_n2_pairs",
    "dcrm_value",
    "pair_distance",
]

logger = logging.getLogger(__name__)

# --- columns ----------------------------------------------------------------------------------------------------
DCRM = "bmc_dcrm"
DCRM_DISTANCE = "bmc_dcrm_distance"  # normalised edit distance d(y+, y-) in [0, 1]
REWARD_MARGIN = "bmc_reward_margin"  # r(y+) - r(y-)
REWARD_CHOSEN = "bmc_reward_chosen"  # rewards computed by a reward_fn (score columns are used as they are)
REWARD_REJECTED = "bmc_reward_rejected"
SCORE_CHOSEN = "score_chosen"  # UltraFeedback's names, also written by best_of_n2_pairs
SCORE_REJECTED = "score_rejected"
PAIR_STATUS = "bmc_pair_status"
CHOSEN_INDEX = "bmc_chosen_index"
REJECTED_INDEX = "bmc_rejected_index"

# --- best_of_n2_pairs statuses ----------------------------------------------------------------------------------
PAIRED = "paired"
TOO_FEW_RESPONSES = "too_few_responses"
ALL_REWARDS_EQUAL = "all_rewards_equal"

DEFAULT_EPSILON = 0.01


# --- reward functions -------------------------------------------------------------------------------------------
RewardFn = Callable[[Any, Any], float]
"""`(prompt, response) -> reward`; prompt and response as stored in the dataset (text or chat messages)."""


@runtime_checkable
class BatchRewardFn(Protocol):
    """A reward function that can also score many (prompt, response) pairs at once (used when present)."""

    def __call__(self, prompt: Any, response: Any) -> float: ...

    def batch(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]: ...


class SequenceClassifierReward:
    """A transformers sequence-classification reward model (one output logit) as a `BatchRewardFn`.

    The pair is rendered with the tokenizer's chat template when it has one (prompt as user turn(s), response as the
    assistant turn), else as `prompt + response` text with the tokenizer's special tokens. The reward is the logit.

    Args:
        model: An `AutoModelForSequenceClassification` with `num_labels == 1` (e.g. Skywork-Reward).
        tokenizer: Its tokenizer; needs a pad token when `batch_size > 1`.
        batch_size: Pairs per forward pass.
        max_length: Truncate longer inputs to this many tokens (None: no truncation).
        device: Where to run; default the model's device.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        device: Any = None,
    ) -> None:
        num_labels = getattr(model.config, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(
                f"SequenceClassifierReward needs a model with one output logit, got num_labels={num_labels}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size > 1 and tokenizer.pad_token_id is None:
            raise ValueError("the reward tokenizer has no pad_token; set one (or use batch_size=1)")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device

    def _render(self, prompt: Any, response: Any) -> tuple[str, bool]:
        """(text, add_special_tokens)."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            reply = [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
            # the rendered template carries its own BOS/special tokens, as apply_chat_template(tokenize=True) does
            return self.tokenizer.apply_chat_template(messages + reply, tokenize=False), False
        prompt_text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return prompt_text + response_text(response), True

    def batch(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts and {len(responses)} responses")
        device = self.device or next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        rewards: list[float] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                rendered = [self._render(p, r) for p, r in zip(prompts[start:start + self.batch_size],
                                                               responses[start:start + self.batch_size])]
                special = rendered[0][1]
                enc = self.tokenizer(
                    [text for text, _ in rendered],
                    add_special_tokens=special,
                    padding=len(rendered) > 1,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                with torch.no_grad():
                    logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits
                rewards.extend(float(v) for v in logits[:, 0].float().cpu())
        finally:
            self.model.train(was_training)
        return rewards

    def __call__(self, prompt: Any, response: Any) -> float:
        return self.batch([prompt], [response])[0]


def _rewards(reward_fn: RewardFn, prompts: Sequence[Any], responses: Sequence[Any]) -> list[float]:
    batch = getattr(reward_fn, "batch", None)
    values = batch(prompts, responses) if callable(batch) else [reward_fn(p, r) for p, r in zip(prompts, responses)]
    out = [float(v) for v in values]
    bad = next((i for i, v in enumerate(out) if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"row {bad}: reward_fn returned a non-finite reward ({out[bad]})")
    return out


# --- the score --------------------------------------------------------------------------------------------------
def _units(text: str, tokenizer: Any) -> list:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if tokenizer is not None else text.split()


def pair_distance(a: Any, b: Any, tokenizer: Any = None) -> float:
    """Normalised edit distance d(a, b) in [0, 1] between two responses (text or chat messages).

    Token-level Levenshtein distance (response tokens without special tokens) when `tokenizer` is given, else
    word-level (whitespace split), divided by the longer length; 0 for two empty responses.
    """
    return _distance(_units(response_text(a), tokenizer), _units(response_text(b), tokenizer))[1]


def dcrm_value(margin: float, distance: float, epsilon: float = DEFAULT_EPSILON, min_distance: float = 0.0) -> float:
    """DCRM = Δr / (max(d, min_distance) + ε) (Huang & Goyal 2025; our reading, see the module docstring).

    As d → 0 the ratio grows to Δr/ε, so a near-identical pair whose reward gap is only noise outranks a real pair;
    `min_distance` floors d in the denominator (0: no floor), capping any pair's DCRM at Δr / (min_distance + ε).
    """
    return margin / (max(distance, min_distance) + epsilon)


def _check_min_distance(min_distance: float) -> None:
    if not 0 <= min_distance <= 1:
        raise ValueError(f"min_distance must be in [0, 1] (a normalised edit distance), got {min_distance}")


def _check_epsilon(epsilon: float) -> None:
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (it keeps DCRM finite for identical responses), got {epsilon}")


def finite_score(value: Any, row: int, column: str) -> float:
    """`value` as a float, or a ValueError naming the row and column when it is not a finite number."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"row {row}: column {column!r} must hold a finite number, got {value!r}")
    return float(value)


def _dcrm_batch(batch: dict[str, list[Any]], *, tokenizer: Any, epsilon: float,
                min_distance: float = 0.0) -> dict[str, list[Any]]:
    # Module-level so that num_proc > 1 can pickle it.
    distances = [pair_distance(c, r, tokenizer) for c, r in zip(batch[CHOSEN], batch[REJECTED])]
    return {
        DCRM_DISTANCE: distances,  # the true d; the floor only enters the ratio
        DCRM: [dcrm_value(m, d, epsilon, min_distance) for m, d in zip(batch[REWARD_MARGIN], distances)],
    }


def set_column(dataset: Dataset, name: str, values: list[Any]) -> Dataset:
    """`dataset` with column `name` holding `values`, replacing a column of that name."""
    if name in dataset.column_names:  # recomputing: replace, never mix old and new values
        dataset = dataset.remove_columns(name)
    return dataset.add_column(name, values)


def add_dcrm(
    dataset: Dataset,
    *,
    reward_columns: tuple[str, str] | None = None,
    reward_fn: RewardFn | None = None,
    tokenizer: Any = None,
    epsilon: float = DEFAULT_EPSILON,
    min_distance: float = 0.0,
    num_proc: int | None = None,
) -> Dataset:
    """Add the DCRM of every (chosen, rejected) pair: `bmc_reward_margin`, `bmc_dcrm_distance` and `bmc_dcrm`.

    DCRM = Δr / (d + ε) with Δr = r(x, y+) - r(x, y-) and d the normalised edit distance of the two responses
    (Huang & Goyal 2025; the module docstring says how faithful this is and which choices were made). Every row is
    kept; a pair whose chosen response has the lower reward gets a negative margin and a negative DCRM.

    Args:
        dataset: Rows with `chosen` and `rejected` (text or chat messages), and `prompt` when `reward_fn` is used.
        reward_columns: The (chosen, rejected) score columns the margin is taken from; default
            `("score_chosen", "score_rejected")` (UltraFeedback's). Not together with `reward_fn`.
        reward_fn: Score the responses instead: `(prompt, response) -> float`, e.g. a `SequenceClassifierReward`
            (its `batch` method is used when present). The rewards are stored in `bmc_reward_chosen` /
            `bmc_reward_rejected`.
        tokenizer: Token-level distance with this tokenizer; word-level without.
        epsilon: ε > 0 of the denominator.
        min_distance: Floor on d in the denominator, in [0, 1] (default 0: none). Without it a near-identical pair
            (d → 0) with a noisy reward gap gets DCRM ≈ Δr/ε and outranks every real pair; with it no pair's DCRM
            exceeds Δr / (min_distance + ε). `bmc_dcrm_distance` keeps the true d.
        num_proc: Worker processes for the distance computation (`Dataset.map`).
    """
    _check_epsilon(epsilon)
    _check_min_distance(min_distance)
    if reward_fn is not None and reward_columns is not None:
        raise ValueError("add_dcrm: pass either reward_columns or reward_fn, not both")
    if reward_fn is None:
        reward_columns = reward_columns or (SCORE_CHOSEN, SCORE_REJECTED)
        needed = [CHOSEN, REJECTED, *reward_columns]
    else:
        needed = [PROMPT, CHOSEN, REJECTED]
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        hint = "" if reward_fn is not None else " (pass reward_columns=(chosen_col, rejected_col) or a reward_fn)"
        raise ValueError(f"add_dcrm: dataset is missing column(s) {missing}{hint}; it has {dataset.column_names}")

    if reward_fn is not None:
        prompts = dataset[PROMPT]
        chosen_r = _rewards(reward_fn, prompts, dataset[CHOSEN])
        rejected_r = _rewards(reward_fn, prompts, dataset[REJECTED])
        dataset = set_column(set_column(dataset, REWARD_CHOSEN, chosen_r), REWARD_REJECTED, rejected_r)
    else:
        assert reward_columns is not None
        chosen_col, rejected_col = reward_columns
        chosen_r = [finite_score(v, i, chosen_col) for i, v in enumerate(dataset[chosen_col])]
        rejected_r = [finite_score(v, i, rejected_col) for i, v in enumerate(dataset[rejected_col])]
    dataset = set_column(dataset, REWARD_MARGIN, [c - r for c, r in zip(chosen_r, rejected_r)])
    dataset = dataset.remove_columns([c for c in (DCRM_DISTANCE, DCRM) if c in dataset.column_names])
    return dataset.map(
        _dcrm_batch,
        batched=True,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        fn_kwargs={"tokenizer": tokenizer, "epsilon": epsilon, "min_distance": min_distance},
        desc="Computing DCRM",
    )


# --- best-of-N² pairing -----------------------------------------------------------------------------------------
def _best_pair(
    responses: Sequence[Any], rewards: Sequence[float], tokenizer: Any, epsilon: float, min_distance: float = 0.0
) -> tuple[str, tuple[int, int, float, float, float] | None]:
    """(status, (i+, i-, margin, distance, dcrm) or None)."""
    if len(responses) < 2:
        return TOO_FEW_RESPONSES, None
    if max(rewards) == min(rewards):
        return ALL_REWARDS_EQUAL, None
    units = [_units(response_text(r), tokenizer) for r in responses]
    best: tuple[int, int, float, float, float] | None = None
    # d is symmetric: one distance per unordered pair; the ordered pair is fixed by the rewards (r+ > r-)
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if rewards[i] == rewards[j]:
                continue
            pos, neg = (i, j) if rewards[i] > rewards[j] else (j, i)
            margin = rewards[pos] - rewards[neg]
            distance = _distance(units[pos], units[neg])[1]
            score = dcrm_value(margin, distance, epsilon, min_distance)
            # strictly greater: among exact ties on (DCRM, margin) the first pair in (i, j) order stays
            if best is None or (score, margin) > (best[4], best[2]):
                best = (pos, neg, margin, distance, score)
    return PAIRED, best


def _pairs_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    responses_column: str,
    rewards_column: str,
    tokenizer: Any,
    epsilon: float,
    min_distance: float = 0.0,
) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {k: [] for k in (
        CHOSEN, REJECTED, SCORE_CHOSEN, SCORE_REJECTED, REWARD_MARGIN, DCRM_DISTANCE, DCRM, CHOSEN_INDEX,
        REJECTED_INDEX, PAIR_STATUS)}
    for row, responses, rewards in zip(indices, batch[responses_column], batch[rewards_column]):
        responses = list(responses or [])
        rewards = [finite_score(v, row, rewards_column) for v in (rewards or [])]
        if len(responses) != len(rewards):
            raise ValueError(
                f"row {row}: {len(responses)} response(s) in {responses_column!r} but {len(rewards)} reward(s) in "
                f"{rewards_column!r}; expected one reward per response"
            )
        status, best = _best_pair(responses, rewards, tokenizer, epsilon, min_distance)
        out[PAIR_STATUS].append(status)
        if best is None:
            for key in out:
                if key != PAIR_STATUS:
                    out[key].append(None)
            continue
        pos, neg, margin, distance, score = best
        for key, value in (
            (CHOSEN, responses[pos]), (REJECTED, responses[neg]), (SCORE_CHOSEN, rewards[pos]),
            (SCORE_REJECTED, rewards[neg]), (REWARD_MARGIN, margin), (DCRM_DISTANCE, distance), (DCRM, score),
            (CHOSEN_INDEX, pos), (REJECTED_INDEX, neg),
        ):
            out[key].append(value)
    return out


def _pair_features(dataset: Dataset, responses_column: str, rewards_column: str) -> Features | None:
    """Output features, declared so that a map batch whose rows all lack a pair (all-None columns) cannot fix the
    column types; None (inferred) when the response type cannot be read from the input features."""
    response_feature = getattr(dataset.features[responses_column], "feature", None)
    if response_feature is None:
        return None
    features = {k: v for k, v in dataset.features.items() if k not in (responses_column, rewards_column)}
    number = Value("float64")
    features.update({
        CHOSEN: response_feature, REJECTED: response_feature, SCORE_CHOSEN: number, SCORE_REJECTED: number,
        REWARD_MARGIN: number, DCRM_DISTANCE: number, DCRM: number, CHOSEN_INDEX: Value("int64"),
        REJECTED_INDEX: Value("int64"), PAIR_STATUS: Value("string"),
    })
    return Features(features)


def best_of_n2_pairs(
    dataset: Dataset,
    *,
    responses_column: str = "responses",
    rewards_column: str = "rewards",
    tokenizer: Any = None,
    epsilon: float = DEFAULT_EPSILON,
    min_distance: float = 0.0,
    drop_invalid: bool = False,
    num_proc: int | None = None,
) -> Dataset:
    """Best-of-N² pairing (Huang & Goyal 2025): per prompt, the pair of its N responses with the highest DCRM.

    Among all ordered pairs (y_i, y_j) with r_i > r_j, keeps the one maximising DCRM = (r_i - r_j) / (d + ε) (ties:
    larger margin, then first in (i, j) order) and writes it in this library's pair layout: `chosen`, `rejected`,
    `score_chosen`, `score_rejected`, `bmc_reward_margin`, `bmc_dcrm_distance`, `bmc_dcrm`, plus
    `bmc_chosen_index` / `bmc_rejected_index` (positions among the N responses) and `bmc_pair_status`. The
    responses and rewards columns are consumed; every other column (prompt, id, ...) is kept.

    Rows without a valid pair are **kept** by default, with `chosen`/`rejected`/scores set to None and
    `bmc_pair_status` saying why: `too_few_responses` (N < 2) or `all_rewards_equal` (no pair with r_i > r_j);
    paired rows have `paired`. The counts are logged. Filter them before training, e.g.
    `pairs.filter(lambda r: r["bmc_pair_status"] == "paired")`, or pass `drop_invalid=True` (also logged).

    Args:
        dataset: One row per prompt with a list of N responses (text or chat messages) and a list of N rewards.
        responses_column: Column of the response lists.
        rewards_column: Column of the reward lists (finite numbers, one per response).
        tokenizer: Token-level distance with this tokenizer; word-level without.
        epsilon: ε > 0 of the DCRM denominator.
        min_distance: Floor on d in the DCRM denominator (as in `add_dcrm`): without it, two near-identical
            responses with a noisy reward gap win the pairing (docs/data-selection.md).
        drop_invalid: Drop the rows without a valid pair (their number is logged).
        num_proc: Worker processes for `Dataset.map`.
    """
    _check_epsilon(epsilon)
    _check_min_distance(min_distance)
    missing = [c for c in (responses_column, rewards_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"best_of_n2_pairs: dataset is missing column(s) {missing}; it has {dataset.column_names}")
    out = dataset.map(
        _pairs_batch,
        batched=True,
        with_indices=True,
        remove_columns=[responses_column, rewards_column],
        features=_pair_features(dataset, responses_column, rewards_column),
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        fn_kwargs={
            "responses_column": responses_column,
            "rewards_column": rewards_column,
            "tokenizer": tokenizer,
            "epsilon": epsilon,
            "min_distance": min_distance,
        },
        desc="Best-of-N² pairing",
    )
    counts = Counter(out[PAIR_STATUS])
    invalid = len(out) - counts[PAIRED]
    logger.info(
        "best_of_n2_pairs: paired %d of %d prompt(s); %d with fewer than 2 responses, %d with all rewards equal%s",
        counts[PAIRED], len(out), counts[TOO_FEW_RESPONSES], counts[ALL_REWARDS_EQUAL],
        "" if not invalid else (" (dropped)" if drop_invalid else f" (kept with {PAIR_STATUS} != {PAIRED!r})"),
    )
    if drop_invalid and invalid:
        out = out.filter(lambda status: status == PAIRED, input_columns=PAIR_STATUS)
    return out
