"""What stops a whole run rather than failing one row: failures every further call would hit too.

Three kinds of failure reach a provider (see docs/errors.md):
- row-level: an unparsable or truncated reply, a 400 about this one request: the row is marked failed;
- transient: 408/409/429/5xx/529, a dropped connection, a timeout: retried with backoff (`retry`);
- systemic: a refused connection, an unknown host, an invalid request header, HTTP 401/403 (the key), HTTP 404
  (the model or the URL), or the same failure on `max_consecutive_failures` calls in a row: the run stops at
  once with one actionable line (`SystemicProviderError`, a `bmc_data.errors.SystemicFailure`).
"""

from __future__ import annotations

import socket
from typing import Any

from bmc_data.errors import SystemicFailure
from bmc_data.redaction import redact

from .base import ProviderError


class SystemicProviderError(SystemicFailure, ProviderError):
    """A provider failure that stops the run (also a `ProviderError`, with the HTTP status when there was one)."""

    def __init__(self, message: str, *, status: int | None = None):
        ProviderError.__init__(self, redact(message), retryable=False, status=status)


class RunStopped(SystemicProviderError):
    """A call that was not made because the run had been stopped; same message and status as the cause."""

    attempted = False


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return seen


def connection_failure(error: BaseException, *, base_url: str, describe: str) -> SystemicProviderError | None:
    """The systemic error for a connection that could not be made, or None for a transient one (a dropped or
    reset connection, a timeout), which is retried."""
    chain = _chain(error)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if "LocalProtocolError" in names or "illegal header" in text:
        return SystemicProviderError(
            f"{describe}: the request could not be sent: an HTTP header is invalid (usually an API key with a stray "
            "character; the key is not shown): fix the key and rerun")
    if any(isinstance(e, socket.gaierror) for e in chain) or any(
            s in text for s in ("name or service not known", "nodename nor servname", "getaddrinfo failed",
                                "temporary failure in name resolution", "no address associated")):
        return SystemicProviderError(f"{describe}: cannot resolve the host of {base_url} (DNS): check --base-url")
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in text or (
            "errno 111" in text):
        return SystemicProviderError(
            f"{describe}: the server at {base_url} refused the connection: is it running, and is --base-url right?")
    if "ConnectError" in names:
        cause = next((e for e in chain if type(e).__name__ == "ConnectError"), chain[-1])
        return SystemicProviderError(f"{describe}: cannot connect to {base_url}: {cause}")
    return None


def status_failure(status: int, message: str, *, base_url: str, model: str, describe: str,
                   key_source: str) -> SystemicProviderError | None:
    """The systemic error for an HTTP status every further call would get too, or None."""
    detail = f" (server said: {message[:200]})" if message else ""
    if status == 401:
        return SystemicProviderError(
            f"{describe}: HTTP 401: the API at {base_url} rejected the key from {key_source}{detail}; check the key "
            "(it is not shown)", status=status)
    if status == 403:
        return SystemicProviderError(
            f"{describe}: HTTP 403: the API at {base_url} refused access with the key from {key_source}{detail}; "
            f"check that the key may use model {model!r}", status=status)
    if status == 404:
        return SystemicProviderError(
            f"{describe}: HTTP 404 from {base_url}{detail}: model {model!r} was not found, or --base-url is not the "
            "API's root (OpenAI-compatible servers usually serve under /v1)", status=status)
    return None


class CircuitBreaker:
    """Stops every call of one provider once a systemic failure is seen, or after `threshold` calls in a row
    failed for good the same way (same error type and status): the shared stop flag of a run."""

    def __init__(self, threshold: int):
        self.threshold = threshold
        self.tripped: SystemicFailure | None = None
        self._streak = 0
        self._kind: Any = None

    def check(self) -> None:
        """Raise (a fresh `RunStopped`, with the cause's message) once the breaker has tripped."""
        tripped = self.tripped
        if tripped is not None:
            raise RunStopped(str(tripped), status=getattr(tripped, "status", None)) from tripped

    def trip(self, error: SystemicFailure) -> None:
        if self.tripped is None:
            self.tripped = error

    def success(self) -> None:
        self._streak, self._kind = 0, None

    def failure(self, error: ProviderError, describe: str) -> None:
        kind = (type(error).__name__, error.status)
        self._streak = self._streak + 1 if kind == self._kind else 1
        self._kind = kind
        if self._streak >= self.threshold:
            self.trip(SystemicProviderError(
                f"{describe}: the last {self._streak} calls all failed the same way, so the run was stopped: "
                f"{error}", status=error.status))

    def reset(self) -> None:
        self.tripped = None
        self.success()
