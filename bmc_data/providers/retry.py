"""Retries of one logical call: which failures are worth repeating, how long to wait, when to give up.

`call_with_retries` runs one call through tenacity, sleeping for the server's `Retry-After` when it sends one and
for an exponential backoff with jitter otherwise. Only transient failures are retried (408/409/429/5xx/529,
dropped connections, timeouts, malformed bodies a few times); a 400/413/422 fails the row at once; and what every
further call would hit too (a refused connection, a rejected key, an unknown model: `bmc_data.providers.systemic`)
stops the whole run.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from bmc_data.errors import SystemicFailure
from bmc_data.redaction import redact

from .base import ProviderError, Usage

if TYPE_CHECKING:
    from .limits import ProviderLimits

logger = logging.getLogger("bmc_data.providers.limits")  # the logger name users and tests already filter on
T = TypeVar("T")

# Statuses worth repeating: timeouts, conflicts, rate limits, server errors, Anthropic's 529 "overloaded".
RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: A malformed body is retried at most this many attempts in total: it rarely heals.
MALFORMED_MAX_ATTEMPTS = 3


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


class RetryableError(ProviderError):
    """One failed attempt that may succeed when repeated; `retry_after` is the server's hint in seconds."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 max_attempts: int | None = None):
        super().__init__(message, retryable=True, status=status)
        self.retry_after = retry_after
        self.max_attempts = max_attempts


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI/Anthropic) or `Retry-After` (seconds or HTTP date)."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _wait_retry_after_or_backoff(wait_base):
    """The server's Retry-After when it gave one (capped), else exponential backoff with jitter."""

    def __init__(self, limits: ProviderLimits):
        self.limits = limits
        self.backoff = wait_exponential_jitter(
            multiplier=limits.backoff_base_s, max=limits.backoff_max_s, jitter=limits.backoff_base_s
        )

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        hint = getattr(error, "retry_after", None)
        if hint is not None:
            return min(float(hint), self.limits.retry_after_max_s)
        return self.backoff(retry_state)


def _stop(limits: ProviderLimits) -> Callable[[RetryCallState], bool]:
    def stop(retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        allowed = limits.max_retries + 1
        cap = getattr(error, "max_attempts", None)
        if cap is not None:
            allowed = min(allowed, cap)
        return retry_state.attempt_number >= allowed

    return stop


async def call_with_retries(attempt: Callable[[], Awaitable[T]], *, limits: ProviderLimits, usage: Usage,
                            describe: str, should_stop: Callable[[], None] | None = None) -> T:
    """Run `attempt` until it succeeds, retrying `RetryableError`s; raise `ProviderError` when it cannot.

    `describe` names the call in logs and errors (e.g. "openai gpt-4o"); it must not contain secrets.
    Each retry is counted in `usage.retries`, each call that fails for good in `usage.failures`.
    `should_stop()` is called before every retry: it raises (a `SystemicFailure`) once the run is being stopped,
    so a call in backoff gives up at once instead of waiting out its retries.
    """
    # Fast path: most calls succeed at once, and building tenacity's machinery costs ~0.1 ms of CPU a call.
    # The first attempt runs bare; only when it fails retryably does tenacity take over, and it is handed
    # that failure as its own attempt 1, so stop, wait, logging and counts are exactly as if it ran them all.
    try:
        return await attempt()
    except RetryableError as error:
        first_error: RetryableError | None = error
    except ProviderError as error:
        if getattr(error, "attempted", True):  # a call the stopped run never made is no failure of its own
            usage.failures += 1
        raise

    def before_sleep(retry_state: RetryCallState) -> None:
        usage.retries += 1
        error = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        logger.info("%s; retrying in %.2fs (attempt %d of at most %d)", error, wait,
                    retry_state.attempt_number + 1, limits.max_retries + 1)

    attempts = 1

    async def counted() -> T:
        nonlocal attempts, first_error
        if first_error is not None:  # attempt 1 already ran (above): replay its failure
            error, first_error = first_error, None
            raise error
        if should_stop is not None:
            should_stop()
        attempts += 1
        return await attempt()

    retrying = AsyncRetrying(
        stop=_stop(limits),
        wait=_wait_retry_after_or_backoff(limits),
        retry=retry_if_exception_type(RetryableError),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return await retrying(counted)
    except RetryableError as error:
        usage.failures += 1
        raise ProviderError(f"{describe}: gave up after {attempts} attempt(s): {error}", retryable=True,
                            status=error.status) from error
    except (ProviderError, SystemicFailure):
        usage.failures += 1
        raise


def api_error_message(body: object, fallback: str) -> str:
    """The human message of an API error body (`{"error": {"message": ...}}` and similar shapes)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return fallback


def status_error(status: int, message: str, headers: Mapping[str, str] | None, *, describe: str) -> ProviderError:
    """The error for an HTTP error reply: retryable (with the server's Retry-After) or final."""
    text = f"{describe}: HTTP {status}: {redact(message)[:300]}"  # redacted before the cut: no partial key
    if is_retryable_status(status):
        return RetryableError(text, status=status, retry_after=parse_retry_after(headers))
    return ProviderError(text, retryable=False, status=status)


def malformed_error(describe: str, detail: str) -> RetryableError:
    return RetryableError(f"{describe}: malformed reply body ({detail[:200]})", max_attempts=MALFORMED_MAX_ATTEMPTS)
