"""A pool of self-hosted OpenAI-compatible endpoints (vLLM, llama.cpp, `transformers serve` on several machines).

    pool = EndpointPool.from_urls(["http://gpu1:8000/v1", "http://gpu2:8000/v1"], "Qwen/Qwen2.5-7B-Instruct")
    python -m bmc_data bridge ... --provider openai --base-url http://gpu1:8000/v1,http://gpu2:8000/v1

Each request goes to the healthy endpoint with the fewest requests in flight. A request that fails there
transiently (connection refused, timeout, 5xx, 429) is sent again, to whichever endpoint is then best; an
endpoint that fails `eject_after` times in a row (connection errors or 5xx: a machine that is down, not one
busy request) leaves the pool for a backoff that doubles with each ejection, with a log line, and comes
back on probation afterwards. A request the server refuses as such (400, 401, ...) fails at once, as online.
The summary's usage has the calls per endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from bmc_data.errors import SystemicFailure

from .base import ChatRequest, ChatResponse, Pricing, Provider, ProviderError, Usage
from .systemic import SystemicProviderError

logger = logging.getLogger(__name__)


@dataclass
class PoolUsage(Usage):
    by_endpoint: dict[str, int] = field(default_factory=dict)  # calls answered by each endpoint
    ejections: dict[str, int] = field(default_factory=dict)  # times each endpoint left the pool


@dataclass
class _Endpoint:
    provider: Provider
    url: str
    in_flight: int = 0
    consecutive_failures: int = 0
    ejections: int = 0
    out_until: float = 0.0  # monotonic time before which it is out of the pool
    systemic: ProviderError | None = None  # its last systemic failure (refused, rejected key...), until it answers


class EndpointPool(Provider):
    """Routes chat completions over several endpoints serving the same model.

    Args:
        endpoints: one provider per endpoint (e.g. `OpenAIProvider`s), all serving `model`. Give them few
            retries of their own (`from_urls` gives none): the pool retries elsewhere instead.
        eject_after: consecutive systemic failures that take an endpoint out of the pool.
        backoff_s / backoff_max_s: how long the first ejection lasts; each later one doubles, capped.
        max_attempts: attempts of one request over the pool before it fails (default: 3 per endpoint).
        pricing: USD per 1M tokens (self-hosted: 0).
    """

    name = "openai-pool"

    def __init__(self, endpoints: list[Provider], *, eject_after: int = 3, backoff_s: float = 5.0,
                 backoff_max_s: float = 300.0, max_attempts: int | None = None, pricing: Pricing | None = None):
        if not endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        models = {p.model for p in endpoints}
        if len(models) != 1:
            raise ValueError(f"every endpoint of a pool serves the same model; got {sorted(models)}")
        if eject_after < 1:
            raise ValueError(f"eject_after must be >= 1, got {eject_after}")
        super().__init__(endpoints[0].model, pricing=pricing)
        self.endpoints = [_Endpoint(p, str(getattr(p, "base_url", p.name))) for p in endpoints]
        urls = [e.url for e in self.endpoints]
        if len(set(urls)) != len(urls):
            raise ValueError(f"an endpoint is listed twice in the pool: {urls}")
        self.eject_after, self.backoff_s, self.backoff_max_s = eject_after, backoff_s, backoff_max_s
        self.max_attempts = max_attempts or 3 * len(endpoints)
        self.usage = PoolUsage(by_endpoint={u: 0 for u in urls})
        # any endpoint may serve any request: a schema is honoured only when every one of them honours it
        self.supports_response_schema = all(p.supports_response_schema for p in endpoints)

    @classmethod
    def from_urls(cls, urls: list[str], model: str | None, *, limits: Any = None, api_key: str | None = None,
                  pricing: Pricing | None = None, structured_output: str = "response_format",
                  **pool_kwargs: Any) -> EndpointPool:
        """One `OpenAIProvider` per URL (each with `limits`, minus retries: the pool does those)."""
        from .limits import ProviderLimits
        from .openai_chat import OpenAIProvider

        if not model:
            raise ValueError("a pool of endpoints needs --model (the name every endpoint serves)")
        limits = (limits or ProviderLimits()).model_copy(update={"max_retries": 0})
        providers: list[Provider] = [OpenAIProvider(model, base_url=url, api_key=api_key, limits=limits,
                                                    structured_output=structured_output) for url in urls]
        return cls(providers, pricing=pricing, **pool_kwargs)

    def identity(self) -> dict[str, Any]:
        # which endpoint answered does not change the answer: one cache entry, whichever served it
        return {"provider": self.name, "model": self.model}

    def _pick(self, now: float) -> _Endpoint | None:
        healthy = [e for e in self.endpoints if e.out_until <= now]
        return min(healthy, key=lambda e: e.in_flight) if healthy else None

    async def complete(self, request: ChatRequest) -> ChatResponse:
        last_error: ProviderError | None = None
        attempts = 0
        while attempts < self.max_attempts:
            now = time.monotonic()
            endpoint = self._pick(now)
            if endpoint is None:  # all out: wait for the first to come back (waiting is no attempt)
                if all(e.systemic is not None for e in self.endpoints):  # nothing left to route to: stop the run
                    raise SystemicProviderError(
                        f"{self.name} {self.model}: every endpoint failed: "
                        + "; ".join(f"{e.url}: {e.systemic}" for e in self.endpoints),
                        status=self.endpoints[0].systemic.status)
                await asyncio.sleep(max(0.0, min(e.out_until for e in self.endpoints) - now))
                continue
            attempts += 1
            endpoint.in_flight += 1
            try:
                response = await endpoint.provider.complete(request)
            except SystemicFailure as error:  # this endpoint is down or refuses us; the others may carry on
                last_error = error if isinstance(error, ProviderError) else ProviderError(str(error))
                self._eject(endpoint, last_error, reason="a systemic failure")
                self.usage.retries += 1
                continue
            except ProviderError as error:
                if not error.retryable:
                    self.usage.failures += 1
                    raise
                last_error = error
                self._failed(endpoint, error)
                self.usage.retries += 1
                continue
            finally:
                endpoint.in_flight -= 1
            endpoint.consecutive_failures, endpoint.systemic = 0, None
            self.usage.by_endpoint[endpoint.url] += 1
            self.record(response)
            return response
        self.usage.failures += 1
        raise ProviderError(f"{self.name} {self.model}: no endpoint answered after {self.max_attempts} attempt(s): "
                            f"{last_error}", retryable=True)

    def _failed(self, endpoint: _Endpoint, error: ProviderError) -> None:
        systemic = error.status is None or error.status >= 500  # down / broken, not just busy (429)
        if not systemic:
            return
        endpoint.consecutive_failures += 1
        if endpoint.consecutive_failures < self.eject_after or endpoint.out_until > time.monotonic():
            return
        self._eject(endpoint, error, reason=f"{self.eject_after} consecutive failures")

    def _eject(self, endpoint: _Endpoint, error: ProviderError, *, reason: str) -> None:
        if endpoint.out_until > time.monotonic():  # already out (calls that were in flight report late)
            return
        if isinstance(error, SystemicFailure):
            endpoint.systemic = error
            reset = getattr(getattr(endpoint.provider, "_breaker", None), "reset", None)
            if reset is not None:  # its own breaker tripped; it gets a fresh probe when it comes back
                reset()
        backoff = min(self.backoff_max_s, self.backoff_s * 2 ** endpoint.ejections)
        endpoint.ejections += 1
        endpoint.consecutive_failures = self.eject_after - 1  # on probation when it comes back: one failure ejects
        endpoint.out_until = time.monotonic() + backoff
        self.usage.ejections[endpoint.url] = endpoint.ejections
        others = sum(1 for e in self.endpoints if e.out_until <= time.monotonic())
        logger.warning("endpoint %s leaves the pool for %.0fs after %s (%s); %d endpoint(s) carry on",
                       endpoint.url, backoff, reason, error, others)

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.provider.aclose()

    def __repr__(self) -> str:
        return f"EndpointPool({[e.url for e in self.endpoints]}, model={self.model!r})"
