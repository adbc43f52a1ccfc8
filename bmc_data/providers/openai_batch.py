"""OpenAI Batch API (`--provider openai-batch`): half the price, results within 24 hours.

Requests are written as JSONL, uploaded through the files API (purpose `batch`), and run as batches on
`/v1/chat/completions`; output and error files are downloaded and every `custom_id` mapped back to its row.
Works with any OpenAI-compatible server that implements the files and batches endpoints. How rounds,
resume and resubmission work: `bmc_data.providers.batching`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .base import ChatRequest, ChatResponse, Pricing, ProviderError
from .batch_store import BatchRecord
from .batching import BatchingMixin, dumps_line
from .limits import ProviderLimits, api_error_message
from .openai_chat import OpenAIProvider

logger = logging.getLogger(__name__)

#: OpenAI's states after which a batch changes no more
_TERMINAL = frozenset({"completed", "expired", "cancelled", "failed"})
#: how far back `_find_by_token` looks through the account's batches
_FIND_LIMIT = 1000


class OpenAIBatchProvider(BatchingMixin, OpenAIProvider):
    """Chat completions through the OpenAI Batch API.

    Args:
        model, api_key, base_url, limits, token_limit_param, structured_output: as for `OpenAIProvider` (limits apply to the
            upload, create, poll and download calls).
        pricing: the model's list (online) price, USD per 1M tokens; costs are reported at
            `batch_discount` of it (OpenAI's batch price is 50%).
        cache_dir: where the batch ledger lives (default: the cache folder `bridge_dataset` uses).
        poll_interval_s: seconds between polls of pending batches.
        max_requests_per_batch / max_bytes_per_batch: shard limits (OpenAI: 50,000 requests, 200 MB).
        max_attempts: submissions of one request before it fails (2: resubmitted once).
        completion_window: the batch's completion window ("24h").
        progress: show a tqdm bar over requests with the batch states.
    """

    name = "openai-batch"
    api = "openai"

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 limits: ProviderLimits | None = None, pricing: Pricing | None = None,
                 token_limit_param: str | None = None, cache_dir: str | Path | None = None,
                 poll_interval_s: float = 30.0, max_requests_per_batch: int | None = None,
                 max_bytes_per_batch: int | None = None, max_attempts: int = 2, batch_discount: float = 0.5,
                 completion_window: str = "24h", progress: bool = True, structured_output: str = "response_format"):
        super().__init__(model, api_key=api_key, base_url=base_url, limits=limits, pricing=pricing,
                         token_limit_param=token_limit_param, structured_output=structured_output)
        self.completion_window = completion_window
        self._init_batching(cache_dir=cache_dir, poll_interval_s=poll_interval_s,
                            max_requests_per_batch=max_requests_per_batch, max_bytes_per_batch=max_bytes_per_batch,
                            max_attempts=max_attempts, batch_discount=batch_discount, progress=progress)

    def _batch_line(self, custom_id: str, request: ChatRequest) -> bytes:
        return dumps_line({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                           "body": self._params(request)})

    async def _submit(self, record: BatchRecord, lines: list[bytes]) -> str:
        client = self._client()
        data = b"\n".join(lines) + b"\n"
        uploaded = await self._api(client.files.create, file=(f"bmc-{record.token}.jsonl", data, "application/jsonl"),
                                   purpose="batch")
        assert self.store is not None
        self.store.update(record.local_id, input_file_id=uploaded.id)
        batch = await self._api(client.batches.create, input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window=self.completion_window, metadata={"bmc_token": record.token})
        return str(batch.id)

    async def _find_by_token(self, record: BatchRecord) -> str | None:
        client = self._client()
        seen = 0
        async for batch in client.batches.list(limit=100):
            if (getattr(batch, "metadata", None) or {}).get("bmc_token") == record.token:
                return str(batch.id)
            seen += 1
            if seen >= _FIND_LIMIT or (batch.created_at or 0) < record.created_at - 3600:
                break
        return None

    async def _poll(self, batch_id: str) -> tuple[str, bool, Any]:
        batch = await self._api(self._client().batches.retrieve, batch_id)
        return str(batch.status), batch.status in _TERMINAL, batch

    async def _cancel(self, batch_id: str) -> str:
        batch = await self._api(self._client().batches.cancel, batch_id)
        return str(batch.status)

    async def _download(self, file_id: str) -> str:
        content = await self._api(self._client().files.content, file_id)
        return content.text

    async def _collect(self, record: BatchRecord, remote: Any) -> tuple[dict[str, ChatResponse], dict[str, str]]:
        responses: dict[str, ChatResponse] = {}
        errors: dict[str, str] = {}
        if remote.status == "failed":  # the whole batch was refused (e.g. input validation)
            detail = "; ".join(str(getattr(e, "message", e)) for e in (getattr(remote.errors, "data", None) or []))
            reason = f"batch failed: {detail or 'no reason given'}"
            assert self.store is not None
            return {}, {cid: reason for cid in self.store.custom_ids(record.local_id)}
        malformed = 0
        for file_id in (remote.output_file_id, remote.error_file_id):
            if not file_id:
                continue
            for number, line in enumerate((await self._download(file_id)).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    cid = entry["custom_id"]
                except (ValueError, KeyError, TypeError):
                    malformed += 1
                    logger.warning("%s: batch %s file %s line %d is not a result line: %r", self.describe,
                                   record.batch_id, file_id, number, line[:120])
                    continue
                self._read_entry(entry, cid, responses, errors)
        if malformed:
            logger.warning("%s: batch %s: %d unreadable result line(s); their requests count as unanswered",
                           self.describe, record.batch_id, malformed)
        return responses, errors

    def _read_entry(self, entry: dict[str, Any], cid: str, responses: dict[str, ChatResponse],
                    errors: dict[str, str]) -> None:
        error = entry.get("error")
        response = entry.get("response") or {}
        if error:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else str(error)
            errors[cid] = f"{code}: {message}" if code else str(message)
            return
        status = response.get("status_code")
        if status != 200:
            errors[cid] = f"HTTP {status}: {api_error_message(response.get('body'), 'error')}"[:300]
            return
        try:
            responses[cid] = self._parse(response.get("body"))
        except ProviderError as parse_error:
            errors[cid] = str(parse_error)
