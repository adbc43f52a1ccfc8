"""`python -m bmc_data` — bridge preference pairs from the command line.

    python -m bmc_data bridge --source pairs.jsonl --task instruction --provider openai --model gpt-4o --out out/
    python -m bmc_data bridge --source ../shared/data/qa/ecqa-train.jsonl --task qa --make-pairs --limit 8 --out bmc-demo

`--make-pairs` first samples y_l for each QA/math problem from the pair model (default: the same provider), as in
the paper (y_w = ground-truth solution, y_l = the model's own answer). Writes bridged.parquet, bridged.jsonl,
summary.json and summary.md to `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .cli_args import add_provider_args, build_provider
from .schema import Status, Task


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bmc_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    bridge = sub.add_parser("bridge", help="bridge pairs with targeted modification (paper §3.1)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bridge.add_argument("--source", required=True, help="file (jsonl/json/parquet/csv), folder or Hub repo id")
    bridge.add_argument("--task", required=True, choices=[t.value for t in Task], help="qa, math or instruction")
    bridge.add_argument("--split", default="train", help="split to read from a folder or Hub repo")
    bridge.add_argument("--layout", default="auto", choices=["auto", "standard", "conversational", "ultrafeedback", "qa"],
                        help="input layout (auto-detected from the columns)")
    bridge.add_argument("--limit", type=int, default=None, help="only the first N rows")
    bridge.add_argument("--make-pairs", action="store_true",
                        help="QA/math only: sample y_l for each problem first (y_w = ground-truth solution)")
    bridge.add_argument("--keep", default="all", choices=["all", "wrong"],
                        help="with --make-pairs: keep all pairs, or only those whose y_l is wrong")
    bridge.add_argument("--skip-invalid", action="store_true", help="skip and report bad input rows instead of stopping")
    bridge.add_argument("--reply-format", default="full", choices=["full", "edits"],
                        help="full: the editor writes the whole pseudo-winning response (paper); edits: it lists "
                             "replacements of spans of the rejected response, which are applied here")
    bridge.add_argument("--out", required=True, help="output folder")
    bridge.add_argument("--quiet", action="store_true", help="no progress bars")
    add_provider_args(bridge, cache_default="$BMC_CACHE_DIR or ~/.cache/bmc")
    from .batches_cli import add_parser as add_batches_parser

    add_batches_parser(sub, cache_default="$BMC_CACHE_DIR or ~/.cache/bmc")
    return parser


def write_outputs(dataset, summary, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(out / "bridged.parquet"))
    dataset.to_json(str(out / "bridged.jsonl"), lines=True, force_ascii=False)
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    examples = [r for r in dataset if r["bmc_status"] == Status.BRIDGED.value][:3]
    lines = ["# Bridging summary", "", "```", str(summary), "```", ""]
    for i, row in enumerate(examples, 1):
        lines += [f"## Example {i}", "", "**Prompt**", "", f"{row['prompt']}", "", "**y_l (rejected)**", "",
                  f"{row['rejected']}", "", "**ỹ_w (pseudo-winning)**", "", f"{row['chosen']}", ""]
    (out / "summary.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "batches":
        from .batches_cli import run as run_batches

        return run_batches(args)
    from .bridge import bridge_dataset
    from .pairs import make_pairs

    out = Path(args.out)
    provider = build_provider(args)
    cache_dir = args.cache_dir
    source = args.source
    try:
        if args.make_pairs:
            source = make_pairs(args.source, model=provider, task=args.task, keep=args.keep, limit=args.limit,
                                max_tokens=args.max_tokens,
                                split=args.split, cache_dir=cache_dir, progress=not args.quiet,
                                concurrency=args.concurrency)
            out.mkdir(parents=True, exist_ok=True)
            source.to_json(str(out / "pairs.jsonl"), lines=True, force_ascii=False)
        dataset, summary = bridge_dataset(
            source, task=args.task, provider=provider, cache_dir=cache_dir, concurrency=args.concurrency,
            reply_format=args.reply_format,
            max_tokens=args.max_tokens, layout="auto" if args.make_pairs else args.layout, split=args.split,
            limit=None if args.make_pairs else args.limit, on_invalid="skip" if args.skip_invalid else "raise",
            progress=not args.quiet, return_summary=True,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_outputs(dataset, summary, out)
    print(f"wrote {len(dataset)} row(s) to {out}/ (bridged.parquet, bridged.jsonl, summary.json, summary.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
