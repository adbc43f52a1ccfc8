"""Command-line flags shared by `python -m bmc_data` and `python -m bmc_data.publish`."""

from __future__ import annotations

import argparse

from .providers.base import Provider

PROVIDERS = ["embedded", "openai", "anthropic", "transformers", "openai-batch", "anthropic-batch"]


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
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
    group.add_argument("--poll-interval", type=float, default=30.0,
                       help="batch providers: seconds between polls of pending batches (default: %(default)s)")
    group.add_argument("--concurrency", type=positive_int, default=16, help="pairs in flight at once (default: %(default)s)")
    group.add_argument("--requests-per-minute", type=positive_int, default=None,
                       help="client-side request rate limit (default: none)")
    group.add_argument("--tokens-per-minute", type=positive_int, default=None,
                       help="client-side token rate limit (default: none)")
    group.add_argument("--timeout", type=float, default=None, help="per-request timeout in seconds (default: 120)")
    group.add_argument("--max-tokens", type=positive_int, default=2048,
                       help="max tokens of each editor reply (default: %(default)s)")
    group.add_argument("--cache-dir", default=None,
                       help=f"LLM call cache that makes reruns resume without repeating calls (default: {cache_default})")


def build_provider(args: argparse.Namespace) -> Provider:
    from .providers import get_provider

    kwargs: dict = {}
    remote = ("openai", "anthropic", "openai-batch", "anthropic-batch")
    values = [args.base_url] if isinstance(args.base_url, str) else (args.base_url or [])  # one, or the repeated flag
    urls = [u.strip() for value in values for u in value.split(",") if u.strip()]
    if urls and args.provider not in remote:
        raise ValueError(f"--base-url is for the {', '.join(remote)} providers, not {args.provider!r}")
    if len(urls) > 1 and args.provider != "openai":
        raise ValueError(f"several --base-url values make a pool of openai endpoints; --provider {args.provider} takes one")
    if args.provider.endswith("-batch"):
        kwargs["poll_interval_s"] = getattr(args, "poll_interval", 30.0)
        kwargs["progress"] = not getattr(args, "quiet", False)
    if args.provider in remote:
        from .providers.limits import ProviderLimits

        if urls:
            kwargs["base_url"] = urls[0]
        limits = {"max_concurrency": args.concurrency, "requests_per_minute": args.requests_per_minute,
                  "tokens_per_minute": args.tokens_per_minute, "timeout_s": args.timeout}
        kwargs["limits"] = ProviderLimits(**{k: v for k, v in limits.items() if v is not None})
    if len(urls) > 1:
        from .providers.pool import EndpointPool

        kwargs.pop("base_url")
        return EndpointPool.from_urls(urls, args.model, **kwargs)
    return get_provider(args.provider, args.model, **kwargs)
