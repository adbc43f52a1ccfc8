"""Round-based driving of a batch API behind the ordinary `Provider.complete` interface.

`bridge_dataset` runs every row as a coroutine that awaits `provider.complete(request)`. A batch provider
answers each call with a future and, once every runnable row is waiting (the event loop has gone quiet),
writes the waiting requests into batch jobs (sharded by the API's request and byte limits), polls them, and
resolves the futures from the results. Rows then continue exactly as online: a reply that does not parse
asks for a repair turn, which simply becomes a request of the next round's batch. So prompt building,
parsing, answer checks and the call cache are the online code, and results are those of online bridging.

Every batch is written to the ledger (`bmc_data.providers.batch_store`) before it is uploaded, so a rerun of the same
command finds the requests it already submitted, waits for those batches, and never submits them again.
A request that comes back without a reply (an error line, or unfinished in an expired or cancelled batch)
is resubmitted once (`max_attempts=2`), then fails with the reason.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bmc_data.errors import SystemicFailure

from .base import ChatRequest, ChatResponse, Pricing, ProviderError, Usage
from .batch_store import COLLECTED, PREPARING, TERMINAL_STATES, BatchRecord, BatchStore
from .limits import call_with_retries

logger = logging.getLogger(__name__)


@dataclass
class BatchUsage(Usage):
    """`Usage` plus the batch side: jobs by final state, requests submitted, and the price basis."""

    batches: dict[str, int] = field(default_factory=dict)
    batch_requests_submitted: int = 0
    resubmitted: int = 0
    price_basis: str = "batch"


@dataclass
class _Round:
    """The per-event-loop state of the driver."""

    waiters: dict[str, asyncio.Future[ChatResponse]] = field(default_factory=dict)
    requests: dict[str, ChatRequest] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)  # arrived, not yet triaged
    queue: dict[str, bytes] = field(default_factory=dict)  # to submit: custom_id -> JSONL line
    open: dict[int, BatchRecord] = field(default_factory=dict)  # batches with requests someone waits for
    arrived: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    bar: Any = None


class BatchingMixin(abc.ABC):
    """Turns a RemoteProvider into a batch provider; subclasses speak one batch API.

    Subclasses set `api` (ledger name) and implement `_batch_line`, `_submit`, `_find_by_token`, `_poll`,
    `_collect` and `_cancel`. They inherit `_client()`, `_sdk_errors`, `limits` and `_parse` from
    their online provider class.
    """

    api: str = ""
    #: the provider's own per-batch limits (requests, bytes of the upload)
    default_max_requests: int = 50_000
    default_max_bytes: int = 200 * 1024 * 1024

    def _init_batching(self, *, cache_dir: str | Path | None, poll_interval_s: float, max_requests_per_batch: int | None,
                       max_bytes_per_batch: int | None, max_attempts: int, batch_discount: float,
                       progress: bool) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not 0 < batch_discount <= 1:
            raise ValueError(f"batch_discount must be in (0, 1], got {batch_discount}")
        self.poll_interval_s = poll_interval_s
        self.max_requests_per_batch = max_requests_per_batch or self.default_max_requests
        self.max_bytes_per_batch = max_bytes_per_batch or self.default_max_bytes
        self.max_attempts = max_attempts
        self.batch_discount = batch_discount
        self.list_pricing = self.pricing  # type: ignore[attr-defined]
        # every cost this provider reports is at the batch price
        self.pricing = Pricing(self.pricing.input_per_million * batch_discount,  # type: ignore[attr-defined]
                               self.pricing.output_per_million * batch_discount)  # type: ignore[attr-defined]
        self.usage = BatchUsage(price_basis=f"batch ({batch_discount:.0%} of list price)")
        self.progress = progress
        self.store: BatchStore | None = BatchStore.in_cache_dir(cache_dir) if cache_dir is not None else None
        self._rounds: dict[asyncio.AbstractEventLoop, _Round] = {}

    #: rows `bridge_dataset` keeps in flight: every row of a run up to this many, so that all of them go out in
    #: the first round (sharded into batches) rather than waiting for earlier batches to finish
    rows_in_flight: int = 100_000

    def bind_store(self, cache_dir: str | Path | None) -> None:
        """Keep the batch ledger in `cache_dir` (what `bridge_dataset` calls with its cache folder)."""
        if self.store is not None:
            return
        if cache_dir is None:
            raise ValueError(f"the {self.name} provider keeps its batch ledger in the call cache, so that a rerun "  # type: ignore[attr-defined]
                             "resumes submitted batches: pass a cache_dir (not cache_dir=False)")
        self.store = BatchStore.in_cache_dir(cache_dir)

    @property
    def endpoint(self) -> str:
        return self.base_url  # type: ignore[attr-defined]

    def identity(self) -> dict[str, Any]:
        # the same model at the same endpoint answers alike online and in a batch: one call cache for both
        return {**super().identity(), "provider": self.api}  # type: ignore[misc]

    # --- what a subclass implements -----------------------------------------------------------------
    @abc.abstractmethod
    def _batch_line(self, custom_id: str, request: ChatRequest) -> bytes:
        """One request as the API's batch input entry, serialised (JSON, no newline)."""

    @abc.abstractmethod
    async def _submit(self, record: BatchRecord, lines: list[bytes]) -> str:
        """Upload and create the batch; return the provider's batch id (record the file id on the way)."""

    @abc.abstractmethod
    async def _find_by_token(self, record: BatchRecord) -> str | None:
        """The id of a batch created for `record` by a process killed before it recorded the id, if any."""

    @abc.abstractmethod
    async def _poll(self, batch_id: str) -> tuple[str, bool, Any]:
        """(remote state, terminal?, the provider's batch object)."""

    @abc.abstractmethod
    async def _collect(self, record: BatchRecord, remote: Any) -> tuple[dict[str, ChatResponse], dict[str, str]]:
        """Replies and per-request errors of a finished batch (requests absent from both are missing)."""

    @abc.abstractmethod
    async def _cancel(self, batch_id: str) -> str:
        """Ask the provider to cancel; return its new state."""

    # --- SDK calls with our error translation and retries -----------------------------------------------
    async def _api(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def attempt() -> Any:
            with self._sdk_errors():  # type: ignore[attr-defined]
                return await fn(*args, **kwargs)

        return await call_with_retries(attempt, limits=self.limits, usage=self.usage,  # type: ignore[attr-defined]
                                       describe=self.describe)  # type: ignore[attr-defined]

    # --- the Provider interface ---------------------------------------------------------------------
    def custom_id(self, request: ChatRequest) -> str:
        from .cache import cache_key

        return cache_key(self.identity(), "batch", request)  # type: ignore[attr-defined]

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if self.store is None:  # used outside bridge_dataset (make_pairs, scripts): the default cache folder
            from .cache import default_cache_dir

            self.bind_store(default_cache_dir())
        state = self._round()
        cid = self.custom_id(request)
        future = state.waiters.get(cid)
        if future is None:
            future = state.waiters[cid] = asyncio.get_running_loop().create_future()
            state.requests[cid] = request
            state.new.append(cid)
            state.arrived += 1
            if state.bar is not None:
                state.bar.total += 1
            state.wake.set()
            if state.pump is None or state.pump.done():
                state.pump = asyncio.create_task(self._pump(state), name=f"{self.name}-batches")  # type: ignore[attr-defined]
        return await asyncio.shield(future)

    def _round(self) -> _Round:
        loop = asyncio.get_running_loop()
        state = self._rounds.get(loop)
        if state is None:
            self._rounds = {k: v for k, v in self._rounds.items() if not k.is_closed()}
            state = self._rounds[loop] = _Round()
        return state

    # --- the driver -------------------------------------------------------------------------------
    async def _pump(self, state: _Round) -> None:
        state.bar = tqdm(total=len(state.waiters), desc=f"{self.name} requests", unit="req", disable=not self.progress,  # type: ignore[attr-defined]
                         dynamic_ncols=True)
        next_poll = 0.0
        try:
            while state.waiters:
                await self._settle(state)
                if state.new:
                    self._triage(state)
                if state.queue:
                    await self._submit_queue(state)
                if state.open and time.monotonic() >= next_poll:
                    await self._poll_open(state)
                    next_poll = time.monotonic() + self.poll_interval_s
                if not state.waiters or state.new or state.queue:
                    continue
                state.wake.clear()
                try:
                    await asyncio.wait_for(state.wake.wait(), max(0.0, next_poll - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
        except SystemicFailure as error:  # every waiting row gets it, so the run stops with one clear line
            for cid in list(state.waiters):
                self._fail(state, cid, error)
        except Exception as error:  # never leave rows waiting forever
            logger.exception("%s: batch driver stopped", self.describe)  # type: ignore[attr-defined]
            reason = ProviderError(f"{self.describe}: batch driver stopped: {type(error).__name__}: {error}; "  # type: ignore[attr-defined]
                                   "rerun the same command to resume the submitted batches")
            for cid in list(state.waiters):
                self._fail(state, cid, reason)
        finally:
            state.bar.close()

    async def _settle(self, state: _Round) -> None:
        """Let every runnable row reach its request before a round is cut (the loop goes quiet)."""
        stable, seen = 0, -1
        while stable < 3 and len(state.new) + len(state.queue) < self.max_requests_per_batch:
            await asyncio.sleep(0)
            stable, seen = (stable + 1, seen) if state.arrived == seen else (0, state.arrived)

    def _resolve(self, state: _Round, cid: str, response: ChatResponse) -> None:
        future = state.waiters.pop(cid, None)
        state.requests.pop(cid, None)
        if future is not None and not future.done():
            future.set_result(response)
        state.bar.update(1)

    def _fail(self, state: _Round, cid: str, error: BaseException) -> None:
        future = state.waiters.pop(cid, None)
        state.requests.pop(cid, None)
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # retrieved: the row may already be gone
        state.bar.update(1)

    def _triage(self, state: _Round) -> None:
        """Sort new requests: already answered, waiting in a submitted batch, out of attempts, or to submit."""
        assert self.store is not None
        new, state.new = state.new, []
        history = self.store.history(new, api=self.api, endpoint=self.endpoint)
        for cid in new:
            known = history.get(cid)
            if known is not None and known.response is not None:
                self.usage.cached_calls += 1  # paid for in an earlier run; not counted again
                self._resolve(state, cid, known.response)
            elif known is not None and known.open_batch is not None:
                if known.open_batch not in state.open:
                    record = self.store.get(known.open_batch)
                    assert record is not None
                    state.open[record.local_id] = record
            elif known is not None and len(known.errors) >= self.max_attempts:
                self._fail(state, cid, ProviderError(
                    f"{self.describe}: batch request failed {len(known.errors)} time(s): {known.errors[-1]}"))  # type: ignore[attr-defined]
            else:
                if known is not None and known.errors:
                    self.usage.resubmitted += 1
                state.queue[cid] = self._batch_line(cid, state.requests[cid])

    async def _submit_queue(self, state: _Round) -> None:
        assert self.store is not None
        queue, state.queue = state.queue, {}
        shard: list[tuple[str, bytes]] = []
        size = 0
        for cid, line in queue.items():
            if shard and (len(shard) >= self.max_requests_per_batch or size + len(line) + 1 > self.max_bytes_per_batch):
                await self._submit_shard(state, shard)
                shard, size = [], 0
            shard.append((cid, line))
            size += len(line) + 1
        if shard:
            await self._submit_shard(state, shard)

    async def _submit_shard(self, state: _Round, shard: list[tuple[str, bytes]]) -> None:
        assert self.store is not None
        cids = [cid for cid, _ in shard]
        record = self.store.record_submission(api=self.api, endpoint=self.endpoint, model=self.model, custom_ids=cids)  # type: ignore[attr-defined]
        try:
            batch_id = await self._submit(record, [line for _, line in shard])
        except SystemicFailure:  # a rejected key, a refused connection: nothing was created, and the run stops
            self.store.forget_unsent(record.local_id)
            raise
        except ProviderError as error:
            # nothing was created: the attempt counts (so a server that refuses every upload ends the run)
            logger.error("%s: could not submit a batch of %d request(s): %s", self.describe, len(cids), error)  # type: ignore[attr-defined]
            self.store.store_results(record.local_id, {}, {cid: f"submission failed: {error}" for cid in cids},
                                     detail=f"submission failed: {error}")
            state.new.extend(cids)
            return
        self.store.update(record.local_id, batch_id=batch_id, state="submitted")
        self.usage.batch_requests_submitted += len(cids)
        state.open[record.local_id] = self.store.get(record.local_id)  # type: ignore[assignment]
        logger.info("%s: submitted batch %s with %d request(s)", self.describe, batch_id, len(cids))  # type: ignore[attr-defined]

    async def _poll_open(self, state: _Round) -> None:
        assert self.store is not None
        states: Counter[str] = Counter()
        for local_id, record in list(state.open.items()):
            if record.batch_id is None:  # a run killed while submitting: did the batch get created?
                found = await self._find_by_token(record)
                if found is None:
                    logger.info("%s: batch %d was never created; submitting its requests now", self.describe, local_id)  # type: ignore[attr-defined]
                    self.store.forget_unsent(local_id)
                    del state.open[local_id]
                    state.new.extend(cid for cid in self.store.custom_ids(local_id) if cid in state.waiters)
                    continue
                self.store.update(local_id, batch_id=found, state="submitted")
                record = state.open[local_id] = self.store.get(local_id)  # type: ignore[assignment]
            try:
                remote_state, terminal, remote = await self._poll(record.batch_id)  # type: ignore[arg-type]
            except SystemicFailure:  # the batch stays in the ledger; the run stops, and a rerun resumes polling
                raise
            except ProviderError as error:
                # the batch itself stays in the ledger: a later run picks it up
                logger.error("%s: cannot poll batch %s: %s", self.describe, record.batch_id, error)  # type: ignore[attr-defined]
                for cid in self.store.custom_ids(local_id):
                    if cid in state.waiters:
                        self._fail(state, cid, ProviderError(f"{error}; the batch stays recorded: rerun to resume"))
                del state.open[local_id]
                continue
            if remote_state != record.remote_state:
                self.store.update(local_id, remote_state=remote_state, state=remote_state)
                record = state.open[local_id] = self.store.get(local_id)  # type: ignore[assignment]
            states[remote_state] += 1
            if terminal:
                await self._finish(state, record, remote)
                del state.open[local_id]
        state.bar.set_postfix({"batches": dict(states)} if states else {}, refresh=True)

    async def _finish(self, state: _Round, record: BatchRecord, remote: Any) -> None:
        assert self.store is not None
        responses, errors = await self._collect(record, remote)
        cids = self.store.custom_ids(record.local_id)
        final = record.remote_state or "ended"
        for cid in cids:
            if cid not in responses and cid not in errors:
                errors[cid] = f"no result (batch {final})"
        self.store.store_results(record.local_id, responses, errors,
                                 detail=f"{len(responses)} succeeded, {len(errors)} without a reply")
        self.usage.batches[final] = self.usage.batches.get(final, 0) + 1
        if errors:
            logger.warning("%s: batch %s %s: %d of %d request(s) without a reply (e.g. %s)", self.describe,  # type: ignore[attr-defined]
                           record.batch_id, final, len(errors), len(cids), next(iter(errors.values()))[:200])
        for cid, response in responses.items():
            if cid in state.waiters:
                self.record(response)  # type: ignore[attr-defined]
                self._resolve(state, cid, response)
        state.new.extend(cid for cid in errors if cid in state.waiters)

    # --- managing batches outside a run (the `batches` CLI) -------------------------------------------------
    async def cancel_batch(self, record: BatchRecord) -> str:
        if record.batch_id is None:
            return PREPARING
        try:
            new_state = await self._cancel(record.batch_id)
        finally:
            await self.aclose()  # type: ignore[attr-defined]
        if self.store is not None and record.state != COLLECTED:
            self.store.update(record.local_id, remote_state=new_state, state=new_state)
        return new_state

    async def refresh(self, record: BatchRecord) -> str:
        """The provider's current state of a recorded batch (stored in the ledger)."""
        if record.batch_id is None or record.state == COLLECTED or record.state in TERMINAL_STATES:
            return record.state
        remote_state, _, _ = await self._poll(record.batch_id)
        if self.store is not None:
            self.store.update(record.local_id, remote_state=remote_state, state=remote_state)
        return remote_state


def dumps_line(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
