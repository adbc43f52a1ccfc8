"""How hard one provider may be driven (`ProviderLimits`), and, for existing imports, the pieces that apply
the limits, which live in one-idea modules: `throttle` (concurrency and rate pacing), `retry` (what is retried and
how long to wait), `systemic` (what stops a run), `transport` (httpx pools) and `remote` (`RemoteProvider`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ProviderLimits(BaseModel):
    """How hard one provider may be driven. Defaults suit a paid API at a modest tier.

    Args:
        max_concurrency: requests in flight at once.
        requests_per_minute: pace requests to this rate (None: no pacing).
        tokens_per_minute: pace by estimated tokens (prompt characters / 4 + `max_tokens`, settled
            with the real count when the reply arrives), as the OpenAI/Anthropic limits count them.
        timeout_s: limit for one attempt (connect + wait for the whole reply).
        max_retries: attempts after the first before giving up.
        backoff_base_s / backoff_max_s: exponential backoff `base * 2**n + jitter`, capped.
        retry_after_max_s: the longest server-requested `Retry-After` we honour (longer is capped).
        max_consecutive_failures: stop the run (a `SystemicFailure`) when this many calls in a row failed for
            good the same way; a refused connection, a rejected key or an unknown model stops it at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrency: int = Field(16, ge=1)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    retry_after_max_s: float = Field(120.0, ge=0)
    max_consecutive_failures: int = Field(8, ge=1)


# These lived here before the split; they are re-exported on first use (lazily: they import ProviderLimits).
_MOVED = {
    **dict.fromkeys(("MALFORMED_MAX_ATTEMPTS", "RETRYABLE_STATUSES", "RetryableError", "api_error_message",
                     "call_with_retries", "is_retryable_status", "malformed_error", "parse_retry_after",
                     "status_error"), "retry"),
    **dict.fromkeys(("CallGate", "TokenBucket", "estimate_tokens"), "throttle"),
    **dict.fromkeys(("CONNECTIONS_PER_POOL", "http_transport_options", "plain_http_options"), "transport"),
    "RemoteProvider": "remote",
}

__all__ = ["ProviderLimits", *_MOVED, "redact"]


def __getattr__(name: str) -> Any:
    if name == "redact":
        from bmc_data.redaction import redact

        return redact
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __package__), name)
