"""Limits shared by the HTTP providers: concurrency, requests/tokens per minute, timeouts and retries.

One `CallGate` per provider bounds what is in flight and paces calls; `call_with_retries` runs one
logical call through tenacity, sleeping for the server's `Retry-After` when it sends one and for an
exponential backoff with jitter otherwise. Only transient failures are retried (408/409/429/5xx/529,
connection errors, timeouts, malformed bodies a few times); a 400/401/403/404 fails at once.
"""

from __future__ import annotations

import abc
import asyncio
import email.utils
import functools
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter
from tenacity.wait import wait_base

from .base import ChatRequest, ChatResponse, Pricing, Provider, ProviderError, Usage

logger = logging.getLogger(__name__)
T = TypeVar("T")
_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+

# Statuses worth repeating: timeouts, conflicts, rate limits, server errors, Anthropic's 529 "overloaded".
RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: A malformed body is retried at most this many attempts in total: it rarely heals.
MALFORMED_MAX_ATTEMPTS = 3


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


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


def estimate_tokens(messages: tuple[dict[str, str], ...] | list[dict[str, str]], max_tokens: int) -> int:
    """Upper-ish estimate of the tokens a call consumes, before it is made (≈4 characters per token)."""
    chars = sum(len(m.get("content", "")) + len(m.get("role", "")) + 4 for m in messages)
    return chars // 4 + max_tokens


class TokenBucket:
    """Paces a rate (per minute) with reservations, so waiters are served in arrival order.

    `acquire(n)` takes `n` at once, letting the balance go negative, and sleeps until the balance would
    have refilled to zero: no lock is held while sleeping and no waiter can starve another. The burst
    allowance is one second's worth of the rate, which is how OpenAI enforces per-minute limits.
    """

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic):
        if per_minute <= 0:
            raise ValueError(f"rate must be > 0 per minute, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = threading.Lock()  # the bucket may be shared by event loops in several threads

    def _reserve(self, amount: float) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= amount
            return max(0.0, -self._tokens / self.rate)

    async def acquire(self, amount: float = 1.0) -> None:
        delay = self._reserve(amount)
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self.give_back(amount)
                raise

    def give_back(self, amount: float) -> None:
        """Return (or, when negative, take more of) a reservation, e.g. once the real token count is known."""
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + amount)


class CallGate:
    """The concurrency bound and rate pacing of one provider, shared by all of its calls.

    asyncio primitives belong to one event loop, and a provider may outlive several (`asyncio.run`
    per dataset), so the semaphore is kept per loop; the buckets are plain clocks and are shared.
    """

    def __init__(self, limits: ProviderLimits):
        self.limits = limits
        self.requests = TokenBucket(limits.requests_per_minute) if limits.requests_per_minute else None
        self.tokens = TokenBucket(limits.tokens_per_minute) if limits.tokens_per_minute else None
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self.limits.max_concurrency)
        return semaphore

    @asynccontextmanager
    async def slot(self, estimated_tokens: int = 0) -> AsyncIterator[None]:
        """Hold one concurrency slot, after waiting for the request and token budgets."""
        async with self._semaphore():
            if self.requests is not None:
                await self.requests.acquire(1)
            if self.tokens is not None and estimated_tokens:
                await self.tokens.acquire(estimated_tokens)
            yield

    def settle_tokens(self, estimated: int, actual: int) -> None:
        """Correct a token reservation once the real count is known."""
        if self.tokens is not None and estimated:
            self.tokens.give_back(estimated - actual)


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
                            describe: str) -> T:
    """Run `attempt` until it succeeds, retrying `RetryableError`s; raise `ProviderError` when it cannot.

    `describe` names the call in logs and errors (e.g. "openai gpt-4o"); it must not contain secrets.
    Each retry is counted in `usage.retries`, each call that fails for good in `usage.failures`.
    """
    # Fast path: most calls succeed at once, and building tenacity's machinery costs ~0.1 ms of CPU a call.
    # The first attempt runs bare; only when it fails retryably does tenacity take over, and it is handed
    # that failure as its own attempt 1, so stop, wait, logging and counts are exactly as if it ran them all.
    try:
        return await attempt()
    except RetryableError as error:
        first_error: RetryableError | None = error
    except ProviderError:
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
    except ProviderError:
        usage.failures += 1
        raise


