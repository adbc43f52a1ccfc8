"""Client-side pacing of one provider: the concurrency bound and the requests/tokens-per-minute budgets."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .limits import ProviderLimits


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
