"""Tokens/s of the embedded SmolLM2-135M: llama.cpp on the shipped Q4_1 GGUF vs the transformers path (dequantized
to float32, batched left padding; the embedded runtime before issue 18), side by side in one run.

    python bench/embedded_generation.py                          # batches 1, 4, 8; ~500-token prompts; 64 new tokens
    python bench/embedded_generation.py --new-tokens 128 --skip-transformers

Each measurement is one batch through the provider's own `_generate` (what `bridge_dataset` runs), greedy, with
prompts of about 500 tokens (ECQA problems as few-shot context, then one to solve). "total tok/s" is new tokens
over the wall time including the prefill of the whole batch. Grammar overhead: the same batch of 4 with a
structured-reply schema (`bmc_data.bridging.protocol.reply_schema` of a ~6-sentence y_l) against free text.
Writes bench/results/embedded_generation.json with the machine's load average before and after each row: on a
shared machine, numbers taken at different loads are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"


def prompts(count: int, target_tokens: int, tokenize) -> list[tuple[dict, ...]]:
    rows = [json.loads(line) for line in QA.read_text(encoding="utf-8").splitlines()[: 40 + count]]
    out = []
    for k in range(count):
        shots, i = [], k + 1
        while True:
            shot = f"Problem: {rows[i]['problem']}\nSolution: {rows[i]['solution']}\n\n"
            if len(tokenize("".join(shots) + shot)) > target_tokens - 60:
                break
            shots.append(shot)
            i += 1
        user = "".join(shots) + f"Problem: {rows[k]['problem']}\nSolve it step by step, like the solutions above."
        out.append(({"role": "user", "content": user},))
    return out


def measure(provider, requests, label: str, batch: int) -> dict:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    responses = provider._generate(requests)
    wall = time.perf_counter() - started
    new = sum(r.output_tokens for r in responses)
    row = {"runtime": label, "batch": batch, "prompt_tokens_mean": round(sum(r.input_tokens for r in responses) / batch),
           "new_tokens": new, "wall_s": round(wall, 2), "total_tok_s": round(new / wall, 1),
           "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "embedded_generation.json"))
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    from bmc_data.bridging.protocol import reply_schema
    from bmc_data.providers.base import ChatRequest, ResponseSchema
    from bmc_data.providers.embedded import EmbeddedProvider, load_embedded_model
    from bmc_data.providers.transformers_local import TransformersProvider

    llama = EmbeddedProvider(max_batch_size=max(batches))
    tokenize = lambda text: llama.llm.tokenize(text.encode(), add_bos=False)  # noqa: E731
    messages = prompts(max(batches), args.prompt_tokens, tokenize)
    rows = []
    llama._generate([ChatRequest(messages=messages[0], max_tokens=8)])  # warm-up: weight repacking, allocations
    for batch in batches:
        requests = [ChatRequest(messages=m, max_tokens=args.new_tokens) for m in messages[:batch]]
        rows.append(measure(llama, requests, f"llama.cpp Q4_1 ({llama.n_threads} thread(s))", batch))
    y_l = ("Candles give light. A romantic room is dark. People light candles in churches. A synagogue is a "
           "place of worship. Candles are lit there on holidays.\nThe answer is synagogue")
    schema = ResponseSchema("bmc_edit_reply", reply_schema(y_l, requires_verdict=True, answer="bedroom"))
    free = [ChatRequest(messages=m, max_tokens=args.new_tokens) for m in messages[:4]]
    constrained = [ChatRequest(messages=m, max_tokens=args.new_tokens, response_schema=schema) for m in messages[:4]]
    passes = llama.grammar_full_passes
    rows.append(measure(llama, free, "llama.cpp, free text (grammar baseline)", 4))
    rows.append(measure(llama, constrained, "llama.cpp, structured-reply grammar", 4))
    rows[-1]["grammar_full_vocabulary_passes"] = llama.grammar_full_passes - passes
    if not args.skip_transformers:
        import torch

        torch.set_num_threads(llama.n_threads)
        model, tokenizer = load_embedded_model()
        hf = TransformersProvider.from_pretrained_objects(model, tokenizer, max_batch_size=max(batches))
        hf._generate([ChatRequest(messages=messages[0], max_tokens=4)])
        for batch in batches:
            requests = [ChatRequest(messages=m, max_tokens=args.new_tokens) for m in messages[:batch]]
            rows.append(measure(hf, requests, f"transformers float32, left-padded ({llama.n_threads} thread(s))", batch))
    result = {"command": "python bench/embedded_generation.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "skip_transformers")),
              "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} usable cores",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
