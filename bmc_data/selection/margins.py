"""Margin-based preference-data selection: implicit reward margins, alignment potential, dual margin, `select_top`.

Two scores rank the pairs of a preference dataset so that one can train on the best fraction (e.g. 10%):

* **Alignment potential** M_AP (Huang et al., "Larger or Smaller Reward Margins to Select Preferences for LLM
  Alignment?", ICML 2025, arXiv:2503.01864; code github.com/Hesse73/Alignment-Potential-Metric): the gap from the
  model's *current implicit* reward margin to the *target explicit* one, M_AP = |Δr_ex| - |Δr_im|, computed on
  z-scored margins as the official code does (`metric_selection.py`, `cal_logps.py`, read for this module).
* **Dual margin** (Deng et al., "Less is More: Improving LLM Alignment via Preference Data Selection",
  arXiv:2502.14560): margin maximisation with both the external reward margin Δr_ex and the implicit DPO margin
  Δr_im, fused into one score (by default the product σ(Δr_ex)·σ(Δr_im)). Only the abstracts of this paper could
  be read when this was written: the fusion rules are our reading of them, see docs/data-selection.md.

Both need the implicit reward margin Δr_im = β[(log π(y+) - log π_ref(y+)) - (log π(y-) - log π_ref(y-))], which
`add_implicit_reward_margins` computes with torch from the policy (and reference) model's summed completion
log-probabilities, with the exact token ids the TRL 1.16 DPO trainer would use (`bmc_data.tokens.tokenization`). The scoring
functions take that column's name, so a margin computed elsewhere can be used too.

All functions add columns and keep every row; `select_top` returns a new dataset with the best fraction, keeps the
score column and the original row index, and logs how many rows it kept out of how many. Choices where the papers
leave details open are listed in docs/data-selection.md.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
from datasets import Dataset

from bmc_data.pairs.schema import CHOSEN, PROMPT, REJECTED

from .pair_quality import (
    REWARD_MARGIN,
    SCORE_CHOSEN,
    SCORE_REJECTED,
    finite_score,
    set_column,
)

__all__ = [
    "ALIGNMENT_POTENTIAL",
    "DUAL_MARGIN",
    "IMPLICIT_MARGIN",
    "SELECTION_INDEX",
    "add_alignment_potential",
    "add_dual_margin",
    "add_implicit_reward_margins",
    "select_top",
]

logger = logging.getLogger(__name__)

# --- columns ----------------------------------------------------------------------------------------------------
IMPLICIT_MARGIN = "bmc_implicit_reward_margin"
POLICY_CHOSEN_LOGPS = "bmc_policy_chosen_logps"  # summed log-probs of the completion tokens
POLICY_REJECTED_LOGPS = "bmc_policy_rejected_logps"
REF_CHOSEN_LOGPS = "bmc_ref_chosen_logps"
REF_REJECTED_LOGPS = "bmc_ref_rejected_logps"
CHOSEN_TOKENS = "bmc_chosen_tokens"  # completion tokens scored (after truncation)
REJECTED_TOKENS = "bmc_rejected_tokens"
ALIGNMENT_POTENTIAL = "bmc_alignment_potential"
DUAL_MARGIN = "bmc_dual_margin"
#: row index in the dataset select_top selected from (not `bmc_source_index`, which bridge_dataset writes: the
#: row's index in the bridging source, kept as it is)
SELECTION_INDEX = "bmc_selection_index"

_LOGP_COLUMNS = (POLICY_CHOSEN_LOGPS, POLICY_REJECTED_LOGPS, REF_CHOSEN_LOGPS, REF_REJECTED_LOGPS, CHOSEN_TOKENS,
                 REJECTED_TOKENS, IMPLICIT_MARGIN)


# --- implicit reward margins ------------------------------------------------------------------------------------
def _truncate(ids: list[int], mask: list[int], max_length: int | None, mode: str) -> tuple[list[int], list[int]]:
    # the DPO collator's per-sequence truncation (trl 1.16 DataCollatorForPreference)
    if max_length is None:
        return ids, mask
    sl = slice(None, max_length) if mode == "keep_start" else slice(-max_length, None)
    return ids[sl], mask[sl]


def _completion_logps(model: Any, sequences: list[tuple[list[int], list[int]]], pad_id: int, device: Any) -> Any:
    """Summed log-probs of the completion tokens of each (ids, completion_mask) sequence, in one padded forward."""
    import torch

    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    completion = torch.zeros((len(sequences), width), dtype=torch.bool)
    for k, (ids, mask) in enumerate(sequences):  # right padding, as the DPO collator pads
        input_ids[k, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[k, : len(ids)] = 1
        completion[k, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    input_ids, attention, completion = input_ids.to(device), attention.to(device), completion.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    # log softmax at the target only: logit(target) - logsumexp(logits), without a (B, L, V) log-prob tensor
    token_logps = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * completion[:, 1:]).sum(dim=1).cpu()


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def add_implicit_reward_margins(
    dataset: Dataset,
    model: Any,
    tokenizer: Any,
    *,
    ref_model: Any = None,
    beta: float = 0.1,
    batch_size: int = 8,
    max_length: int | None = None,
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start",
    length_normalize: bool = False,
    device: Any = None,
    progress: bool = True,
) -> Dataset:
    """Add the DPO implicit reward margin of every pair, `bmc_implicit_reward_margin`, and the log-probs behind it.

        Δr_im = β [(log π(y+|x) - log π_ref(y+|x)) - (log π(y-|x) - log π_ref(y-|x))]

    log π(y|x) is the sum of the log-probabilities of the completion tokens, with the token ids of
    `bmc_data.tokens.tokenization` (identical to TRL 1.16 `DPOTrainer`: EOS appended to plain-text completions, chat template
    for conversational rows) and the DPO collator's truncation when `max_length` is set. Computed without gradients,
    in evaluation mode (dropout off), `batch_size` pairs per forward pass, with a progress bar.

    Columns added: `bmc_policy_chosen_logps`, `bmc_policy_rejected_logps`, `bmc_ref_chosen_logps`,
    `bmc_ref_rejected_logps` (with a reference model), `bmc_chosen_tokens`, `bmc_rejected_tokens` (completion tokens
    scored) and `bmc_implicit_reward_margin`.

    Args:
        dataset: Rows with `prompt`, `chosen`, `rejected` (text or conversational); `tools` / `chat_template_kwargs`
            columns are honoured as TRL does.
        model: The policy π (a causal LM).
        tokenizer: The tokenizer the trainer uses (`processing_class`).
        ref_model: The reference π_ref. None: reference-free margin β[log π(y+) - log π(y-)] (no ref columns).
            Passing the policy itself gives margins of exactly 0.
        beta: β of the implicit reward.
        batch_size: Pairs per forward pass (each pair is two sequences).
        max_length: Truncate prompt+completion to this many tokens as the DPO collator does (None: no truncation).
        truncation_mode: `keep_start` (TRL's default) or `keep_end`.
        length_normalize: Use the mean instead of the sum of the completion log-probs (SimPO's length-normalised
            reward, which the official alignment-potential code uses with `ref_model=None`, `beta=1`).
        device: Where to run both models; default each model's own device.
        progress: Show a tqdm progress bar.
    """
    import torch
    from tqdm.auto import tqdm

    from bmc_data.tokens.tokenization import tokenize_pairs_batched

    missing = [c for c in (PROMPT, CHOSEN, REJECTED) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"add_implicit_reward_margins: dataset is missing column(s) {missing}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if truncation_mode not in ("keep_start", "keep_end"):
        raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got {truncation_mode!r}")
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    pad_id = text_tokenizer.pad_token_id if text_tokenizer.pad_token_id is not None else 0  # masked out anyway
    models = [model] + ([ref_model] if ref_model is not None and ref_model is not model else [])
    modes = [m.training for m in models]
    for m in models:
        m.eval()

    n = len(dataset)
    policy = torch.zeros((n, 2), dtype=torch.float64)
    ref = torch.zeros((n, 2), dtype=torch.float64) if ref_model is not None else None
    lengths = torch.zeros((n, 2), dtype=torch.float64)
    has_tools = "tools" in dataset.column_names
    has_kwargs = "chat_template_kwargs" in dataset.column_names
    try:
        with torch.no_grad(), tqdm(total=n, desc="Implicit reward margins", unit="pair", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                rows = dataset[start:start + batch_size]
                tokenized = tokenize_pairs_batched(
                    tokenizer, rows[PROMPT], rows[CHOSEN], rows[REJECTED],
                    tools=rows["tools"] if has_tools else None,
                    chat_template_kwargs=rows["chat_template_kwargs"] if has_kwargs else None,
                )
                sequences = []
                for side in ("chosen_ids", "rejected_ids"):  # all chosen first, then all rejected
                    for t in tokenized:
                        ids = t["prompt_ids"] + t[side]
                        mask = [0] * len(t["prompt_ids"]) + [1] * len(t[side])
                        sequences.append(_truncate(ids, mask, max_length, truncation_mode))
                k = len(tokenized)
                counts = torch.tensor([sum(mask) for _, mask in sequences], dtype=torch.float64)
                lengths[start:start + k] = torch.stack([counts[:k], counts[k:]], dim=1)
                out = _completion_logps(model, sequences, pad_id, device or _device(model)).double()
                policy[start:start + k] = torch.stack([out[:k], out[k:]], dim=1)
                if ref is not None:
                    if ref_model is not model:
                        out = _completion_logps(ref_model, sequences, pad_id, device or _device(ref_model)).double()
                    ref[start:start + k] = torch.stack([out[:k], out[k:]], dim=1)
                bar.update(k)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)

    empty = int((lengths == 0).any(dim=1).sum())
    if empty:
        logger.warning("%d pair(s) have a completion with no token left after truncation (max_length=%s): their "
                       "log-prob is 0", empty, max_length)
    scale = lengths.clamp(min=1) if length_normalize else torch.ones_like(lengths)
    log_ratio = policy / scale - (ref / scale if ref is not None else 0.0)
    margin = beta * (log_ratio[:, 0] - log_ratio[:, 1])

    dataset = dataset.remove_columns([c for c in _LOGP_COLUMNS if c in dataset.column_names])
    columns = {
        POLICY_CHOSEN_LOGPS: policy[:, 0], POLICY_REJECTED_LOGPS: policy[:, 1],
        **({REF_CHOSEN_LOGPS: ref[:, 0], REF_REJECTED_LOGPS: ref[:, 1]} if ref is not None else {}),
        CHOSEN_TOKENS: lengths[:, 0].long(), REJECTED_TOKENS: lengths[:, 1].long(), IMPLICIT_MARGIN: margin,
    }
    for name, values in columns.items():
        dataset = dataset.add_column(name, values.tolist())
    return dataset


# --- scores -----------------------------------------------------------------------------------------------------
def _numbers(dataset: Dataset, column: str, who: str) -> np.ndarray:
    if column not in dataset.column_names:
        raise ValueError(f"{who}: dataset has no column {column!r} (it has {dataset.column_names})")
    try:
        return np.array([finite_score(v, i, column) for i, v in enumerate(dataset[column])], dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{who}: {error}") from None


def _explicit_margin(
    dataset: Dataset, reward_columns: tuple[str, str], explicit_margin_column: str | None, who: str
) -> tuple[np.ndarray, bool]:
    """(Δr_ex, computed here from the score columns)."""
    if explicit_margin_column is not None:
        return _numbers(dataset, explicit_margin_column, who), False
    chosen_col, rejected_col = reward_columns
    return _numbers(dataset, chosen_col, who) - _numbers(dataset, rejected_col, who), True


def _zscore(x: np.ndarray) -> np.ndarray:
    # population std, as the official code (np.std); a constant column carries no ranking information: all 0
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _with_columns(dataset: Dataset, columns: dict[str, np.ndarray]) -> Dataset:
    for name, values in columns.items():
        dataset = set_column(dataset, name, values.tolist())
    return dataset


def add_alignment_potential(
    dataset: Dataset,
    *,
    implicit_margin_column: str = IMPLICIT_MARGIN,
    reward_columns: tuple[str, str] = (SCORE_CHOSEN, SCORE_REJECTED),
    explicit_margin_column: str | None = None,
    normalize: Literal["zscore", "none"] = "zscore",
    implicit_weight: float = 1.0,
    column: str = ALIGNMENT_POTENTIAL,
) -> Dataset:
    """Add the alignment potential M_AP of every pair (Huang et al. 2025), higher = more to learn; keeps all rows.

        M_AP = N(Δr_ex) - w · N(|Δr_im|)

    Δr_ex = r_ex(y+) - r_ex(y-) is the explicit (target) margin from the score columns or `explicit_margin_column`,
    Δr_im the model's current implicit margin (`add_implicit_reward_margins`), w = `implicit_weight` and N the
    normalisation: `zscore` over the dataset (default; the official code's `rm-logp` metric, `rm-xlogp` with w != 1)
    or `none` (the raw difference of margins, in their own units).

    The official code takes the explicit margin as max - min of the pair's scores (>= 0: in its data the chosen
    response is the one with the higher reward, so that is Δr_ex) and the implicit one as an absolute value. We keep
    the sign of Δr_ex, so that a pair whose chosen response has the lower explicit reward ranks low, not high; on
    consistently labelled data the two are the same.

    Args:
        dataset: Rows with the implicit margin column and the scores (or an explicit margin column).
        implicit_margin_column: Column of Δr_im (any implicit margin: DPO's, or SimPO's length-normalised one).
        reward_columns: (chosen, rejected) explicit score columns; default UltraFeedback's.
        explicit_margin_column: Use this column as Δr_ex instead of the score columns.
        normalize: `zscore` or `none`.
        implicit_weight: w.
        column: Name of the added score column. `bmc_reward_margin` (Δr_ex) is added too when computed from scores.
    """
    who = "add_alignment_potential"
    if normalize not in ("zscore", "none"):
        raise ValueError(f"{who}: normalize must be 'zscore' or 'none', got {normalize!r}")
    implicit = np.abs(_numbers(dataset, implicit_margin_column, who))
    explicit, computed = _explicit_margin(dataset, reward_columns, explicit_margin_column, who)
    norm = _zscore if normalize == "zscore" else (lambda x: x)
    score = norm(explicit) - implicit_weight * norm(implicit)
    return _with_columns(dataset, {**({REWARD_MARGIN: explicit} if computed else {}), column: score})


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def add_dual_margin(
    dataset: Dataset,
    *,
    implicit_margin_column: str = IMPLICIT_MARGIN,
    reward_columns: tuple[str, str] = (SCORE_CHOSEN, SCORE_REJECTED),
    explicit_margin_column: str | None = None,
    fusion: Literal["mul", "add", "bayes"] = "mul",
    external_scale: float = 1.0,
    column: str = DUAL_MARGIN,
) -> Dataset:
    """Add the dual-margin score of every pair (Deng et al., "Less is More"), higher = keep; keeps all rows.

    The paper selects pairs by a margin that combines an external reward model's margin with the implicit DPO margin
    (v2 abstract: "dual-margin guided approach"; v3: "Bayesian Aggregation ... into a single preference
    probability"). Its full text could not be read when this was written, so the fusion rules below are our reading,
    named after the paper's DM-ADD / DM-MUL variants as we recall them; verify before relying on exact reproduction.

    With m_ex = s · Δr_ex (external reward margin; `s = external_scale` puts it on the implicit margin's logit
    scale) and m_im = Δr_im (implicit DPO margin):

    * `mul` (default, "DM-MUL"): σ(m_ex) · σ(m_im), the probability that both margins prefer y+ when each is read as
      an independent Bradley-Terry preference; a pair needs both margins positive to score above 1/4;
    * `add` ("DM-ADD"): m_ex + m_im;
    * `bayes`: σ(m_ex + m_im) = σ(a)σ(b) / (σ(a)σ(b) + σ(-a)σ(-b)), the posterior P(y+ ≻ y-) from the two
      Bradley-Terry probabilities under a uniform prior (our reading of v3's aggregation); ranks like `add`.

    Args:
        dataset: Rows with the implicit margin column and the scores (or an explicit margin column).
        implicit_margin_column: Column of Δr_im (`add_implicit_reward_margins`).
        reward_columns: (chosen, rejected) external score columns; default UltraFeedback's.
        explicit_margin_column: Use this column as Δr_ex instead of the score columns.
        fusion: `mul`, `add` or `bayes`.
        external_scale: s > 0.
        column: Name of the added score column. `bmc_reward_margin` (Δr_ex) is added too when computed from scores.
    """
    who = "add_dual_margin"
    if fusion not in ("mul", "add", "bayes"):
        raise ValueError(f"{who}: fusion must be 'mul', 'add' or 'bayes', got {fusion!r}")
    if not external_scale > 0:
        raise ValueError(f"{who}: external_scale must be > 0, got {external_scale}")
    implicit = _numbers(dataset, implicit_margin_column, who)
    explicit, computed = _explicit_margin(dataset, reward_columns, explicit_margin_column, who)
    m_ex = external_scale * explicit
    if fusion == "mul":
        score = _sigmoid(m_ex) * _sigmoid(implicit)
    elif fusion == "add":
        score = m_ex + implicit
    else:
        score = _sigmoid(m_ex + implicit)
    return _with_columns(dataset, {**({REWARD_MARGIN: explicit} if computed else {}), column: score})


# --- selection --------------------------------------------------------------------------------------------------
def _top_count(n: int, fraction: float) -> int:
    # floor like the official selection scripts (int(ratio * n)), but at least one row; the 1e-9 keeps 0.3 * 10 at 3
    return max(1, math.floor(fraction * n + 1e-9)) if n else 0


def select_top(
    dataset: Dataset,
    column: str,
    fraction: float,
    *,
    largest: bool = True,
    index_column: str | None = SELECTION_INDEX,
) -> Dataset:
    """The best `fraction` of the rows by `column`, best first, as a new dataset; logs how many were kept of how many.

    k = max(1, floor(fraction · n)) rows are kept (floor as the official selection scripts; at least one). Rows are
    ranked by the score, highest first (`largest=False`: lowest first), ties in dataset order; rows whose score is
    None or NaN are never selected (counted in the log). The score column is kept, and `index_column` records each
    row's index in `dataset`, so the dropped rows are `set(range(len(dataset))) - set(selected[index_column])`.

    Args:
        dataset: The scored dataset.
        column: The score column (e.g. `bmc_dcrm`, `bmc_alignment_potential`, `bmc_dual_margin`).
        fraction: 0 < fraction <= 1, e.g. 0.1 for the best 10%.
        largest: Higher scores are better.
        index_column: Name of the original-index column added (None: not added).
    """
    if column not in dataset.column_names:
        raise ValueError(f"select_top: dataset has no column {column!r} (it has {dataset.column_names})")
    if not 0 < fraction <= 1:
        raise ValueError(f"select_top: fraction must be in (0, 1], got {fraction}")
    if index_column is not None and index_column in dataset.column_names:
        raise ValueError(f"select_top: dataset already has a column {index_column!r}; pass another index_column")
    n = len(dataset)
    values = np.array([np.nan if v is None else v for v in dataset[column]], dtype=np.float64)
    missing = np.isnan(values)
    keys = np.where(missing, 0.0, -values if largest else values)
    order = np.lexsort((np.arange(n), keys, missing))  # last key first: scored rows, then by score, then by index
    k = min(_top_count(n, fraction), int((~missing).sum()))
    chosen = order[:k]
    selected = dataset.select(chosen.tolist())
    if index_column is not None:
        selected = selected.add_column(index_column, chosen.tolist())
    kept = values[chosen]
    logger.info(
        "select_top: kept %d of %d row(s) (fraction %g) by %r, %s first%s%s",
        k, n, fraction, column, "largest" if largest else "smallest",
        f"; kept scores {kept.min():.4g} to {kept.max():.4g}" if k else "",
        f"; {int(missing.sum())} row(s) without a score were not eligible" if missing.any() else "",
    )
    return selected
