"""Bridged rate of the two reply formats ("full" rewrite vs "edits" list) with the embedded SmolLM2 editor.

    nice -n 10 python bench/edit_format_embedded.py          # 20 ECQA train pairs, both formats

Pairs are built the paper's way, as in bench/embedded_editor_qa.py (`make_pairs`: y_w = ground truth, y_l =
SmolLM2's own greedy answer, only wrong ones kept), and the same first 20 are bridged once per format. Every call
goes through the call cache (`--cache-dir`), so an interrupted run started again resumes where it stopped; the
results file is rewritten after each format with what is done so far.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"))
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--problems", type=int, default=24, help="problems answered to find --pairs wrong ones")
    parser.add_argument("--answer-tokens", type=int, default=160)
    parser.add_argument("--editor-tokens", type=int, default=192)
    parser.add_argument("--cache-dir", default=str(REPO / ".bmc_cache" / "bench" / "edit_format_embedded"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "edit_format_embedded.json"))
    args = parser.parse_args()

    from bmc_data import bridge_dataset, make_pairs
    from bmc_data.pairs.schema import reason_group

    result: dict = {"command": f"python bench/edit_format_embedded.py --pairs {args.pairs} --problems {args.problems} "
                               f"--answer-tokens {args.answer_tokens} --editor-tokens {args.editor_tokens}",
                    "editor": "embedded SmolLM2-135M-Instruct (CPU, greedy)", "formats": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pairs = make_pairs(args.data, task="qa", keep="wrong", limit=args.problems, max_tokens=args.answer_tokens,
                       concurrency=4, cache_dir=args.cache_dir)
    pairs = pairs.select(range(min(args.pairs, len(pairs))))
    result["pairs"] = len(pairs)
    result["seconds_make_pairs"] = round(time.perf_counter() - started, 1)
    for reply_format in ("full", "edits"):
        t0 = time.perf_counter()
        bridged, summary = bridge_dataset(pairs, task="qa", reply_format=reply_format, max_tokens=args.editor_tokens,
                                          concurrency=4, cache_dir=args.cache_dir, return_summary=True)
        counts = Counter(bridged["bmc_status"])
        result["formats"][reply_format] = {
            "prompt_version": summary.prompt_version,
            "status_counts": dict(counts),
            "bridged_rate": round(counts.get("bridged", 0) / len(pairs), 3) if len(pairs) else None,
            "reasons": dict(Counter(reason_group(r) for r in bridged["bmc_reason"] if r)),
            "output_tokens": summary.usage["output_tokens"],
            "calls": summary.usage["calls"], "cached_calls": summary.usage["cached_calls"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        out.write_text(json.dumps(result, indent=2))
        print(f"{reply_format}: {dict(counts)}", flush=True)
    result["note"] = "seconds are those of this invocation: near 0 when the calls came from the cache"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
