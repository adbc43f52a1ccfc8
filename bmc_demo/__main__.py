"""`python -m bmc_demo`: sample y_l, bridge, diff masks, review page, a few DPO-BMC steps, and a tour of the files.

    python -m bmc_demo                       # 8 ECQA problems from ../shared/data/qa/ecqa-train.jsonl into bmc-demo/
    python -m bmc_demo --limit 2 --train-steps 1 --out /tmp/demo

Everything runs on the embedded SmolLM2-135M-Instruct (llama.cpp for generation, the same weights in float32 for
training); nothing is downloaded. Rows that fail are counted and shown, not fatal; the exit code is 4 only when
no row at all was bridged (then there is nothing to train on). The folder's `bmc_files.json` lists what the demo
wrote: a rerun replaces only those files (LLM calls replay from its cache, the converted policy is reused), and a
file it did not write at one of its paths is refused before anything runs unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bmc_data.errors import AllRowsFailed, UsageError
from bmc_data.runner import add_logging_args, run_cli, setup_logging

from .training import POLICY, TRAINED

DEFAULT_SOURCE = Path("..") / "shared" / "data" / "qa" / "ecqa-train.jsonl"
WRITER = "demo"
CACHE = "cache/calls.sqlite"  # (not the whole folder: SQLite's -wal/-shm files beside it are not the demo's to list)
PAGE = "report.html"
#: what the demo writes (a trailing / is a folder); the page is render_report's own (writer "report")
FILES = ("pairs.jsonl", "summary.json", "bridged.parquet", "bridged.jsonl", "demo.json", CACHE, f"{POLICY}/",
         f"{TRAINED}/")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bmc_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="QA problems (default: %(default)s)")
    parser.add_argument("--out", default="bmc-demo", help="output folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=8, help="pairs to bridge (default: %(default)s)")
    parser.add_argument("--answer-tokens", type=int, default=128, help="max tokens of a y_l (default: %(default)s)")
    parser.add_argument("--train-steps", type=int, default=3, help="DPO-BMC steps, 0: none (default: %(default)s)")
    parser.add_argument("--shots", type=int, default=2,
                        help="worked examples shown to the model before each problem, so that its answers (y_l) "
                             "reason before their answer line as the data's solutions do; they are the source's "
                             "first problems and are not bridged (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files the demo did not write at the paths it writes (never others)")
    add_logging_args(parser)
    return parser


def real_minimal_edit(row: dict[str, Any]) -> bool:
    """Bridged, ỹ_w differs from y_l, and ỹ_w is closer to y_l than y_w is (word edit distance)."""
    from bmc_data.tokens.stats import WORD_DISTANCE_AFTER, WORD_DISTANCE_BEFORE

    return (row["bmc_status"] == "bridged" and row["chosen"] != row["rejected"]
            and row[WORD_DISTANCE_AFTER] < row[WORD_DISTANCE_BEFORE])


def _step(number: int, what: str) -> float:
    print(f"\n[{number}/5] {what}", flush=True)
    return time.perf_counter()


def _done(started: float, timings: dict[str, float], name: str) -> None:
    timings[name] = round(time.perf_counter() - started, 1)
    print(f"      ({timings[name]:.1f} s)", flush=True)


def run(args: argparse.Namespace) -> int:
    from bmc_data.outputs import OutputFolder, check_free
    from bmc_data.report.page import report_scope

    for name in ("limit", "answer_tokens"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("train_steps", "shots"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    source = Path(args.source)
    if not source.is_file():
        raise UsageError(f"--source {source}: no such file (the demo reads ECQA from the shared/ folder beside "
                         "the repository; pass another QA .jsonl with --source)")
    out = Path(args.out)
    page_writer, page_scope = report_scope(out / PAGE)
    check_free(out, {page_writer: page_scope}, overwrite=args.overwrite)  # the page's files, before any work
    with OutputFolder(out, WRITER, FILES, overwrite=args.overwrite, protect=[source]) as folder:
        return _pipeline(args, source, folder)


def _pipeline(args: argparse.Namespace, source: Path, folder: OutputFolder) -> int:
    from bmc_data import add_diff_masks, bridge_dataset, make_pairs
    from bmc_data.providers.embedded import EmbeddedProvider
    from bmc_data.report.page import render_report
    from bmc_data.tokens.stats import add_edit_distance_stats, editor_statistics, editor_statistics_lines

    out = folder.folder
    folder.path(CACHE)  # the cache's file is the demo's (checked and recorded); its folder is created
    cache = out / Path(CACHE).parent
    timings: dict[str, float] = {}
    begin = time.perf_counter()

    started = _step(1, "sampling y_l with SmolLM2-135M (llama.cpp) and bridging the pairs with the same model")
    provider = EmbeddedProvider()
    print(f"      {provider!r}")
    # the paper's QA setup keeps the problems the model got wrong; ask for 1.5x as many to end with --limit pairs
    pairs = make_pairs(str(source), model=provider, task="qa", keep="wrong", limit=args.limit + args.limit // 2,
                       max_tokens=args.answer_tokens, cache_dir=cache, progress=False, shots=args.shots)
    pairs = pairs.select(range(min(args.limit, len(pairs))))
    pairs.to_json(str(folder.path("pairs.jsonl")))
    timings["sample_y_l"] = round(time.perf_counter() - started, 1)
    bridged, summary = bridge_dataset(pairs, task="qa", provider=provider, reply_format="structured",
                                      cache_dir=cache, concurrency=16, max_tokens=512, progress=False,
                                      return_summary=True, summary_path=folder.path("summary.json"))
    provider.close()
    bridged = add_edit_distance_stats(bridged)
    _done(started, timings, "sample_and_bridge")
    for line in editor_statistics_lines(editor_statistics(bridged)):
        print(f"      {line}")
    minimal = sum(real_minimal_edit(r) for r in bridged)
    print(f"      real minimal edits (ỹ_w ≠ y_l and closer to y_l than y_w is): {minimal} of {len(bridged)} rows")
    for row in bridged:
        if row["bmc_status"] != "bridged":
            print(f"      {row['bmc_status']}: {row['bmc_reason'][:110]}")

    started = _step(2, "token-level diff masks (SmolLM2 tokenizer)")
    from .training import policy_folder

    policy = policy_folder(folder)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    bridged = add_diff_masks(bridged, tokenizer)
    bridged.to_parquet(str(folder.path("bridged.parquet")))
    bridged.to_json(str(folder.path("bridged.jsonl")))
    _done(started, timings, "diff_masks")

    started = _step(3, "the review page")
    page = render_report(bridged, out / PAGE, tokenizer=tokenizer, source=str(source), overwrite=args.overwrite)
    _done(started, timings, "review_page")

    rows = [r for r in bridged if r["bmc_status"] == "bridged"]
    history: list[dict[str, float]] = []
    if args.train_steps and rows:
        started = _step(4, f"DPO-BMC on the {len(rows)} bridged pair(s), {args.train_steps} CPU step(s), "
                           "SmolLM2-135M-Instruct as the policy")
        from .training import train_policy

        history = train_policy(rows, policy, folder, steps=args.train_steps)
        for number, entry in enumerate(history, 1):
            print("      step {}: ".format(number) + ", ".join(f"{k} {v:.4f}" for k, v in entry.items()))
        _done(started, timings, "training")
    else:
        print("\n[4/5] training skipped: " + ("--train-steps 0" if rows else "no pair was bridged"))

    timings["total"] = round(time.perf_counter() - begin, 1)
    record = {"rows": len(bridged), "bridged": len(rows), "real_minimal_edits": minimal,
              "editor": editor_statistics(bridged), "training": history, "seconds": timings,
              "provider": provider.identity(), "batches": provider.batch_stats}
    folder.write_text("demo.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    _tour(out, page, trained=bool(history))
    if not rows:
        raise AllRowsFailed(f"no pair was bridged (see {out / 'summary.json'}); the pipeline ran up to the page")
    return 0


def _tour(out: Path, page: Path, *, trained: bool) -> None:
    print("\n[5/5] what is where")
    entries = [
        (out / "pairs.jsonl", "the QA pairs: y_w = ECQA's solution, y_l = SmolLM2's own wrong answer"),
        (out / "bridged.parquet", "the bridged dataset (also bridged.jsonl): chosen = ỹ_w when bridged, rejected = "
                                  "y_l, original_chosen = y_w, bmc_status / bmc_reason, token diff masks"),
        (out / "summary.json", "the bridging summary: statuses, reasons, calls, what the editor did"),
        (page, "the review page: open it in a browser (works from disk); every pair's token-level diff"),
        (out / POLICY, "the policy: the embedded GGUF converted once to float32 transformers"),
        (out / TRAINED, "the DPO-BMC-trained weights (load with AutoModelForCausalLM.from_pretrained)"),
        (out / "demo.json", "this run's numbers: bridged rows, editor statistics, training metrics, seconds"),
        (out / "cache", "the LLM call cache: a rerun replays every reply instead of generating it again"),
        (out / "bmc_files.json", "what bmc wrote here (size, sha256): a rerun replaces only these files, unchanged"),
    ]
    for path, what in entries:
        if path.exists() and (trained or path.name != TRAINED):
            print(f"  {path}\n      {what}")
    print("\nNext: bridge your own pairs with a strong model (README, 'Setup'), then `python -m bmc_train`.")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF conversion's bar; the demo prints one line per step
    import datasets
    import transformers

    datasets.disable_progress_bars()  # the demo prints one line per step instead
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    return run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
