"""How often the embedded editor (SmolLM2-135M-Instruct) bridges real QA pairs.

    python bench/embedded_editor_qa.py                 # 24 ECQA train problems, as measured for docs/qa-ablation.md
    python bench/embedded_editor_qa.py --limit 64 --answer-tokens 64

Builds pairs the paper's way (`make_pairs`: y_w = ground truth, y_l = SmolLM2's own greedy answer, wrong ones kept),
bridges them with `bridge_dataset` and the embedded default editor, and writes the status counts, the grouped
failure reasons, a few raw replies and the timings to bench/results/embedded_editor_qa.json. All calls go through
the call cache (`--cache-dir`), so a rerun with the same settings replays the measured replies without a model call.
This is why experiments/qa_ablation uses a deterministic stand-in editor by default (docs/qa-ablation.md).
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
    parser.add_argument("--limit", type=int, default=24, help="problems to answer (default: %(default)s)")
    parser.add_argument("--answer-tokens", type=int, default=160, help="max tokens of y_l (default: %(default)s)")
    parser.add_argument("--editor-tokens", type=int, default=192, help="max tokens of a reply (default: %(default)s)")
    parser.add_argument("--cache-dir", default=str(REPO / ".bmc_cache" / "bench" / "embedded_editor_qa"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "embedded_editor_qa.json"))
    args = parser.parse_args()

    from bmc_data import bridge_dataset, make_pairs
    from bmc_data.pairs.schema import reason_group

    started = time.perf_counter()
    pairs = make_pairs(args.data, task="qa", keep="wrong", limit=args.limit, max_tokens=args.answer_tokens,
                       concurrency=8, cache_dir=args.cache_dir)
    sampled = time.perf_counter()
    bridged, summary = bridge_dataset(pairs, task="qa", max_tokens=args.editor_tokens, concurrency=8,
                                      cache_dir=args.cache_dir, return_summary=True)
    done = time.perf_counter()
    result = {
        "command": f"python bench/embedded_editor_qa.py --limit {args.limit} --answer-tokens {args.answer_tokens} "
                   f"--editor-tokens {args.editor_tokens}",
        "problems": args.limit,
        "pairs_with_wrong_y_l": len(pairs),
        "status_counts": dict(Counter(bridged["bmc_status"])),
        "reasons": dict(Counter(reason_group(r) for r in bridged["bmc_reason"] if r)),
        "example_y_l": pairs["rejected"][:3],
        "calls": summary.usage,
        "seconds": {"make_pairs": round(sampled - started, 1), "bridge": round(done - sampled, 1)},
        "note": "seconds are those of this invocation: near 0 when every call came from the cache",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
