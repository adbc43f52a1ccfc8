"""Command-line flags shared by `python -m bmc_data` and `python -m bmc_data.publish`."""

from __future__ import annotations

import argparse
import math

from bmc_data.errors import UsageError
from bmc_data.pairs.options import DEFAULT_MAX_INPUT_TOKENS, is_count
from bmc_data.providers.base import STRUCTURED_OUTPUT_FIELDS, Provider
from bmc_data.providers.remote import check_base_url
from bmc_data.runner import check_writable_folder

POLL_INTERVAL_S = 30.0
PROVIDERS = ["embedded", "openai", "anthropic", "transformers", "openai-batch", "anthropic-batch"]


def positive_int(value: str) -> int:
    """argparse's type for a count option (`pairs.options.is_count`)."""
    try:
        number = int(value)
    except ValueError:
        number = None
    if not is_count(number):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """argparse's type for a count that may be 0."""
    return 0 if value.strip() == "0" else positive_int(value)


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def add_provider_args(parser: argparse.ArgumentParser, *, cache_default: str) -> None:
    """The editor-LLM flags. API keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY, never from flags."""
    group = parser.add_argument_group("editor LLM")
    group.add_argument("--provider", default="embedded", choices=PROVIDERS,
                       help="LLM backend that writes the pseudo-winning responses (default: embedded "
                            "SmolLM2-135M-Instruct, weak: use a strong model for real data)")
    group.add_argument("--model", default=None, help="model name (API providers) or local path (transformers)")
    group.add_argument("--base-url", default=None, action="append",
                       help="OpenAI-compatible server URL (vLLM, llama.cpp, transformers serve) or Anthropic base "
                            "URL; API keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY, never from flags. Several "
                            "(repeat the flag or a comma list): a pool of self-hosted openai endpoints")
    group.add_argument("--poll-interval", type=positive_float, default=None,
                       help=f"batch providers: seconds between polls of pending batches (default: {POLL_INTERVAL_S})")
    group.add_argument("--concurrency", type=positive_int, default=16, help="pairs in flight at once (default: %(default)s)")
    group.add_argument("--requests-per-minute", type=positive_int, default=None,
                       help="client-side request rate limit (default: none)")
    group.add_argument("--tokens-per-minute", type=positive_int, default=None,
                       help="client-side token rate limit (default: none)")
    group.add_argument("--timeout", type=positive_float, default=None,
                       help="per-request timeout in seconds (default: 120)")
    group.add_argument("--max-tokens", type=positive_int, default=2048,
                       help="max tokens of each editor reply (default: %(default)s)")
    group.add_argument("--max-input-tokens", type=positive_int, default=DEFAULT_MAX_INPUT_TOKENS,
                       help="rows whose editor prompt is estimated (4 characters a token) above this fail before any "
                            "call is made (default: %(default)s, fits a 32k context window)")
    group.add_argument("--structured-output", default=None, choices=STRUCTURED_OUTPUT_FIELDS,
                       help="openai providers with --reply-format structured: the request field that carries the "
                            "reply's JSON schema: response_format (OpenAI structured outputs; also vLLM, SGLang, "
                            "llama-server, LM Studio, Ollama; the default), guided_json (vLLM < 0.12) or "
                            "structured_outputs (vLLM >= 0.10.2)")
    group.add_argument("--cache-dir", default=None,
                       help=f"LLM call cache that makes reruns resume without repeating calls (default: {cache_default})")


def add_answer_check_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-answer-check", action="store_true",
                        help="QA/math: bridge rows without a known final answer, and do not check that the "
                             "pseudo-winning response reaches it (named in the summary); by default a row with no "
                             "answer is an invalid row")


def check_folder_arg(value: str | None, flag: str) -> None:
    """An output folder flag must name a folder bmc can write (found only after the paid calls otherwise)."""
    from pathlib import Path

    if value and Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
        raise UsageError(f"{flag} {value}: is a file, expected a folder")
    if value:
        check_writable_folder(value, f"{flag} {value}")


