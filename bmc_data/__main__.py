"""`python -m bmc_data` — bridge preference pairs from the command line.

    python -m bmc_data bridge --source pairs.jsonl --task instruction --provider openai --model gpt-4o --out out/
    python -m bmc_data bridge --source ../shared/data/qa/ecqa-train.jsonl --task qa --make-pairs --limit 8 --out bmc-demo

`--make-pairs` first samples y_l for each QA/math problem from the pair model (default: the same provider), as in
the paper (y_w = ground-truth solution, y_l = the model's own answer). Writes bridged.parquet, bridged.jsonl,
summary.json and summary.md (and pairs.jsonl with --make-pairs) to `--out`, listed in `--out`/bmc_files.json. A rerun
replaces only the files an earlier run wrote, and only while they are unchanged; any other file at those names is
refused before any call unless --overwrite. One run at a time per `--out` (`--out`/.bmc.lock names the holder).

Exit codes (docs/errors.md): 0 done; 2 bad option, credential or input; 3 stopped by a systemic failure (refused
connection, rejected key, unknown model: nothing written, replies so far cached); 4 every pair failed; 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bridging.templates import REPLY_FORMATS
from .cli.args import (
    REMOTE_PROVIDERS,
    add_answer_check_arg,
    add_provider_args,
    build_provider,
    check_default_cache_folder,
    check_provider_args,
    non_negative_int,
    positive_int,
)
from .errors import AllRowsFailed, InputError, UsageError
from .outputs import OutputFolder
from .pairs.schema import Status, Task
from .redaction import redact
from .runner import ArgumentParser, add_logging_args, run_cli, setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m bmc_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    bridge = sub.add_parser("bridge", help="bridge pairs with targeted modification (paper §3.1)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bridge.add_argument("--source", required=True, help="file (jsonl/json/parquet/csv), folder or Hub repo id")
    bridge.add_argument("--task", required=True, choices=[t.value for t in Task], help="qa, math or instruction")
    bridge.add_argument("--split", default="train", help="split to read from a folder or Hub repo")
    bridge.add_argument("--layout", default="auto", choices=["auto", "standard", "conversational", "ultrafeedback", "qa"],
                        help="input layout (auto-detected from the columns)")
    bridge.add_argument("--limit", type=positive_int, default=None, help="only the first N rows")
    bridge.add_argument("--make-pairs", action="store_true",
                        help="QA/math only: sample y_l for each problem first (y_w = ground-truth solution)")
    bridge.add_argument("--keep", default="all", choices=["all", "wrong"],
                        help="with --make-pairs: keep all pairs, or only those whose y_l is wrong")
    bridge.add_argument("--shots", type=non_negative_int, default=0,
                        help="with --make-pairs: show the model the source's first N problems and solutions as "
                             "worked examples, so its answers take their form (they are not paired)")
    bridge.add_argument("--skip-invalid", action="store_true",
                        help="skip bad input rows (each listed in summary.json) instead of stopping at the first")
    add_answer_check_arg(bridge)
    bridge.add_argument("--reply-format", default="full", choices=list(REPLY_FORMATS),
                        help="full: the editor writes the whole pseudo-winning response (paper); edits: it lists "
                             "replacements of spans of the rejected response, which are applied here; structured: "
                             "a JSON reply constrained by a per-pair schema (structured outputs / grammars): edits "
                             "anchored to the rejected response's sentences and lines, QA/math final answer fixed "
                             "to the reference")
    bridge.add_argument("--out", required=True, help="output folder")
    bridge.add_argument("--overwrite", action="store_true",
                        help="replace files bmc did not write (or that changed since) where it writes its outputs; "
                             "without it they are refused before any call. Other files are never touched")
    add_provider_args(bridge, cache_default="$BMC_CACHE_DIR or ~/.cache/bmc")
    add_logging_args(bridge)
    from .cli.batches import add_parser as add_batches_parser

    add_batches_parser(sub, cache_default="$BMC_CACHE_DIR or ~/.cache/bmc")
    return parser


#: what `bridge` writes to --out (pairs.jsonl: with --make-pairs)
BRIDGE_FILES = ("bridged.parquet", "bridged.jsonl", "summary.json", "summary.md")
PAIRS_FILE = "pairs.jsonl"
WRITER = "bridge"


def write_outputs(dataset, summary, out: Path | OutputFolder, *, overwrite: bool = False) -> None:
    """bridged.parquet, bridged.jsonl, summary.json and summary.md, into an open `OutputFolder` (or a folder path,
    which is opened for this write: an earlier run's files are replaced, anything else in the way is refused)."""
    if not isinstance(out, OutputFolder):
        with OutputFolder(out, WRITER, BRIDGE_FILES, overwrite=overwrite) as folder:
            return write_outputs(dataset, summary, folder)
    dataset.to_parquet(str(out.path("bridged.parquet")))
    dataset.to_json(str(out.path("bridged.jsonl")), lines=True, force_ascii=False)
    out.write_text("summary.json", json.dumps(summary.to_dict(), indent=2))
    examples = [r for r in dataset if r["bmc_status"] == Status.BRIDGED.value][:3]
    lines = ["# Bridging summary", "", "```", str(summary), "```", ""]  # str(summary) is redacted
    for i, row in enumerate(examples, 1):
        lines += [f"## Example {i}", "", "**Prompt**", "", f"{row['prompt']}", "", "**y_l (rejected)**", "",
                  f"{row['rejected']}", "", "**ỹ_w (pseudo-winning)**", "", f"{row['chosen']}", ""]
    out.write_text("summary.md", redact("\n".join(lines)))


def _bridge(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "batches":
        from .cli.batches import run as run_batches

        setup_logging()
        return run_batches(args)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    check_provider_args(args)  # every option is checked before any data is read, model loaded or call made
    if args.shots and not args.make_pairs:
        raise UsageError("--shots shows worked examples to the model that samples y_l: it needs --make-pairs")
    if args.keep != "all" and not args.make_pairs:
        raise UsageError(f"--keep {args.keep} chooses which sampled pairs to keep: it needs --make-pairs")
    if args.cache_dir is None:
        check_default_cache_folder()
    from .bridging.bridge import require_schema_support
    from .providers import provider_class

    require_schema_support(provider_class(args.provider), args.reply_format)
    out = Path(args.out)
    scope = (*BRIDGE_FILES, PAIRS_FILE) if args.make_pairs else BRIDGE_FILES
    source_path = Path(args.source) if Path(args.source).exists() else None
    # Lock --out and refuse what is in the way before the data is read or a call is made.
    with OutputFolder(out, WRITER, scope, overwrite=args.overwrite, protect=[source_path] if source_path else []) \
            as folder:
        all_failed = _run_bridge(args, folder)
    if all_failed:  # raised once the outputs are recorded: they are complete, with each row's reason
        raise all_failed
    return 0


def _run_bridge(args: argparse.Namespace, folder: OutputFolder) -> AllRowsFailed | None:
    from .bridging.bridge import bridge_dataset
    from .bridging.sampling import make_pairs
    from .pairs.loading import load_pairs
    from .providers.accounting import usage_since

    out = folder.folder
    cache_dir = args.cache_dir
    remote = args.provider in REMOTE_PROVIDERS
    provider = build_provider(args) if remote else None  # cheap, and checks the key before the data is read
    sampling_usage = None
    if args.make_pairs:
        provider = provider or build_provider(args)
        before = provider.usage.as_dict()
        source = make_pairs(args.source, model=provider, task=args.task, keep=args.keep, limit=args.limit,
                            max_tokens=args.max_tokens, split=args.split, cache_dir=cache_dir,
                            progress=not args.quiet, concurrency=args.concurrency,
                            answer_check=not args.no_answer_check, shots=args.shots)
        sampling_usage = usage_since(before, provider.usage)
        if len(source) == 0 and sampling_usage.get("failures"):
            raise AllRowsFailed(f"y_l sampling failed for every problem ({sampling_usage['failures']} failed "
                                "call(s), see the warnings above): no pair to bridge")
        if len(source) == 0:
            raise InputError("--make-pairs left no pair to bridge: " + (
                "every model answer was already correct (--keep wrong)" if args.keep == "wrong" else
                "the source has no problems"))
        source.to_json(str(folder.path(PAIRS_FILE)), lines=True, force_ascii=False)
    else:  # load (and check every row) before a local model is loaded or a call is made
        source = load_pairs(args.source, task=args.task, layout=args.layout, split=args.split, limit=args.limit,
                            on_invalid="skip" if args.skip_invalid else "raise",
                            answer_check=not args.no_answer_check)
        provider = provider or build_provider(args)
    dataset, summary = bridge_dataset(
        source, task=args.task, provider=provider, cache_dir=cache_dir, concurrency=args.concurrency,
        max_tokens=args.max_tokens, layout="auto", split=args.split, progress=not args.quiet,
        reply_format=args.reply_format, check_answers=not args.no_answer_check,
        return_summary=True, max_input_tokens=args.max_input_tokens,
    )
    summary.sampling_usage = sampling_usage
    write_outputs(dataset, summary, folder)
    print(f"{summary.headline()}; wrote {len(dataset)} row(s) to {out}/ (bridged.parquet, bridged.jsonl, "
          "summary.json, summary.md)")
    if summary.all_failed:
        first = next(iter(summary.reasons.get(Status.FAILED.value, {})), "")
        return AllRowsFailed(f"every one of the {summary.total} pair(s) failed (most common reason: {first}); "
                             f"see {out}/summary.json")
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m bmc_data ...`: the exit code; every failure is one line on stderr (`--debug`: traceback)."""
    return run_cli(_bridge, argv)


if __name__ == "__main__":
    sys.exit(main())
