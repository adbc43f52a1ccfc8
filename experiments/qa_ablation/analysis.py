"""Bootstrap intervals, the results table (markdown + CSV) and the plot of the QA ablation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

Interval = tuple[float, float, float]  # point estimate, 2.5th percentile, 97.5th percentile


def bootstrap(values: Sequence[float] | np.ndarray, *, samples: int, seed: int) -> Interval:
    """Percentile bootstrap 95% interval of the mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(data.mean()), float(low), float(high)


def paired_difference(a: Sequence[float], b: Sequence[float], *, samples: int, seed: int) -> Interval:
    """Bootstrap interval of mean(a − b) over the same items (questions or pairs), resampled together."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in size: {a.shape} vs {b.shape}")
    return bootstrap(a - b, samples=samples, seed=seed)


def fmt(interval: Interval, *, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    point, low, high = (v * scale for v in interval)
    if np.isnan(point):
        return "n/a"
    sign = "+" if signed else ""
    return f"{point:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def results_table(answers: pd.DataFrame, rewards: pd.DataFrame, train_info: dict[str, dict], *, test_sets: Sequence[str],
                  baseline: str, samples: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numeric table for CSV, formatted table for markdown), one row per arm.

    `answers`: arm, test_set, id, correct. `rewards`: arm, reward_chosen, reward_rejected (held-out pairs).
    Accuracy intervals resample questions; the Δ column resamples the same questions for the arm and `baseline`.
    """
    numeric, shown = [], []
    arms = list(dict.fromkeys(answers["arm"]))
    heldout = int(rewards.groupby("arm").size().max()) if len(rewards) else 0
    margin_label, reward_acc_label = f"reward margin (n={heldout})", "reward acc %"
    for arm in arms:
        mine = answers[answers["arm"] == arm].sort_values(["test_set", "id"])
        row: dict[str, object] = {"arm": arm, "train_pairs": train_info.get(arm, {}).get("pairs"),
                                  "train_seconds": train_info.get(arm, {}).get("seconds")}
        pretty: dict[str, object] = {"arm": arm}
        for test_set in test_sets:
            correct = mine[mine["test_set"] == test_set]["correct"].to_numpy(dtype=float)
            ci = bootstrap(correct, samples=samples, seed=seed)
            row.update({f"{test_set}_acc": ci[0], f"{test_set}_lo": ci[1], f"{test_set}_hi": ci[2],
                        f"{test_set}_n": correct.size})
            pretty[f"{test_set} acc % (n={correct.size})"] = fmt(ci, scale=100)
        all_correct = mine["correct"].to_numpy(dtype=float)
        ci = bootstrap(all_correct, samples=samples, seed=seed)
        row.update({"all_acc": ci[0], "all_lo": ci[1], "all_hi": ci[2], "all_n": all_correct.size})
        pretty[f"all acc % (n={all_correct.size})"] = fmt(ci, scale=100)
        if "stated_answer" in mine:
            stated = mine["stated_answer"].to_numpy(dtype=float)
            row["stated_answer"] = float(stated.mean())
            pretty["states an answer %"] = f"{100 * stated.mean():.0f}"
        base = answers[answers["arm"] == baseline].sort_values(["test_set", "id"])
        if arm != baseline and len(base) == len(mine):
            diff = paired_difference(all_correct, base["correct"].to_numpy(dtype=float), samples=samples, seed=seed)
            row.update({"delta_vs_baseline": diff[0], "delta_lo": diff[1], "delta_hi": diff[2]})
            pretty[f"Δ acc vs {baseline} (pts)"] = fmt(diff, scale=100, signed=True)
        else:
            pretty[f"Δ acc vs {baseline} (pts)"] = "—"
        mine_r = rewards[rewards["arm"] == arm]
        if len(mine_r):
            margins = (mine_r["reward_chosen"] - mine_r["reward_rejected"]).to_numpy(dtype=float)
            m_ci = bootstrap(margins, samples=samples, seed=seed)
            a_ci = bootstrap((margins > 0).astype(float), samples=samples, seed=seed)
            row.update({"reward_margin": m_ci[0], "reward_margin_lo": m_ci[1], "reward_margin_hi": m_ci[2],
                        "reward_acc": a_ci[0], "reward_acc_lo": a_ci[1], "reward_acc_hi": a_ci[2],
                        "heldout_pairs": margins.size})
            pretty[margin_label] = fmt(m_ci, digits=3)
            pretty[reward_acc_label] = fmt(a_ci, scale=100)
        else:
            pretty[margin_label] = pretty[reward_acc_label] = "—"
        pretty["train pairs"] = row["train_pairs"] if row["train_pairs"] is not None else "—"
        numeric.append(row)
        shown.append(pretty)
    return pd.DataFrame(numeric), pd.DataFrame(shown).fillna("—")


def plot_results(table: pd.DataFrame, test_sets: Sequence[str], out: Path) -> Path:
    """Accuracy per test set (with 95% intervals) and the held-out reward margin per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    groups = [*test_sets, "all"]
    width = 0.8 / len(table)
    for i, row in enumerate(table.itertuples()):
        values = np.array([table.loc[row.Index, f"{g}_acc"] for g in groups]) * 100
        lows = np.array([table.loc[row.Index, f"{g}_lo"] for g in groups]) * 100
        highs = np.array([table.loc[row.Index, f"{g}_hi"] for g in groups]) * 100
        x = np.arange(len(groups)) + (i - (len(table) - 1) / 2) * width
        left.bar(x, values, width, label=row.arm, yerr=[values - lows, highs - values], capsize=2)
    left.set_xticks(np.arange(len(groups)), groups)
    left.set_ylabel("answer accuracy (%)")
    left.set_title("Test accuracy (95% bootstrap intervals)")
    left.legend(fontsize=8)
    trained = table[table["reward_margin"].notna()] if "reward_margin" in table else table.iloc[0:0]
    if len(trained):
        m = trained["reward_margin"].to_numpy()
        right.bar(trained["arm"], m, yerr=[m - trained["reward_margin_lo"].to_numpy(), trained["reward_margin_hi"].to_numpy() - m],
                  capsize=3, color="tab:gray")
        for x, acc in enumerate(trained["reward_acc"].to_numpy()):
            right.annotate(f"acc {acc * 100:.0f}%", (x, 0), ha="center", va="bottom", fontsize=8)
    right.axhline(0, color="black", linewidth=0.6)
    right.set_title("Held-out reward margin r(y_w) − r(y_l)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