def plain_http_options(base_url: str) -> dict[str, Any]:
    """httpx client options for `base_url`: a plain-http server (a local vLLM, llama.cpp, tests) needs no
    TLS, so skip loading the CA bundle (~80 ms for every new client, i.e. every event loop)."""
    return {"verify": False} if base_url.startswith("http://") else {}


#: Connections per httpcore pool. A pool walks all of its idle connections (polling each socket) every time
#: a request starts and ends, so one pool costs O(connections) of CPU per request: at 64 in flight that was
#: ~0.5 ms a call on a 2-core VM. Requests are spread over pools of about this many connections instead.
CONNECTIONS_PER_POOL = 8


def http_transport_options(base_url: str, max_concurrency: int, limits: Any) -> dict[str, Any]:
    """Keyword arguments for the SDK's `DefaultAsyncHttpxClient`: `plain_http_options`, plus, when more than
    `CONNECTIONS_PER_POOL` requests may be in flight, a transport that spreads them over several pools
    (each with the SDK's own `limits`; each request goes to the pool with the fewest in flight)."""
    options = plain_http_options(base_url)
    pools = -(-max_concurrency // CONNECTIONS_PER_POOL)
    if pools <= 1:
        return options
    import httpx2

    # one TLS context for all pools: loading the CA bundle costs ~80 ms each time
    verify = httpx2.create_ssl_context(verify=options.get("verify", True))
    transports = [httpx2.AsyncHTTPTransport(verify=verify, limits=limits) for _ in range(pools)]
    return {**options, "transport": _spread_transport_class()(transports)}


@functools.lru_cache(maxsize=None)
def _spread_transport_class() -> type:
    import httpx2  # only here: `import bmc_data` stays light

    class _Release(httpx2.AsyncByteStream):
        """A response body that gives its pool's in-flight count back when closed."""

        def __init__(self, stream: httpx2.AsyncByteStream, load: list[int], index: int):
            self._stream, self._load, self._index = stream, load, index

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._stream:  # type: ignore[attr-defined]
                yield chunk

        async def aclose(self) -> None:
            if self._index >= 0:
                self._load[self._index] -= 1
                self._index = -1
            await self._stream.aclose()  # type: ignore[attr-defined]

    class SpreadTransport(httpx2.AsyncBaseTransport):
        """Sends each request through the least busy of several connection pools (one event loop only)."""

        def __init__(self, transports: list[httpx2.AsyncHTTPTransport]):
            self.transports = transports
            self._load = [0] * len(transports)  # requests in flight per pool, until their body is closed

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            load = self._load
            index = load.index(min(load))
            load[index] += 1
            try:
                response = await self.transports[index].handle_async_request(request)
            except BaseException:
                load[index] -= 1
                raise
            response.stream = _Release(response.stream, load, index)  # type: ignore[arg-type]
            return response

        async def aclose(self) -> None:
            for transport in self.transports:
                await transport.aclose()

    return SpreadTransport


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret replaced, for error messages that quote a server or an exception."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def api_error_message(body: object, fallback: str) -> str:
    """The human message of an API error body (`{"error": {"message": ...}}` and similar shapes)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return fallback


def status_error(status: int, message: str, headers: Mapping[str, str] | None, *, describe: str) -> ProviderError:
    """The error for an HTTP error reply: retryable (with the server's Retry-After) or final."""
    text = f"{describe}: HTTP {status}: {message[:300]}"
    if is_retryable_status(status):
        return RetryableError(text, status=status, retry_after=parse_retry_after(headers))
    return ProviderError(text, retryable=False, status=status)


def malformed_error(describe: str, detail: str) -> RetryableError:
    return RetryableError(f"{describe}: malformed reply body ({detail[:200]})", max_attempts=MALFORMED_MAX_ATTEMPTS)


class RemoteProvider(Provider):
    """A provider behind an HTTP API: every call goes through the limits, the retries and usage accounting.

    Subclasses implement `_attempt` (one HTTP call) and raise `RetryableError` for transient failures and
    `ProviderError` for final ones.
    """

    #: set by subclasses before the first call
    base_url: str = ""

    def __init__(self, model: str, *, limits: ProviderLimits | None = None, pricing: Pricing | None = None):
        super().__init__(model, pricing=pricing)
        self.limits = limits or ProviderLimits()
        self._gate = CallGate(self.limits)
        # httpx connections belong to the event loop that opened them: one SDK client per loop
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def identity(self) -> dict[str, Any]:
        return {"provider": self.name, "model": self.model, "base_url": self.base_url}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    #: the official SDK module (`openai` or `anthropic`): both name their timeout, client-options and error
    #: classes alike, so client construction and error translation are written once, here
    sdk: Any = None
    #: the SDK's async client class and root error class
    sdk_client_class: Any = None
    sdk_base_error: type[Exception] = Exception

    def _new_client(self) -> Any:
        """A new SDK client for the running event loop (no SDK retries: ours apply)."""
        sdk = self.sdk
        timeout = sdk.Timeout(self.limits.timeout_s, connect=min(10.0, self.limits.timeout_s))
        return self.sdk_client_class(
            api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=timeout,
            # our own httpx client: the SDK's default one closes itself from __del__ on whatever loop
            # runs then, which fails noisily once its own loop is gone (asyncio.run per dataset)
            http_client=sdk.DefaultAsyncHttpxClient(timeout=timeout, **http_transport_options(
                self.base_url, self.limits.max_concurrency, sdk.DEFAULT_CONNECTION_LIMITS)),
        )

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._new_client()
        return client

    def _safe(self, error: object) -> str:
        """Error text with the API key redacted."""
        return redact(str(error), getattr(self, "_api_key", None))

    def _translate_sdk_error(self, error: Exception) -> Exception | None:
        """Our error for an exception of the `openai` / `anthropic` SDK (their error classes share names), or
        None when it is not one to translate. Timeouts and connection errors are retried; HTTP status errors
        are retried or final by status; a body that is not the expected JSON is a malformed reply."""
        if isinstance(error, self.sdk.APITimeoutError):
            return RetryableError(f"{self.describe}: timed out after {self.limits.timeout_s:g}s")
        if isinstance(error, self.sdk.APIConnectionError):
            return RetryableError(f"{self.describe}: connection error: {self._safe(error.__cause__ or error)}")
        if isinstance(error, self.sdk.APIStatusError):
            message = self._safe(api_error_message(error.body, error.message))
            return status_error(error.status_code, message, error.response.headers, describe=self.describe)
        if isinstance(error, self.sdk.APIResponseValidationError):
            return malformed_error(self.describe, self._safe(error))
        if isinstance(error, ValueError):  # a body that is not JSON
            return malformed_error(self.describe, f"{type(error).__name__}: {self._safe(error)}")
        if isinstance(error, self.sdk_base_error):
            return ProviderError(f"{self.describe}: {type(error).__name__}: {self._safe(error)}")
        return None

    async def aclose(self) -> None:
        """Close this event loop's client (its connections cannot outlive the loop)."""
        try:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        except RuntimeError:
            return
        if client is not None:
            await client.close()

    @property
    def describe(self) -> str:
        return f"{self.name} {self.model}"

    @abc.abstractmethod
    async def _attempt(self, request: ChatRequest) -> ChatResponse:
        """One HTTP call, with no retries."""

    async def _bounded_attempt(self, request: ChatRequest, estimate: int) -> ChatResponse:
        gate = self._gate
        if gate.requests is not None or gate.tokens is not None:
            async with gate.slot(estimate):
                return await self._timed_attempt(request)
        async with gate._semaphore():  # no pacing configured: the same slot, without the generator's cost
            return await self._timed_attempt(request)

    async def _timed_attempt(self, request: ChatRequest) -> ChatResponse:
        # The SDK enforces timeout_s per read; this also bounds a server that trickles bytes forever.
        try:
            if _timeout is not None:  # Python 3.11+: a deadline on this task, no extra task per call
                async with _timeout(self.limits.timeout_s + 1.0):
                    return await self._attempt(request)
            return await asyncio.wait_for(self._attempt(request), self.limits.timeout_s + 1.0)
        except asyncio.TimeoutError as error:
            raise RetryableError(f"{self.describe}: no complete reply within {self.limits.timeout_s:g}s") from error

    async def complete(self, request: ChatRequest) -> ChatResponse:
        estimate = estimate_tokens(request.messages, request.max_tokens) if self._gate.tokens else 0
        response = await call_with_retries(
            lambda: self._bounded_attempt(request, estimate), limits=self.limits, usage=self.usage,
            describe=self.describe,
        )
        self._gate.settle_tokens(estimate, response.input_tokens + response.output_tokens)
        self.record(response)
        return response
