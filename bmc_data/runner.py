"""How every command line of bmc runs: one log format with secrets scrubbed (`add_logging_args`,
`setup_logging`), and one wrapper (`run_cli`) under which each failure ends in one clear, redacted line and its
exit code. An unexpected exception gets one line too, plus how to see the traceback (`--debug` or `BMC_DEBUG=1`).

It sits below every stage, so the commands of each stage (bridge, publish, report, bmc_train) can use it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bmc_data.errors import (
    DEBUG_ENV,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    BMCError,
    UsageError,
)
from bmc_data.redaction import install_log_redaction, redact, register_command_line_secrets

__all__ = ["ArgumentParser", "OneLineErrors", "add_logging_args", "check_writable_folder", "debug_enabled", "run_cli", "setup_logging"]

#: Libraries that log one INFO line per HTTP request: quiet unless --verbose.
_NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "anthropic", "urllib3", "filelock")


class OneLineErrors:
    """For argparse parsers: a bad option or value is one line naming it and where the options are listed, not
    a dump of every option (bmc_train's usage alone is 181 lines)."""

    prog: str

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"error: {redact(message)} (see {self.prog} --help)\n")  # type: ignore[attr-defined]


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """`argparse.ArgumentParser` with one-line usage errors (its subcommands' parsers too)."""


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and diagnostics")
    group.add_argument("--quiet", action="store_true", help="no progress bars or log lines, only the summary")
    group.add_argument("--verbose", action="store_true", help="also log every HTTP request (httpx/openai/anthropic)")
    group.add_argument("--debug", action="store_true",
                       help="show the full traceback of an error (also: BMC_DEBUG=1); for bug reports")


def setup_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """One log format for every CLI; per-request HTTP logs only with --verbose; secrets scrubbed from every
    record (`bmc_data.redaction`)."""
    install_log_redaction()
    logging.basicConfig(level=logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if quiet:
        import datasets
        from huggingface_hub.utils import disable_progress_bars

        datasets.disable_progress_bars()
        disable_progress_bars()


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    return "--debug" in (argv or ()) or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_cli(main: Callable[[list[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a CLI `main(argv) -> exit code` so that every failure ends in one clear, redacted line.

    `--debug` (removed from argv here) or `BMC_DEBUG=1` re-raises instead, for the full traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(args)
    args = [a for a in args if a != "--debug"]
    register_command_line_secrets(args)  # before parsing: a usage error may quote them
    install_log_redaction()
    try:
        return main(args)
    except SystemExit:
        raise  # argparse's own usage errors (exit 2) and --help (exit 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (LLM calls are cached)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BMCError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # a bug or an unforeseen failure: still one line, unless asked for more
        if debug:
            print(redact(traceback.format_exc()), file=sys.stderr)
        else:
            logging.getLogger("bmc").debug("unexpected error", exc_info=True)
        first = redact(str(error)).strip().splitlines()
        print(f"error: {type(error).__name__}: {first[0] if first else ''} (rerun with --debug or {DEBUG_ENV}=1 "
              "for the traceback, and please report it)", file=sys.stderr)
        return EXIT_FAILURE


def check_writable_folder(path: str | Path, what: str) -> None:
    """A `UsageError` naming `what` (the flag and its value) unless bmc can write into the folder `path`: an
    existing folder, or a new one under an existing folder. Probed with a temporary file, created and removed
    (permission bits say nothing for root, or under /proc); the folder itself is not created here, so a run that
    stops on a later check leaves nothing behind."""
    nearest = Path(path).expanduser().absolute()
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UsageError(f"{what}: {nearest} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as error:
        raise UsageError(f"{what}: cannot write in {nearest} ({error.strerror or type(error).__name__}); "
                         "choose a folder you can write") from None
