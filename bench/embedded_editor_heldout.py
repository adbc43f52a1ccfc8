"""Held-out quality of the embedded editor (SmolLM2-135M via llama.cpp, structured replies) on data the demo never uses.

    python bench/embedded_editor_heldout.py                    # 50 QASC test + 50 GSM8K test problems
    python bench/embedded_editor_heldout.py --limit 10 --sources qasc

For each source: `make_pairs` samples y_l from the same model (greedy, after `--shots` worked examples of the
source, as the demo does; problems it answers correctly are left out, as in the paper's QA setup), `bridge_dataset` bridges the pairs with reply format "structured". Reports per source:
the bridged share, the answer-correct share (rows whose ỹ_w states the reference answer), real minimal edits
(ỹ_w ≠ y_l and closer to y_l than y_w is) and how many of them change more than the final-answer line, median
word edit distances y_w↔y_l and ỹ_w↔y_l over the bridged rows, the share of bridged rows whose only change is
the final-answer line, and wall time per row. Results are written
after each source to bench/results/embedded_editor_heldout.json; calls are cached (`--cache-dir`), so a rerun
resumes where a stopped one ended.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SOURCES = {"qasc": (DATA / "qa" / "qasc-test.jsonl", "qa", 128), "gsm8k": (DATA / "math" / "gsm8k-test.jsonl", "math", 256)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="problems per source (default: %(default)s)")
    parser.add_argument("--sources", default="qasc,gsm8k")
    parser.add_argument("--shots", type=int, default=2, help="worked examples before each problem (default: %(default)s)")
    parser.add_argument("--cache-dir", default=str(REPO / ".bmc_cache" / "bench" / "embedded_editor_heldout"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "embedded_editor_heldout.json"))
    args = parser.parse_args()

    from bmc_data import bridge_dataset, make_pairs
    from bmc_data.pairs.answers import check_answer
    from bmc_data.providers.embedded import EmbeddedProvider
    from bmc_data.tokens.stats import add_edit_distance_stats, editor_statistics, only_final_answer_changed
    from bmc_demo.__main__ import real_minimal_edit

    provider = EmbeddedProvider()
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    result = {"command": f"python bench/embedded_editor_heldout.py --limit {args.limit} --sources {args.sources} "
                         f"--shots {args.shots}",
              "provider": provider.identity(), "n_threads": provider.n_threads, "sources": {}}
    for name in args.sources.split(","):
        path, task, answer_tokens = SOURCES[name]
        load = os.getloadavg()[0]
        started = time.perf_counter()
        pairs = make_pairs(str(path), model=provider, task=task, keep="wrong", limit=args.limit,
                           max_tokens=answer_tokens, cache_dir=args.cache_dir, progress=False, shots=args.shots)
        sampled = time.perf_counter()
        bridged, summary = bridge_dataset(pairs, task=task, provider=provider, reply_format="structured",
                                          concurrency=16, max_tokens=512, cache_dir=args.cache_dir, progress=False,
                                          return_summary=True)
        done = time.perf_counter()
        bridged = add_edit_distance_stats(bridged)
        rows = bridged.to_list()
        correct = sum(r["bmc_status"] == "bridged" and check_answer(r["chosen"], r["answer"], task)[0] for r in rows)
        result["sources"][name] = {
            "file": str(path.relative_to(DATA.parent)), "task": task, "problems": args.limit,
            "pairs_with_wrong_y_l": len(pairs), "answer_tokens": answer_tokens,
            "statuses": {s: sum(r["bmc_status"] == s for r in rows) for s in ("bridged", "filtered", "failed")},
            "answer_correct": correct, "real_minimal_edits": sum(real_minimal_edit(r) for r in rows),
            # of those, the ones that change more than the final-answer line (which the schema fixes anyway)
            "real_minimal_edits_beyond_final_answer": sum(
                real_minimal_edit(r) and not only_final_answer_changed(r["rejected"], r["chosen"]) for r in rows),
            "editor": editor_statistics(bridged),
            "reasons": sorted({r["bmc_reason"][:120] for r in rows if r["bmc_reason"]})[:10],
            "examples": [{k: r[k] for k in ("rejected", "chosen", "original_chosen", "bmc_status")} for r in rows[:3]],
            "seconds": {"make_pairs": round(sampled - started, 1), "bridge": round(done - sampled, 1),
                        "bridge_per_pair": round((done - sampled) / max(len(pairs), 1), 1),
                        "sample_per_problem": round((sampled - started) / args.limit, 1)},
            "load_avg_1min_at_start": round(load, 2),
            "note": "seconds are this invocation's: near 0 for calls served from the cache",
        }
        if summary.usage["calls"] == 0 and name in previous.get("sources", {}):  # a replay: keep the real timing
            for key in ("seconds", "load_avg_1min_at_start"):
                result["sources"][name][key] = previous["sources"][name][key]
            result["sources"][name]["note"] = ("every call replayed from the cache: seconds and load are those of "
                                               "the run that made the calls")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(json.dumps({name: {k: v for k, v in result["sources"][name].items() if k != "examples"}}), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
