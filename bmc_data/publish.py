"""`python -m bmc_data.publish` — bridge a preference dataset and publish it on the Hugging Face Hub.

    python -m bmc_data.publish --repo my-org/ultrafeedback-bmc --provider openai --model gpt-4o \\
        --tokenizer Qwen/Qwen2.5-7B-Instruct --limit 1000 --test-size 0.05

Runs the whole pipeline: load the source (default: HuggingFaceH4/ultrafeedback_binarized, split train_prefs),
bridge every pair (LLM calls are cached under --cache-dir, so an interrupted run resumes where it stopped),
add the BMC diff masks for --tokenizer, compute edit-distance statistics and plots, write a Hub-ready folder
(parquet shards, README.md dataset card, bmc_manifest.json) to --out and push it in one commit unless --no-push.

bmc replaces or removes only the files it wrote (listed in bmc_files.json, in --out and in the repo), and only while
unchanged. Another file at README.md, bmc_manifest.json, report.html or under data/, figures/, report_files/ is
refused before any LLM call unless --overwrite; nothing else in --out is read, pushed or touched. A README.md on the
Hub that bmc did not write is kept and the card merged into it. One run at a time per --out (--out/.bmc.lock).

The Hub token comes from HF_TOKEN or `hf auth login`; it is never printed. Exit codes (docs/errors.md): 0 ok;
2 bad option, credential or input (checked before any LLM call); 3 stopped by a systemic failure (refused
connection, rejected key, unknown model); 4 every pair failed (nothing written or pushed); 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from .cli.args import (
    REMOTE_PROVIDERS,
    add_answer_check_arg,
    add_provider_args,
    base_urls,
    build_provider,
    check_folder_arg,
    check_provider_args,
    positive_int,
)
from .errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    AllRowsFailed,
    CredentialError,
    InputError,
    MissingFileError,
    SystemicFailure,
    UsageError,
    first_line,
)
from .runner import ArgumentParser, add_logging_args, run_cli, setup_logging

DEFAULT_SOURCE = "HuggingFaceH4/ultrafeedback_binarized"
DEFAULT_SOURCE_SPLIT = "train_prefs"

logger = logging.getLogger("bmc_data.publish")

__all__ = ["build_parser", "check_args", "run", "main", "UsageError", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]


def _test_size(value: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a row count, got {value!r}") from None
    if number <= 0 or (number >= 1 and not number.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a whole row count >= 1, got {value!r}")
    return int(number) if number >= 1 else number


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    add_answer_check_arg(data)
    data.add_argument("--test-size", type=_test_size, default=None,
                      help="hold out this fraction (0-1) or number of bridged pairs as a test split "
                           "(default: none, train only)")
    data.add_argument("--seed", type=int, default=42,
                      help="seed for the train/test split and the editor's sampling (default: %(default)s)")

    add_provider_args(parser, cache_default="$BMC_CACHE_DIR or ~/.cache/bmc, shared with bridge")

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
    out.add_argument("--review", default=None, metavar="FILE",
                     help="decisions exported from the review page (JSONL): drop rows marked drop, add "
                          "bmc_review_decision / bmc_review_note; rows are counted as the page counts them")
    out.add_argument("--no-report", action="store_true",
                     help="do not write the review page (report.html + report_files/, see bmc_data.report)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace files bmc did not write (or that changed since) at the paths it writes, in --out "
                          "and in the repo; without it they are refused before any call. Other files are never "
                          "deleted")
    add_logging_args(parser)
    return parser


def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from .pairs.loading import looks_like_hub_id

    path = Path(name).expanduser()
    if not path.exists() and not looks_like_hub_id(name):
        raise MissingFileError(f"--tokenizer {name}: no such folder")
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise InputError(f"--tokenizer {name}: cannot load a tokenizer from it: "
                         f"{first_line(error)}") from None


def check_args(args: argparse.Namespace) -> None:
    """Usage errors argparse cannot see, checked before any slow import or work."""
    if not args.no_push and not args.repo:
        raise UsageError("--repo is required unless --no-push is given")
    if args.repo is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(args.repo)
        except HFValidationError:
            raise UsageError(f"--repo must look like 'org/name' or 'name' (letters, digits, '-', '_' and '.', not "
                             f"first or last; no '--' or '..'), got {args.repo!r}") from None
    check_provider_args(args)
    if args.out is None:
        check_folder_arg(str(_default_out(args)), "--out (default)")
    if args.review:  # a missing or malformed decisions file fails before any paid call
        from .pairs.review import read_decisions

        read_decisions(args.review)


def _default_out(args: argparse.Namespace) -> Path:
    return Path("bmc-publish") / (args.repo or "bmc-dataset").split("/")[-1]


def check_push_target(repo: str) -> None:
    """Before any paid call, what the push at the end needs: the Hub not switched off, a token, and a token the
    Hub accepts (one whoami request)."""
    from huggingface_hub import HfApi, constants, get_token

    from .redaction import register_secret

    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"HF_HUB_OFFLINE=1 is set, but this run ends with a push to {repo}: unset it, or pass "
                         "--no-push to only write the folder")
    token = get_token()
    if not token:
        raise CredentialError(f"no Hub token for the push to {repo}: set HF_TOKEN or run `hf auth login` (or pass "
                              "--no-push to only write the folder)")
    register_secret(token)  # the saved `hf auth login` token is a secret too
    try:
        HfApi().whoami(token=token)  # a new client: it reads the endpoint now
    except Exception as error:  # huggingface_hub's HTTP errors carry the response
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise SystemicFailure(f"the Hub rejected the token (HTTP {status}) for {repo}: log in with `hf auth "
                                  "login` or set HF_TOKEN to a token with write access (no LLM call was made)") from None
        raise SystemicFailure(f"cannot reach the Hub at {constants.ENDPOINT} to check the token for the push to "
                              f"{repo}: {first_line(error)} (no LLM call was made; --no-push only writes the folder)"
                              ) from None


def run(args: argparse.Namespace) -> int:
    check_args(args)
    from .hub import save
    from .outputs import check_free, folder_lock
    from .report.page import report_scope

    repo_name = (args.repo or "bmc-dataset").split("/")[-1]
    out = Path(args.out) if args.out else _default_out(args)
    scopes = {save.WRITER: save.SCOPE}
    if not args.no_report:
        writer, scope = report_scope(out / REPORT)
        scopes[writer] = scope
    with folder_lock(out):  # one run per --out, and what is in the way refused, before any paid call
        check_free(out, scopes, overwrite=args.overwrite)
        if not args.no_push:  # and what is in the way in the repo
            from .hub.push import check_remote_free

            check_remote_free(args.repo, scopes, overwrite=args.overwrite)
        return _publish(args, out, repo_name)


REPORT = "report.html"


def _publish(args: argparse.Namespace, out: Path, repo_name: str) -> int:
    from .bridging.bridge import bridge_dataset
    from .hub.push import push_bridged
    from .hub.save import card_edit_distances, save_bridged
    from .providers.cache import default_cache_dir

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()  # one cache with `bridge`
    split = args.split or (DEFAULT_SOURCE_SPLIT if args.source == DEFAULT_SOURCE else "train")
    license_ = args.license or ("mit" if args.source == DEFAULT_SOURCE else "other")

    remote = args.provider in REMOTE_PROVIDERS
    provider = build_provider(args) if remote else None  # checks the key before anything is read or loaded
    if not args.no_push:
        check_push_target(args.repo)
    from .pairs.loading import load_pairs

    pairs = load_pairs(args.source, task=args.task, layout=args.layout, split=split, limit=args.limit,
                       on_invalid="skip" if args.skip_invalid else "raise", answer_check=not args.no_answer_check)
    from .hub.save import check_bridged_test_size, check_test_size

    # before any paid call: the split is drawn from the bridged pairs, at most the source's
    check_test_size(args.test_size, len(pairs), f"the source has {len(pairs)} pair(s) (after --limit/--skip-invalid)",
                    option="--test-size {}")
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    if tokenizer is not None and any(p.is_conversational for p in pairs):
        from .tokens.tokenization import has_chat_template

        if not has_chat_template(tokenizer):  # the masks would fail after every paid call
            raise InputError(f"--tokenizer {args.tokenizer}: it has no chat template, but the source's pairs are "
                             "conversations (lists of messages); give the tokenizer of the chat model you will train")
    provider = provider or build_provider(args)
    dataset, summary = bridge_dataset(
        pairs, task=args.task, provider=provider, cache_dir=cache_dir, concurrency=args.concurrency,
        max_tokens=args.max_tokens, seed=args.seed, progress=not args.quiet, return_summary=True,
        check_answers=not args.no_answer_check,
        max_input_tokens=args.max_input_tokens,
    )
    if summary.all_failed:  # nothing worth publishing; the replies are cached, so a fixed rerun pays nothing twice
        first = next(iter(summary.reasons.get("failed", {})), "")
        raise AllRowsFailed(f"every one of the {summary.total} pair(s) failed (most common reason: {first}); "
                            f"nothing written or pushed")
    check_bridged_test_size(args.test_size, summary.counts.get("bridged", 0))  # before the masks and statistics
    if tokenizer is not None:
        from .tokens.masks import add_diff_masks

        dataset = add_diff_masks(dataset, tokenizer)
    review = None
    if args.review:  # row numbers are the page's: all statuses, in source order, as bridge_dataset returns them
        from .pairs.review import apply_review

        dataset, review = apply_review(dataset, args.review, return_review=True)
        print(review.headline())
    identity = dict(provider.identity()) if provider is not None and hasattr(provider, "identity") else {}
    if args.base_url:  # without credentials (userinfo, ?api_key=...)
        from .redaction import public_url

        identity["base_url"] = ", ".join(public_url(u) for u in base_urls(args.base_url))
    # edit distances once, over every row: the card's table and figures, and the review page, all read them
    with_stats = dataset
    stats_table, plots = None, []
    with tempfile.TemporaryDirectory(prefix="bmc-figures-") as figures:
        if not args.no_stats:
            from .tokens.stats import add_edit_distance_stats

            with_stats = add_edit_distance_stats(dataset, tokenizer=tokenizer)
            stats_table, plots = card_edit_distances(with_stats, Path(figures))
        save_bridged(
            dataset, out, repo_id=args.repo or repo_name, source=f"{args.source} (split {split})", license=license_,
            provider_info=identity, test_size=args.test_size, seed=args.seed,
            max_shard_size=args.max_shard_size * 1024 * 1024, stats_table=stats_table, plot_paths=plots,
            stats=not args.no_stats, report_path=None if args.no_report else REPORT, overwrite=args.overwrite,
            review=review.counts() if review else None,
            extra_manifest={"review": review.counts()} if review else None,
        )
    if not args.no_report:
        from .report.page import render_report

        render_report(with_stats, out / REPORT, tokenizer=tokenizer, source=f"{args.source} (split {split})",
                      progress=not args.quiet, overwrite=args.overwrite)
    print(summary.headline())
    print(f"wrote {out}/ (README.md, bmc_manifest.json, data/" + ("" if args.no_report else ", report.html") + ")")
    if args.no_push:
        print("not pushed (--no-push)")
        return EXIT_OK
    try:
        result = push_bridged(out, args.repo, private=args.private, commit_message=args.commit_message,
                              overwrite=args.overwrite)
    except Exception as error:  # huggingface_hub's HTTP errors carry the response
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise SystemicFailure(
                f"the Hub rejected the token (HTTP {status}) for {args.repo}: log in with `hf auth login` or set "
                f"HF_TOKEN to a token with write access, then rerun the same command (the folder {out}/ is written "
                "and the LLM calls are cached)") from None
        raise
    if result.readme_merged:
        print(f"README.md on {result.repo_id} was not written by bmc: kept, with the card merged between "
              "<!-- bmc:begin --> and <!-- bmc:end -->")
    if result.created_commit:
        print(f"pushed to {result.repo_id}: {len(result.uploaded)} file(s) changed, {len(result.deleted)} deleted, "
              f"commit {result.commit_oid}")
    else:
        print(f"{result.repo_id} is already up to date at commit {result.commit_oid}: nothing pushed")
    return EXIT_OK


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)  # exits with 2 on a usage error
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    return run(args)


def main(argv: list[str] | None = None) -> int:
    """The exit code; every failure is one redacted line on stderr (`--debug` or BMC_DEBUG=1: the traceback)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
