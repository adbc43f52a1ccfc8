"""`RemoteProvider`: a provider behind an HTTP API, with limits, retries, systemic-failure stop and accounting."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import weakref
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from bmc_data.errors import SystemicFailure, UsageError
from bmc_data.redaction import SplitUrl, public_url, redact, split_url

from .base import ChatRequest, ChatResponse, Pricing, Provider, ProviderError
from .limits import ProviderLimits
from .retry import (
    RetryableError,
    api_error_message,
    call_with_retries,
    malformed_error,
    status_error,
)
from .systemic import CircuitBreaker, connection_failure, status_failure
from .throttle import CallGate, estimate_tokens
from .transport import http_transport_options

_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


def check_base_url(url: str, source: str) -> str:
    """`url` if a client can connect to it (http or https, a host, a port in 1-65535), else a `UsageError` naming
    `source` (the flag, argument or variable it came from). Checked before any call: a bad port used to end in
    hundreds of lines of tracebacks, a missing host in a minute of retries."""
    parts = urlsplit(url.strip())
    shown = public_url(url)  # credentials in the URL (userinfo, ?api_key=) are never shown
    if parts.scheme not in ("http", "https") or not url.strip().lower().startswith(("http://", "https://")):
        raise UsageError(f"{source} must start with http:// or https://, got {redact(shown)!r}")
    if not parts.hostname:
        raise UsageError(f"{source} {redact(shown)!r} has no host (expected e.g. http://127.0.0.1:8000/v1)")
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rsplit("@", 1)[-1].rsplit("]", 1)[-1].rpartition(":")[2]
        if raw.isdigit():
            raise UsageError(f"{source} {redact(shown)!r}: port {raw} is out of range (1-65535)") from None
        raise UsageError(f"{source} {redact(shown)!r}: the port {raw!r} is not a number") from None
    if port == 0:
        raise UsageError(f"{source} {redact(shown)!r}: port 0 is out of range (1-65535)")
    return url


class RemoteProvider(Provider):
    """A provider behind an HTTP API: every call goes through the limits, the retries and usage accounting.

    Subclasses implement `_attempt` (one HTTP call) and raise `RetryableError` for transient failures and
    `ProviderError` for final ones. A systemic failure (`providers.systemic`) trips the provider's circuit breaker:
    every call in flight or still to come raises it at once, until the run's `aclose()`.
    """

    #: set by subclasses before the first call (`_use_base_url`): the URL without its credentials
    base_url: str = ""
    _url: SplitUrl | None = None
    #: where the API key came from, for error messages ("OPENAI_API_KEY", "api_key="); never the key itself
    key_source: str = "the API key"

    def __init__(self, model: str, *, limits: ProviderLimits | None = None, pricing: Pricing | None = None):
        super().__init__(model, pricing=pricing)
        self.limits = limits or ProviderLimits()
        self._gate = CallGate(self.limits)
        self._breaker = CircuitBreaker(self.limits.max_consecutive_failures)
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

    def _use_base_url(self, url: str, source: str) -> None:
        """Connect to `url`; its credentials (userinfo, `?api_key=`...) are registered as secrets and left out of
        `base_url`, which is what summaries, errors, the cache key and the batch ledger see."""
        check_base_url(url, source)  # shows the URL without its credentials
        self._url = split_url(url.rstrip("/"), source)
        self.base_url = self._url.public

    def _new_client(self) -> Any:
        """A new SDK client for the running event loop (no SDK retries: ours apply)."""
        sdk = self.sdk
        timeout = sdk.Timeout(self.limits.timeout_s, connect=min(10.0, self.limits.timeout_s))
        url = self._url or SplitUrl(self.base_url, self.base_url)
        return self.sdk_client_class(
            api_key=self._api_key, base_url=url.connect, max_retries=0, timeout=timeout,
            # query parameters (a key in `?api_key=`) go on every request; in the base URL the SDK would
            # append its paths after them
            default_query=url.query or None,
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
        """Error text with every known secret (this provider's key included) redacted."""
        return redact(str(error))

    def _translate_sdk_error(self, error: Exception) -> Exception | None:
        """Our error for an exception of the `openai` / `anthropic` SDK (their error classes share names), or
        None when it is not one to translate. Timeouts and connection errors are retried; HTTP status errors
        are retried or final by status; a body that is not the expected JSON is a malformed reply."""
        if isinstance(error, self.sdk.APITimeoutError):
            return RetryableError(f"{self.describe}: timed out after {self.limits.timeout_s:g}s")
        if isinstance(error, self.sdk.APIConnectionError):
            systemic = connection_failure(error, base_url=self.base_url, describe=self.describe)
            if systemic is not None:
                return systemic
            return RetryableError(f"{self.describe}: connection error: {self._safe(error.__cause__ or error)}")
        if isinstance(error, self.sdk.APIStatusError):
            message = self._safe(api_error_message(error.body, error.message))
            systemic = status_failure(error.status_code, message, base_url=self.base_url, model=self.model,
                                      describe=self.describe, key_source=self.key_source)
            if systemic is not None:
                return systemic
            return status_error(error.status_code, message, error.response.headers, describe=self.describe)
        if isinstance(error, self.sdk.APIResponseValidationError):
            return malformed_error(self.describe, self._safe(error))
        if isinstance(error, ValueError):  # a body that is not JSON
            return malformed_error(self.describe, f"{type(error).__name__}: {self._safe(error)}")
        if isinstance(error, self.sdk_base_error):
            return ProviderError(f"{self.describe}: {type(error).__name__}: {self._safe(error)}")
        return None

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """Around an SDK call: its exception raised as ours (`_translate_sdk_error`), anything else as it is."""
        try:
            yield
        except Exception as error:
            translated = self._translate_sdk_error(error)
            if translated is None:
                raise
            raise translated from error

    async def aclose(self) -> None:
        """Close this event loop's client (its connections cannot outlive the loop); the run is over, so a
        tripped circuit breaker is reset (the next run tries again, e.g. after the server was started)."""
        self._breaker.reset()
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
                self._breaker.check()  # the run may have been stopped while this call waited for its slot
                return await self._timed_attempt(request)
        async with gate._semaphore():  # no pacing configured: the same slot, without the generator's cost
            self._breaker.check()
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
        breaker = self._breaker
        breaker.check()
        estimate = estimate_tokens(request.messages, request.max_tokens) if self._gate.tokens else 0
        try:
            response = await call_with_retries(
                lambda: self._bounded_attempt(request, estimate), limits=self.limits, usage=self.usage,
                describe=self.describe, should_stop=breaker.check,
            )
        except SystemicFailure as error:
            breaker.trip(error)
            raise
        except ProviderError as error:
            breaker.failure(error, self.describe)
            breaker.check()
            raise
        breaker.success()
        self._gate.settle_tokens(estimate, response.input_tokens + response.output_tokens)
        # the reply as the server sent it: the cache seals secrets, and rows mask those the user did not write
        self.record(response)
        return response
