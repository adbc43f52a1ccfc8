"""The async side of an in-process model: requests that arrive together are generated as one batch.

`complete()` never blocks the event loop: requests queue up, and one background task per event loop takes
what is waiting (up to `max_batch_size` that may share a batch, `batch_key`) and runs the subclass's
`_generate(requests)` in a worker thread. Only one batch runs at a time per model (`model_lock`).
Used by `TransformersProvider` and `LlamaCppProvider`.
"""

from __future__ import annotations

import abc
import asyncio
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .base import ChatRequest, ChatResponse, Provider, ProviderError

# one lock per model object: two providers sharing a model still generate one batch at a time
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.Lock:
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


@dataclass
class _Job:
    request: ChatRequest
    future: asyncio.Future[ChatResponse]


@dataclass
class _LoopQueue:
    jobs: deque[_Job] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


def batch_key(request: ChatRequest, index: int) -> tuple[Any, ...]:
    """Requests that may share one batch: all greedy ones; sampled ones with equal settings.

    A seeded sampled request runs alone, so its sample does not depend on what else was waiting.
    """
    if request.temperature <= 0:
        return ("greedy",)
    if request.seed is not None:
        return ("seeded", index)
    return ("sample", request.temperature, request.top_p)


class LocalBatchingProvider(Provider):
    """A provider whose model runs in this process; subclasses implement `_generate` (one batch, blocking)."""

    def _setup_batching(self, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmc-generate")
        #: how batching went: `generate` calls, requests served, largest batch
        self.batch_stats = {"generate_calls": 0, "requests": 0, "max_batch": 0}
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = weakref.WeakKeyDictionary()

    @abc.abstractmethod
    def _generate(self, requests: list[ChatRequest]) -> list[ChatResponse | ProviderError]:
        """Generate the replies of one batch (runs in the worker thread); a `ProviderError` in place of a reply
        fails that request alone (raising fails the whole batch)."""

    def _count_batch(self, size: int) -> None:
        self.batch_stats["generate_calls"] += 1
        self.batch_stats["requests"] += size
        self.batch_stats["max_batch"] = max(self.batch_stats["max_batch"], size)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.refuse_response_schema(request)
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        job = _Job(request, loop.create_future())
        queue.jobs.append(job)
        if queue.task is None or queue.task.done():
            queue.task = loop.create_task(self._drain(queue))
        try:
            response = await job.future
        except ProviderError:
            self.usage.failures += 1
            raise
        self.record(response)
        return response

    async def _drain(self, queue: _LoopQueue) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # requests issued in the same tick join the first batch
        while queue.jobs:
            batch = self._take_batch(queue.jobs)
            if not batch:
                continue
            try:
                responses = await loop.run_in_executor(self._executor, self._generate, [j.request for j in batch])
            except Exception as error:  # noqa: BLE001 - every waiting caller gets a ProviderError
                failure = ProviderError(f"{self.name} {self.model}: generation failed: {type(error).__name__}: {error}")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(failure)
                continue
            for job, response in zip(batch, responses):
                if job.future.done():  # the caller may have been cancelled meanwhile
                    continue
                if isinstance(response, ProviderError):
                    job.future.set_exception(response)
                else:
                    job.future.set_result(response)

    def _take_batch(self, jobs: deque[_Job]) -> list[_Job]:
        while jobs and jobs[0].future.done():  # cancelled while waiting
            jobs.popleft()
        if not jobs:
            return []
        key = batch_key(jobs[0].request, 0)
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        for index, job in enumerate(jobs):
            if len(batch) < self.max_batch_size and not job.future.done() and batch_key(job.request, index) == key:
                batch.append(job)
            elif not job.future.done():
                rest.append(job)
        jobs.clear()
        jobs.extend(rest)
        return batch
