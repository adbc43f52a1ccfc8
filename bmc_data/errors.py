"""The errors a user can cause, each with a fixed exit code, and the one wrapper every CLI runs under.

    BMCError              any error this library reports on purpose (exit 1)
    ├── UsageError        a bad option, config file or config key (exit 2)
    │   └── CredentialError   a missing or malformed API key / token (exit 2)
    ├── InputError        a bad data file, row or field (exit 2); `InvalidRowError` is one
    │   └── MissingFileError  a path that looks like a file and does not exist (also a FileNotFoundError)
    ├── SystemicFailure   the run was stopped: the server refused, the key was rejected, ... (exit 3)
    └── AllRowsFailed     the run finished but not one row succeeded (exit 4)

`bmc_data.runner.run_cli(main, argv)` turns any of them into ONE redacted line on stderr (`error: ...`) and its
exit code. The exit codes are documented in docs/errors.md. This module imports nothing from bmc_data: every
other module may import it.
"""

from __future__ import annotations

__all__ = [
    "BMCError", "UsageError", "CredentialError", "InputError", "MissingFileError", "SystemicFailure", "AllRowsFailed",
    "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_SYSTEMIC", "EXIT_ALL_FAILED", "EXIT_INTERRUPTED",
    "first_line",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error (a bug, or something we did not foresee)
EXIT_USAGE = 2  # bad option, config, credential or input (argparse uses 2 as well)
EXIT_SYSTEMIC = 3  # the run was stopped by a failure every row would hit
EXIT_ALL_FAILED = 4  # the run finished and every row failed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

DEBUG_ENV = "BMC_DEBUG"


class BMCError(Exception):
    """An error reported on purpose: its message is the one line the user sees."""

    exit_code = EXIT_FAILURE


class UsageError(BMCError, ValueError):
    """A bad command-line option, config file or config key; names the option and what was expected."""

    exit_code = EXIT_USAGE


class CredentialError(UsageError):
    """A missing or malformed credential. Its message names the variable, never the value."""


class InputError(BMCError, ValueError):
    """Bad input data: names the file (and line), or the row and field, and what was expected."""

    exit_code = EXIT_USAGE


class MissingFileError(InputError, FileNotFoundError):
    """A path that looks like a file (or folder) and does not exist."""


class SystemicFailure(BMCError, RuntimeError):
    """A failure every further call would hit too (refused connection, rejected key, unknown model, ...).

    The run stops at once; replies already paid for stay in the cache, so a rerun after the fix resumes."""

    exit_code = EXIT_SYSTEMIC


class AllRowsFailed(BMCError, RuntimeError):
    """A run that finished without a single successful row."""

    exit_code = EXIT_ALL_FAILED



def first_line(error: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), for one-line reports; an empty message
    falls back to its cause's, then to the exception's type name."""
    cause = error
    while cause.__cause__ is not None and not str(cause).strip():
        cause = cause.__cause__
    lines = str(cause).strip().splitlines()
    return lines[0][:300] if lines else type(cause).__name__
