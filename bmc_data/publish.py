"""`python -m bmc_data.publish` — bridge a preference dataset and publish it on the Hugging Face Hub.

    python -m bmc_data.publish --repo my-org/ultrafeedback-bmc --provider openai --model gpt-4o \\
        --tokenizer Qwen/Qwen2.5-7B-Instruct --limit 1000 --test-size 0.05

Runs the whole pipeline: load the source (default: HuggingFaceH4/ultrafeedback_binarized, split train_prefs),
bridge every pair (LLM calls are cached under --cache-dir, so an interrupted run resumes where it stopped),
add the BMC diff masks for --tokenizer, compute edit-distance statistics and plots, write a Hub-ready folder
(parquet shards, README.md dataset card, bmc_manifest.json) to --out and push it in one commit unless --no-push.

The Hub token comes from HF_TOKEN or `hf auth login`; it is never printed. Exit codes: 0 ok, 2 usage error,
1 failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .cli_args import add_provider_args, build_provider, positive_int

DEFAULT_SOURCE = "HuggingFaceH4/ultrafeedback_binarized"
DEFAULT_SOURCE_SPLIT = "train_prefs"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger("bmc_data.publish")


class UsageError(ValueError):
    """Bad command-line arguments (exit code 2)."""


def _test_size(value: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a row count, got {value!r}") from None
    if number <= 0 or (number >= 1 and not number.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a whole row count >= 1, got {value!r}")
    return int(number) if number >= 1 else number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bmc_data.publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hub = parser.add_argument_group("Hub")
    hub.add_argument("--repo", default=None,
                     help="Hub dataset repo id to publish to, e.g. my-org/ultrafeedback-bmc (required unless "
                          "--no-push; also named in the card's snippets)")
    hub.add_argument("--no-push", action="store_true", help="only write the folder to --out; do not push")
    hub.add_argument("--private", action="store_true", help="create the repo as private (ignored if it exists)")
    hub.add_argument("--commit-message", default="Upload BMC bridged dataset",
                     help="commit message of the push (default: %(default)s)")
    hub.add_argument("--license", default=None,
                     help="license in the card metadata (default: mit for UltraFeedback, else other)")

    data = parser.add_argument_group("source data")
    data.add_argument("--source", default=DEFAULT_SOURCE,
                      help="Hub dataset id, local file (jsonl/json/parquet/csv) or folder with preference pairs "
                           "(default: %(default)s)")
    data.add_argument("--split", default=None,
                      help=f"split of --source to read (default: {DEFAULT_SOURCE_SPLIT} for the default source, "
                           "else train)")
    data.add_argument("--task", default="instruction", choices=["instruction", "qa", "math"],
                      help="task family; picks the prompt template and, for qa/math, answer checking "
                           "(default: %(default)s)")
    data.add_argument("--layout", default="auto", choices=["auto", "standard", "conversational", "ultrafeedback", "qa"],
                      help="input layout (default: auto-detected from the columns)")
    data.add_argument("--limit", type=positive_int, default=None, help="only the first N pairs of the source")
    data.add_argument("--skip-invalid", action="store_true",
                      help="skip and report invalid source rows instead of stopping at the first one")
    data.add_argument("--test-size", type=_test_size, default=None,
                      help="hold out this fraction (0-1) or number of bridged pairs as a test split "
                           "(default: none, train only)")
    data.add_argument("--seed", type=int, default=42,
                      help="seed for the train/test split and the editor's sampling (default: %(default)s)")

    add_provider_args(parser, cache_default="<out>/.bmc_cache, never uploaded")

    out = parser.add_argument_group("output")
    out.add_argument("--tokenizer", default=None,
                     help="tokenizer (Hub id or local path) of the model you will train; the diff masks are computed "
                          "for it (default: no masks; load_bridged(repo, tokenizer=...) adds them at load time)")
    out.add_argument("--out", default=None,
                     help="output folder (default: ./bmc-publish/<repo name>)")
    out.add_argument("--no-stats", action="store_true",
                     help="skip the edit-distance statistics and plots (faster; the card says they were not computed)")
    out.add_argument("--max-shard-size", type=positive_int, default=500,
                     help="max MB of data per parquet shard (default: %(default)s)")
    out.add_argument("--quiet", action="store_true", help="no progress bars or log lines, only the summary")
    return parser


def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _scrub(text: str) -> str:
    """Never let a credential reach the terminal, even inside an exception message."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def check_args(args: argparse.Namespace) -> None:
    """Usage errors argparse cannot see, checked before any slow import or work."""
    if not args.no_push and not args.repo:
        raise UsageError("--repo is required unless --no-push is given")
    if args.repo is not None and (args.repo.count("/") > 1 or not args.repo.strip("/") or " " in args.repo):
        raise UsageError(f"--repo must look like 'org/name' or 'name', got {args.repo!r}")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    from .bridge import bridge_dataset
    from .hub import push_bridged, save_bridged, status_counts

    repo_name = (args.repo or "bmc-dataset").split("/")[-1]
    out = Path(args.out) if args.out else Path("bmc-publish") / repo_name
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / ".bmc_cache"
    split = args.split or (DEFAULT_SOURCE_SPLIT if args.source == DEFAULT_SOURCE else "train")
    license_ = args.license or ("mit" if args.source == DEFAULT_SOURCE else "other")

    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    provider = build_provider(args)
    dataset = bridge_dataset(
        args.source, task=args.task, provider=provider, cache_dir=cache_dir, concurrency=args.concurrency,
        max_tokens=args.max_tokens, seed=args.seed, layout=args.layout, split=split, limit=args.limit,
        on_invalid="skip" if args.skip_invalid else "raise", progress=not args.quiet,
    )
    if tokenizer is not None:
        from .masks import add_diff_masks

        dataset = add_diff_masks(dataset, tokenizer)
    identity = dict(provider.identity()) if provider is not None and hasattr(provider, "identity") else {}
    if args.base_url:
        identity["base_url"] = ", ".join([args.base_url] if isinstance(args.base_url, str) else args.base_url)  # may repeat
    save_bridged(
        dataset, out, repo_id=args.repo or repo_name, source=f"{args.source} (split {split})", license=license_,
        provider_info=identity, test_size=args.test_size, seed=args.seed,
        max_shard_size=args.max_shard_size * 1024 * 1024, stats_tokenizer=tokenizer, stats=not args.no_stats,
    )
    counts = status_counts(dataset)
    print(f"bridged {len(dataset)} pair(s): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"wrote {out}/ (README.md, bmc_manifest.json, data/)")
    if args.no_push:
        print("not pushed (--no-push)")
        return EXIT_OK
    result = push_bridged(out, args.repo, private=args.private, commit_message=args.commit_message)
    if result.created_commit:
        print(f"pushed to {result.repo_id}: {len(result.uploaded)} file(s) changed, {len(result.deleted)} deleted, "
              f"commit {result.commit_oid}")
    else:
        print(f"{result.repo_id} is already up to date at commit {result.commit_oid}: nothing pushed")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on a usage error
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "anthropic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.quiet:
        import datasets
        from huggingface_hub.utils import disable_progress_bars

        datasets.disable_progress_bars()
        disable_progress_bars()
    try:
        return run(args)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {_scrub(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (LLM calls are cached)", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:  # one clear line, no traceback with local variables
        logger.debug("publish failed", exc_info=True)
        print(f"error: {type(err).__name__}: {_scrub(str(err))}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
