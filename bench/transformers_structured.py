"""Structured replies with `--provider transformers`: tokens/s free vs grammar-constrained, parse rate, engine cost.

    python bench/transformers_structured.py    # 4 ECQA test pairs, batch 1 and 4; max_tokens 1024 / free text 192

The model is the embedded SmolLM2-135M-Instruct as a float32 transformers model (`load_embedded_model()`, the
GGUF dequantized), run by `TransformersProvider`. Each pair's editor prompt is the QA structured template
(`load_template("qa", reply_format="structured")`) on an ECQA test pair whose y_l has the correct option replaced by
a wrong one; the constrained request carries the pair's `reply_schema`, the free one is the same request without
it (and a smaller cap: SmolLM2 rarely ends free text by itself, and the rate per token is what is compared;
the constrained cap is what the grammar's limits are fitted to, `grammar.fit_limits`). Per row: new tokens over
wall time of the provider's own `_generate` (prefill included), finish reasons, and the parse rate: replies
that `parse_structured_reply` accepts (valid JSON, edits naming y_l's segments, the reference final answer).

Engine section (one recorded reply, replayed token by token through each engine's matcher): compile time and
the time to compute the allowed-token mask per token, for xgrammar on the bmc GBNF with counted strings
(`char{0,N}`) and unrolled strings (what the provider uses), and lm-format-enforcer on the JSON Schema when it is
installed. Writes bench/results/transformers_structured.json with the load average before and after each row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QA = REPO.parent / "shared" / "data" / "qa" / "ecqa-test.jsonl"


def pairs(limit: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for line in QA.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        options = [o.strip() for o in row["problem"].split("Options:", 1)[-1].strip().splitlines()]
        wrong = [o for o in options if o and row["answer"] not in o and o not in row["answer"]]
        if wrong and row["answer"] in row["solution"]:
            out.append({"prompt": row["problem"], "chosen": row["solution"], "answer": row["answer"],
                        "rejected": row["solution"].replace(row["answer"], rng.choice(wrong))})
        if len(out) >= limit:
            return out
    return out


def measure(provider, requests, pairs_, label: str, batch: int) -> dict:
    from bmc_data.bridging.parsing import ReplyFormatError
    from bmc_data.bridging.protocol import parse_structured_reply

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    responses = []
    for offset in range(0, len(requests), batch):
        responses += provider._generate(requests[offset:offset + batch])
    wall = time.perf_counter() - started
    parsed = 0
    for response, pair in zip(responses, pairs_):
        try:
            parse_structured_reply(response.text, pair["rejected"], requires_verdict=True, answer=pair["answer"])
            parsed += 1
        except ReplyFormatError:
            pass
    new = sum(r.output_tokens for r in responses)
    finish: dict[str, int] = {}
    for r in responses:
        finish[r.finish_reason] = finish.get(r.finish_reason, 0) + 1
    row = {"decoding": label, "batch": batch, "requests": len(requests),
           "prompt_tokens_mean": round(sum(r.input_tokens for r in responses) / len(responses)),
           "new_tokens": new, "wall_s": round(wall, 2), "tok_s": round(new / wall, 1), "finish_reasons": finish,
           "parsed": parsed, "parse_rate": round(parsed / len(responses), 2),
           "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(row), flush=True)
    return row


def engine_rows(tokenizer, schema: dict, reply_ids: list[int], limits) -> list[dict]:
    """Mask cost per token of each engine on one recorded reply."""
    import importlib.util

    import torch
    import xgrammar

    from bmc_data.providers.grammar import schema_to_gbnf

    vocab = len(tokenizer)
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=[tokenizer.eos_token_id])
    rows = []
    for label, unrolled in (("xgrammar, bmc GBNF, counted strings char{0,N}", False),
                            ("xgrammar, bmc GBNF, unrolled strings (used)", True)):
        compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        gbnf, _ = schema_to_gbnf(schema, limits, unrolled_strings=unrolled)
        started = time.perf_counter()
        matcher = xgrammar.GrammarMatcher(compiler.compile_grammar(gbnf, root_rule_name="root"))
        compile_ms = (time.perf_counter() - started) * 1000
        bitmask = xgrammar.allocate_token_bitmask(1, vocab)
        logits = torch.zeros(1, vocab)
        started = time.perf_counter()
        for token in reply_ids:
            matcher.fill_next_token_bitmask(bitmask)
            xgrammar.apply_token_bitmask_inplace(logits, bitmask)
            assert matcher.accept_token(token)
        rows.append({"engine": label, "compile_ms": round(compile_ms, 1),
                     "mask_ms_per_token": round((time.perf_counter() - started) * 1000 / len(reply_ids), 2)})
    # xgrammar's own JSON Schema converter, with the same bounds as maxItems / maxLength
    bounded = json.loads(json.dumps(schema))
    bounded["properties"]["edits"]["maxItems"] = limits.max_array_items
    bounded["properties"]["edits"]["items"]["properties"]["replacement"]["maxLength"] = limits.max_string_chars
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    started = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(bounded), any_whitespace=False)
    compile_ms = (time.perf_counter() - started) * 1000
    matcher = xgrammar.GrammarMatcher(compiled)
    bitmask = xgrammar.allocate_token_bitmask(1, vocab)
    logits = torch.zeros(1, vocab)
    replay = tokenizer.encode(json.dumps(json.loads(tokenizer.decode(reply_ids)), separators=(", ", ": ")),
                              add_special_tokens=False)  # its converter allows no optional spaces
    started = time.perf_counter()
    for token in replay:
        matcher.fill_next_token_bitmask(bitmask)
        xgrammar.apply_token_bitmask_inplace(logits, bitmask)
        assert matcher.accept_token(token)
    mask_ms = (time.perf_counter() - started) * 1000 / len(replay)
    probe = xgrammar.GrammarMatcher(compiled)
    edit = json.loads(tokenizer.decode(reply_ids))["edits"]
    prefix = f'{{"verdict": "REVISE", "edits": [{{"segment": {json.dumps(edit[0]["segment"]) if edit else ""}, '
    raw_tab = bool(edit) and probe.accept_string(prefix + '"replacement": "a\tb')
    rows.append({"engine": "xgrammar, its own JSON Schema converter (maxLength, maxItems)",
                 "compile_ms": round(compile_ms, 1), "mask_ms_per_token": round(mask_ms, 2),
                 "accepts_a_raw_tab_in_a_string": raw_tab})
    if importlib.util.find_spec("lmformatenforcer"):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer, TokenEnforcerTokenizerData

        # its transformers integration imports a path transformers 5 removed; the same token list, built here
        started = time.perf_counter()
        zero = tokenizer.encode("0", add_special_tokens=False)[0]
        regular = []
        for token in range(vocab):
            if token in tokenizer.all_special_ids:
                continue
            after_zero = tokenizer.decode([zero, token])[1:]
            regular.append((token, after_zero, len(after_zero) > len(tokenizer.decode([token]))))
        data = TokenEnforcerTokenizerData(regular, tokenizer.decode, tokenizer.eos_token_id, False, vocab)
        setup_s = time.perf_counter() - started
        started = time.perf_counter()
        enforcer = TokenEnforcer(data, JsonSchemaParser(bounded))
        compile_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        for n in range(len(reply_ids)):
            enforcer.get_allowed_tokens(reply_ids[:n])
        rows.append({"engine": "lm-format-enforcer, JSON Schema", "compile_ms": round(compile_ms, 1),
                     "tokenizer_setup_s": round(setup_s, 2),
                     "mask_ms_per_token": round((time.perf_counter() - started) * 1000 / len(reply_ids), 2)})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--free-max-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines-only", action="store_true", help="skip the generation rows")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "transformers_structured.json"))
    args = parser.parse_args()

    import torch

    from bmc_data.bridging.protocol import SCHEMA_NAME, reply_schema
    from bmc_data.bridging.templates import load_template
    from bmc_data.providers.base import ChatRequest, ResponseSchema
    from bmc_data.providers.embedded import load_embedded_model
    from bmc_data.providers.grammar import fit_limits
    from bmc_data.providers.transformers_local import TransformersProvider

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    model, tokenizer = load_embedded_model()
    provider = TransformersProvider.from_pretrained_objects(model, tokenizer, max_batch_size=max(batches))
    template = load_template("qa", reply_format="structured")
    chosen = pairs(args.pairs)
    schemas = [reply_schema(p["rejected"], requires_verdict=True, answer=p["answer"]) for p in chosen]
    messages = [tuple(template.render(prompt=p["prompt"], chosen=p["chosen"], rejected=p["rejected"])) for p in chosen]
    free = [ChatRequest(messages=m, max_tokens=args.free_max_tokens) for m in messages]
    constrained = [ChatRequest(messages=m, max_tokens=args.max_tokens, response_schema=ResponseSchema(SCHEMA_NAME, s))
                   for m, s in zip(messages, schemas)]
    if not args.engines_only:
        provider._generate([ChatRequest(messages=messages[0], max_tokens=4)])  # warm-up
    rows = []
    for batch in [] if args.engines_only else batches:
        rows.append(measure(provider, free, chosen, "free text", batch))
        rows.append(measure(provider, constrained, chosen, "grammar-constrained (xgrammar)", batch))
    reply = provider._generate(constrained[:1])[0]
    limits = fit_limits(schemas[0], provider.grammar_limits, args.max_tokens)
    engines = engine_rows(tokenizer, schemas[0], tokenizer.encode(reply.text, add_special_tokens=False), limits)
    result = {"command": "python bench/transformers_structured.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "engines_only"))
                  + (" --engines-only" if args.engines_only else ""),
              "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} usable cores",
              "model": "SmolLM2-135M-Instruct float32 (embedded GGUF dequantized by transformers)",
              "fitted_grammar_limits": {"max_string_chars": limits.max_string_chars,
                                        "max_array_items": limits.max_array_items},
              "rows": rows, "engines": engines, "sample_reply": reply.text}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
