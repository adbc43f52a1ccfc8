"""`python -m bmc_data.report SOURCE --out report.html`: the review page's command line."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import datasets

from bmc_data.errors import InputError, UsageError, first_line
from bmc_data.runner import run_cli, setup_logging

from .page import DEFAULT_CHUNK_ROWS, ReportConfig, render_report
from .source import load_report_source

logger = logging.getLogger(__name__)

USAGE = """a review page for a bridged dataset.

    python -m bmc_data.report bmc-publish/ultrafeedback-bmc --out report.html
    python -m bmc_data.report out/bridged.parquet --out report.html --tokenizer Qwen/Qwen2.5-7B-Instruct
    python -m bmc_data.report my-org/ultrafeedback-bmc --out report.html          # a Hub repo, via load_bridged

SOURCE is a `save_bridged` folder (every config and split), a `python -m bmc_data bridge` output folder
(bridged.parquet), a parquet / jsonl file, or a Hub dataset repo id. The page opens straight from disk (no server,
no network): `report.html` holds the header, counts, reasons and histograms; `report_files/` beside it holds the
row index and the rows in chunks (`<script>` files that call a global registration function, so they load under
`file://`). `bmc_data.render_report(dataset, path)` is the Python face; `python -m bmc_data.publish` writes the
report into the dataset folder. What is highlighted is decided in `bmc_data.report.records`.

Exit codes (docs/errors.md): 0 ok, 2 a bad option or input (one `error: ...` line naming it), 1 a bug.
`--debug` (or BMC_DEBUG=1) shows the traceback.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bmc_data.report", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="bridged folder, .parquet / .jsonl file, or Hub dataset repo id")
    parser.add_argument("--out", default="report.html", help="HTML file to write; its data goes to <stem>_files/ "
                        "beside it (default: %(default)s)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer the diff masks were built with (default: the one recorded in "
                             "bmc_mask_tokenizer; word-level diffs when it cannot be loaded)")
    parser.add_argument("--title", default=None, help="page title (default: from the source)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help="rows per lazily loaded data file (default: %(default)s)")
    parser.add_argument("--model", default=None,
                        help="policy model (Hub id or path) for the optional λ = 1 + min(1/π_θ, δ) preview")
    parser.add_argument("--delta", type=float, default=None,
                        help=f"with --model: δ of the λ preview (default: {ReportConfig.delta})")
    parser.add_argument("--weight-rows", type=int, default=None,
                        help=f"with --model: rows whose λ the preview computes (default: {ReportConfig.weight_rows})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files bmc did not write (or that changed since) at the page's path or in its "
                             "<stem>_files/ folder; without it they are refused (exit 2). Nothing else is touched")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    parser.add_argument("--debug", action="store_true", help="the full traceback of an error (also: BMC_DEBUG=1)")
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)  # argparse's own usage errors exit 2
    setup_logging(quiet=args.quiet)
    if args.chunk_rows < 1:
        raise UsageError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
    for name in ("delta", "weight_rows"):
        if getattr(args, name) is not None and not args.model:
            raise UsageError(f"--{name.replace('_', '-')} sets the λ preview, which needs --model (the policy)")
    if args.weight_rows is not None and args.weight_rows < 1:
        raise UsageError(f"--weight-rows must be >= 1, got {args.weight_rows}")
    if args.delta is not None and args.delta < 0:
        raise UsageError(f"--delta must be >= 0, got {args.delta}")
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; give the .html file to write (e.g. {args.out}/report.html)")
    if args.quiet:
        datasets.disable_progress_bars()
    dataset, prov = load_report_source(args.source)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as error:
            raise InputError(f"--tokenizer {args.tokenizer}: cannot load a tokenizer from it: "
                             f"{first_line(error)}") from None
    preview = {name: getattr(args, name) for name in ("delta", "weight_rows") if getattr(args, name) is not None}
    config = ReportConfig(chunk_rows=args.chunk_rows, title=args.title, model=args.model, provenance=prov, **preview)
    out = render_report(dataset, args.out, tokenizer=tokenizer, config=config, progress=not args.quiet,
                        overwrite=args.overwrite)
    print(f"wrote {out} and {out.with_name(out.stem + '_files')}/ ({len(dataset):,} rows); open it in a browser")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m bmc_data.report ...`: the exit code; every failure is one line on stderr (`--debug`: traceback)."""
    return run_cli(_main, argv)