def check_default_cache_folder() -> None:
    """The cache folder used when --cache-dir is not given ($BMC_CACHE_DIR or ~/.cache/bmc) must be writable too."""
    import os

    from bmc_data.providers.cache import default_cache_dir

    where = "from BMC_CACHE_DIR" if os.environ.get("BMC_CACHE_DIR") else "the default; set --cache-dir"
    check_writable_folder(default_cache_dir(), f"the LLM call cache {default_cache_dir()} ({where})")


REMOTE_PROVIDERS = ("openai", "anthropic", "openai-batch", "anthropic-batch")


def base_urls(value: str | list[str] | None) -> list[str]:
    """`--base-url` given once, several times, or as a comma list (several make a pool of endpoints)."""
    values = [value] if isinstance(value, str) else (value or [])
    return [u.strip() for v in values for u in v.split(",") if u.strip()]


def check_provider_args(args: argparse.Namespace) -> None:
    """What can be told wrong about the provider flags without building it."""
    urls = base_urls(args.base_url)
    if urls and args.provider not in REMOTE_PROVIDERS:
        raise UsageError(f"--base-url is for the {', '.join(REMOTE_PROVIDERS)} providers, not {args.provider!r}")
    for url in urls:
        check_base_url(url, "--base-url")
    if len(urls) > 1 and args.provider != "openai":
        raise UsageError(f"several --base-url values make a pool of openai endpoints; --provider {args.provider} "
                         "takes one")
    if getattr(args, "structured_output", None) and args.provider not in ("openai", "openai-batch"):
        raise UsageError(f"--structured-output is for the openai and openai-batch providers, not {args.provider!r}")
    if getattr(args, "structured_output", None) and getattr(args, "reply_format", None) != "structured":
        raise UsageError("--structured-output carries the reply schema of --reply-format structured (python -m "
                         "bmc_data bridge); without it no schema is sent, so it would be ignored")
    if getattr(args, "poll_interval", None) is not None and not args.provider.endswith("-batch"):
        raise UsageError(f"--poll-interval is for the batch providers (openai-batch, anthropic-batch), not "
                         f"{args.provider!r}, which answers each request as it comes")
    if args.provider in (*REMOTE_PROVIDERS, "transformers") and not args.model:
        raise UsageError(f"--provider {args.provider} needs --model")
    check_folder_arg(getattr(args, "cache_dir", None), "--cache-dir")
    check_folder_arg(getattr(args, "out", None), "--out")


def build_provider(args: argparse.Namespace) -> Provider:
    """The provider the flags describe; a missing or malformed key is a `CredentialError` (no request made)."""
    from bmc_data.providers import get_provider

    check_provider_args(args)
    kwargs: dict = {}
    urls = base_urls(args.base_url)
    if args.provider.endswith("-batch"):
        kwargs["poll_interval_s"] = getattr(args, "poll_interval", None) or POLL_INTERVAL_S
        kwargs["progress"] = not getattr(args, "quiet", False)
    if args.provider in REMOTE_PROVIDERS:
        from bmc_data.providers.limits import ProviderLimits

        if urls:  # several: get_provider makes them a pool of endpoints
            kwargs["base_url"] = urls if len(urls) > 1 else urls[0]
        limits = {"max_concurrency": args.concurrency, "requests_per_minute": args.requests_per_minute,
                  "tokens_per_minute": args.tokens_per_minute, "timeout_s": args.timeout}
        kwargs["limits"] = ProviderLimits(**{k: v for k, v in limits.items() if v is not None})
    if getattr(args, "structured_output", None):
        kwargs["structured_output"] = args.structured_output
    try:
        return get_provider(args.provider, args.model, **kwargs)
    except UsageError:
        raise
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    except OSError as error:  # a local model that cannot be loaded (no such folder, no weights)
        from bmc_data.errors import InputError, first_line

        raise InputError(f"--model {args.model}: cannot load it: {first_line(error)}") from None
