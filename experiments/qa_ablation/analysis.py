"""Bootstrap intervals, the results table (markdown + CSV) and the plot of the QA ablation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

Interval = tuple[float, float, float]  # point estimate, 2.5th percentile, 97.5th percentile


def fmt(interval: Interval, *, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    point, low, high = (v * scale for v in interval)
    if np.isnan(point):
        return "n/a"
    sign = "+" if signed else ""
    return f"{point:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def crossed_bootstrap(values: np.ndarray, *, samples: int, seed: int) -> Interval:
    """Percentile bootstrap 95% interval of the mean of a (seeds × items) matrix, resampling seeds and items
    independently (a crossed design: every seed is scored on the same items). With one seed it is the plain
    bootstrap over items. For a paired difference pass the difference matrix A − B."""
    data = np.asarray(values, dtype=float)
    if data.ndim != 2 or data.size == 0:
        raise ValueError(f"expected a non-empty (seeds × items) matrix, got shape {data.shape}")
    n_seeds, n_items = data.shape
    rng = np.random.default_rng(seed)
    # weights = how often each seed / item is drawn; mean over the drawn cells = w_s · D · w_q / (S·Q)
    seed_weights = np.stack([np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds) for _ in range(samples)])
    item_weights = np.stack([np.bincount(rng.integers(0, n_items, n_items), minlength=n_items) for _ in range(samples)])
    means = np.einsum("bs,sq,bq->b", seed_weights, data, item_weights) / (n_seeds * n_items)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(data.mean()), float(low), float(high)


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def mean_sd(values: Sequence[float] | np.ndarray, *, scale: float = 1.0, digits: int = 1) -> str:
    data = np.asarray(values, dtype=float) * scale
    sd = _sd(data)
    return f"{data.mean():.{digits}f}" + ("" if np.isnan(sd) else f" ± {sd:.{digits}f}")


def _matrix(frame: pd.DataFrame, value: str, seeds: Sequence[object], keys: Sequence[str]) -> np.ndarray:
    """(seeds × items) matrix of `value`, items in the same order for every seed (a seed-independent model, such as
    the SFT, has one replicate that is repeated for every seed)."""
    if frame["seed"].isna().all():
        row = frame.sort_values(list(keys))[value].to_numpy(dtype=float)
        return np.tile(row, (len(seeds), 1))
    rows = [frame[frame["seed"] == s].sort_values(list(keys))[value].to_numpy(dtype=float) for s in seeds]
    if len({r.size for r in rows}) != 1:
        raise ValueError(f"{value}: seeds were scored on different numbers of items")
    return np.stack(rows)


#: The paired differences the ablation reports (Table 3's questions): (arm, minus arm).
COMPARISONS = (("DPO-BMC", "DPO"), ("DPO-BMC", "DPO-BC"), ("DPO-MC", "DPO"), ("DPO-BC", "DPO"))
PAIR_KINDS = ("original", "minimal", "balanced")


def results_table(answers: pd.DataFrame, rewards: pd.DataFrame, train_info: dict[str, dict], *,
                  test_sets: Sequence[str], baseline: str, samples: int, seed: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(numeric table for CSV, formatted table for markdown, paired differences), one row per arm / comparison.

    `answers`: arm, seed (None for a seed-independent model), test_set, id, correct, stated_answer.
    `rewards`: arm, seed, question, kind (original/minimal), reward_chosen, reward_rejected (held-out pairs).
    Accuracy is the mean over seeds ± the sd of the per-seed accuracies; intervals resample seeds and questions
    (`crossed_bootstrap`), and differences resample the same seeds and questions for both arms (paired).
    """
    keys = ["test_set", "id"]
    trained_seeds = sorted({s for s in answers["seed"].dropna().unique()})
    seeds = trained_seeds or [None]
    arms = list(dict.fromkeys(answers["arm"]))
    correct = {arm: _matrix(answers[answers["arm"] == arm], "correct", seeds, keys) for arm in arms}
    margins: dict[str, dict[str, np.ndarray]] = {}
    for arm in arms:
        mine = rewards[rewards["arm"] == arm]
        if not len(mine):
            continue
        mine = mine.assign(margin=mine["reward_chosen"] - mine["reward_rejected"])
        by_kind = {kind: _matrix(mine[mine["kind"] == kind], "margin", seeds, ["question"]) for kind in PAIR_KINDS[:2]}
        by_kind["balanced"] = (by_kind["original"] + by_kind["minimal"]) / 2
        margins[arm] = by_kind

    paired: dict[tuple[str, str], Interval] = {}

    def accuracy_difference(a: str, b: str) -> Interval:  # each pair once: the arm rows and COMPARISONS share it
        if (a, b) not in paired:
            paired[a, b] = crossed_bootstrap(correct[a] - correct[b], samples=samples, seed=seed)
        return paired[a, b]

    numeric, shown = [], []
    heldout = next((m["original"].shape[1] for m in margins.values()), 0)
    for arm in arms:
        mine = answers[answers["arm"] == arm]
        matrix = correct[arm]
        per_seed = matrix.mean(axis=1)  # a seed-independent model (the SFT, greedy) repeats itself: sd 0
        ci = crossed_bootstrap(matrix, samples=samples, seed=seed)
        row: dict[str, object] = {"arm": arm, "seeds": len(per_seed), "train_pairs": train_info.get(arm, {}).get("pairs"),
                                  "train_seconds": train_info.get(arm, {}).get("seconds"),
                                  "all_acc": ci[0], "all_sd": _sd(per_seed), "all_lo": ci[1], "all_hi": ci[2],
                                  "all_n": matrix.shape[1], "per_seed_acc": " ".join(f"{v:.4f}" for v in per_seed)}
        pretty: dict[str, object] = {"arm": arm, "seeds": len(per_seed)}
        for test_set in test_sets:
            part = _matrix(mine[mine["test_set"] == test_set], "correct", seeds, keys)
            part_seed = part.mean(axis=1)
            row.update({f"{test_set}_acc": part.mean(), f"{test_set}_sd": _sd(part_seed), f"{test_set}_n": part.shape[1]})
            pretty[f"{test_set} acc % (n={part.shape[1]})"] = mean_sd(part_seed, scale=100)
        pretty[f"all acc % mean ± sd (n={matrix.shape[1]})"] = mean_sd(per_seed, scale=100)
        pretty["all acc % 95% CI"] = fmt(ci, scale=100)
        if "stated_answer" in mine:
            row["stated_answer"] = float(mine["stated_answer"].mean())
            pretty["states an answer %"] = f"{100 * mine['stated_answer'].mean():.0f}"
        if arm != baseline and baseline in correct:
            diff = accuracy_difference(arm, baseline)
            row.update({"delta_vs_baseline": diff[0], "delta_lo": diff[1], "delta_hi": diff[2]})
            pretty[f"Δ acc vs {baseline} (pts)"] = fmt(diff, scale=100, signed=True)
        else:
            pretty[f"Δ acc vs {baseline} (pts)"] = "—"
        for kind in PAIR_KINDS:
            label = f"{kind} pairs"
            if arm not in margins:
                pretty[f"margin, {label}"] = pretty[f"reward acc %, {label}"] = "—"
                continue
            m = margins[arm][kind]
            m_ci = crossed_bootstrap(m, samples=samples, seed=seed)
            if kind == "balanced":  # the mean of the two pair kinds' reward accuracies, per question
                wins = ((margins[arm]["original"] > 0).astype(float) + (margins[arm]["minimal"] > 0)) / 2
            else:
                wins = (m > 0).astype(float)
            row.update({f"margin_{kind}": m_ci[0], f"margin_{kind}_sd": _sd(m.mean(axis=1)),
                        f"margin_{kind}_lo": m_ci[1], f"margin_{kind}_hi": m_ci[2],
                        f"reward_acc_{kind}": wins.mean(), f"reward_acc_{kind}_sd": _sd(wins.mean(axis=1))})
            pretty[f"margin, {label}"] = f"{mean_sd(m.mean(axis=1), digits=3)} [{m_ci[1]:.3f}, {m_ci[2]:.3f}]"
            pretty[f"reward acc %, {label}"] = mean_sd(wins.mean(axis=1), scale=100)
        if arm in margins:
            row["heldout_questions"] = heldout
        pretty["train pairs"] = row["train_pairs"] if row["train_pairs"] is not None else "—"
        numeric.append(row)
        shown.append(pretty)

    diffs = []
    for a, b in COMPARISONS:
        if a not in correct or b not in correct:
            continue
        ci = accuracy_difference(a, b)
        per_seed = (correct[a] - correct[b]).mean(axis=1)
        diffs.append({"comparison": f"{a} − {b}", "delta": ci[0], "lo": ci[1], "hi": ci[2], "sd_over_seeds": _sd(per_seed),
                      "per_seed": " ".join(f"{100 * v:+.1f}" for v in per_seed),
                      "seeds_positive": int((per_seed > 0).sum()), "seeds": len(per_seed)})
        for kind in PAIR_KINDS:
            if a in margins and b in margins:
                m_ci = crossed_bootstrap(margins[a][kind] - margins[b][kind], samples=samples, seed=seed)
                diffs[-1].update({f"margin_{kind}": m_ci[0], f"margin_{kind}_lo": m_ci[1], f"margin_{kind}_hi": m_ci[2]})
    return pd.DataFrame(numeric), pd.DataFrame(shown).fillna("—"), pd.DataFrame(diffs)


def differences_markdown(diffs: pd.DataFrame) -> pd.DataFrame:
    """The paired-differences table as shown in results.md."""
    rows = []
    for d in diffs.itertuples(index=False):
        row = {"difference": d.comparison, "Δ acc (pts), 95% CI over questions × seeds": fmt((d.delta, d.lo, d.hi), scale=100, signed=True),
               "per seed (pts)": d.per_seed, "seeds > 0": f"{d.seeds_positive}/{d.seeds}"}
        for kind in PAIR_KINDS:
            if hasattr(d, f"margin_{kind}") and not pd.isna(getattr(d, f"margin_{kind}")):
                row[f"Δ margin, {kind} pairs"] = fmt((getattr(d, f"margin_{kind}"), getattr(d, f"margin_{kind}_lo"),
                                                      getattr(d, f"margin_{kind}_hi")), digits=3, signed=True)
        rows.append(row)
    return pd.DataFrame(rows).fillna("—")


def plot_results(table: pd.DataFrame, diffs: pd.DataFrame, out: Path) -> Path:
    """Accuracy per arm (mean over seeds, each seed a dot), the paired differences with their intervals, and the
    held-out reward margins per pair kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1.2, 1, 1.2]})
    x = np.arange(len(table))
    acc = table["all_acc"].to_numpy() * 100
    left.bar(x, acc, color="tab:blue", alpha=0.6, yerr=[acc - table["all_lo"] * 100, table["all_hi"] * 100 - acc], capsize=3)
    for i, per_seed in enumerate(table["per_seed_acc"]):
        values = [100 * float(v) for v in str(per_seed).split()]
        left.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    left.set_xticks(x, table["arm"], fontsize=8)
    left.set_ylabel("answer accuracy (%)")
    left.set_title("Accuracy: mean over seeds (dots: seeds; bars: 95% CI)", fontsize=9)
    if len(diffs):
        y = np.arange(len(diffs))
        point = diffs["delta"].to_numpy() * 100
        middle.errorbar(point, y, xerr=[point - diffs["lo"] * 100, diffs["hi"] * 100 - point], fmt="o", capsize=3)
        middle.axvline(0, color="black", linewidth=0.6)
        middle.set_yticks(y, diffs["comparison"], fontsize=8)
        middle.set_xlabel("Δ accuracy (pts)")
        middle.set_title("Paired differences (bootstrap over questions × seeds)", fontsize=9)
    trained = table[table["margin_balanced"].notna()] if "margin_balanced" in table else table.iloc[0:0]
    if len(trained):
        width = 0.27
        for k, kind in enumerate(PAIR_KINDS):
            m = trained[f"margin_{kind}"].to_numpy()
            right.bar(np.arange(len(trained)) + (k - 1) * width, m, width, label=f"{kind} pairs",
                      yerr=[m - trained[f"margin_{kind}_lo"].to_numpy(), trained[f"margin_{kind}_hi"].to_numpy() - m], capsize=2)
        right.set_xticks(np.arange(len(trained)), trained["arm"], fontsize=8)
        right.legend(fontsize=7)
    right.axhline(0, color="black", linewidth=0.6)
    right.set_title("Held-out reward margin r(y_w) − r(y_l)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
