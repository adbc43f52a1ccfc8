"""Anthropic Message Batches (`--provider anthropic-batch`): half the price, results within 24 hours.

Requests go to `POST /v1/messages/batches` (via the SDK's `messages.batches`), the batch is polled until
`ended`, and its results are streamed line by line: `succeeded` replies are mapped back to their rows;
`errored`, `canceled` and `expired` requests (and any missing from the results) are resubmitted once, then
fail with the reason. Rounds, resume and resubmission: `bmc_data.providers.batching`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .anthropic_messages import AnthropicProvider, finish_reason, reply_text
from .base import ChatRequest, ChatResponse, Pricing
from .batch_store import BatchRecord
from .batching import BatchingMixin, dumps_line
from .limits import ProviderLimits, api_error_message, malformed_error

logger = logging.getLogger(__name__)


class AnthropicBatchProvider(BatchingMixin, AnthropicProvider):
    """Claude through the Message Batches API.

    Args:
        model, api_key, base_url, limits, send_sampling_params: as for `AnthropicProvider`.
        pricing: the model's list price; costs are reported at `batch_discount` of it (Anthropic: 50%).
        cache_dir, poll_interval_s, max_requests_per_batch, max_bytes_per_batch, max_attempts, progress: as for
            `OpenAIBatchProvider` (Anthropic's limits: 100,000 requests or 256 MB per batch).
    """

    name = "anthropic-batch"
    api = "anthropic"
    default_max_requests = 100_000
    default_max_bytes = 256 * 1024 * 1024

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 limits: ProviderLimits | None = None, pricing: Pricing | None = None,
                 send_sampling_params: bool = False, cache_dir: str | Path | None = None,
                 poll_interval_s: float = 30.0, max_requests_per_batch: int | None = None,
                 max_bytes_per_batch: int | None = None, max_attempts: int = 2, batch_discount: float = 0.5,
                 progress: bool = True):
        super().__init__(model, api_key=api_key, base_url=base_url, limits=limits, pricing=pricing,
                         send_sampling_params=send_sampling_params)
        self._init_batching(cache_dir=cache_dir, poll_interval_s=poll_interval_s,
                            max_requests_per_batch=max_requests_per_batch, max_bytes_per_batch=max_bytes_per_batch,
                            max_attempts=max_attempts, batch_discount=batch_discount, progress=progress)

    def _batch_params(self, request: ChatRequest) -> dict[str, Any]:
        params = self._params(request)
        params.update(params.pop("extra_body", None) or {})  # a batch entry is plain JSON: no SDK extras
        return params

    def _batch_line(self, custom_id: str, request: ChatRequest) -> bytes:
        return dumps_line({"custom_id": custom_id, "params": self._batch_params(request)})

    async def _submit(self, record: BatchRecord, lines: list[bytes]) -> str:
        requests = [json.loads(line) for line in lines]
        batch = await self._api(self._client().messages.batches.create, requests=requests)
        return str(batch.id)

    async def _find_by_token(self, record: BatchRecord) -> str | None:
        # Message batches carry no metadata to find ours by: a run killed in the instant between the create
        # call and recording its id submits those requests again (the only window where that can happen)
        return None

    async def _poll(self, batch_id: str) -> tuple[str, bool, Any]:
        batch = await self._api(self._client().messages.batches.retrieve, batch_id)
        return str(batch.processing_status), batch.processing_status == "ended", batch

    async def _cancel(self, batch_id: str) -> str:
        batch = await self._api(self._client().messages.batches.cancel, batch_id)
        return str(batch.processing_status)

    async def _collect(self, record: BatchRecord, remote: Any) -> tuple[dict[str, ChatResponse], dict[str, str]]:
        responses: dict[str, ChatResponse] = {}
        errors: dict[str, str] = {}
        if not remote.results_url:
            return responses, errors
        client = self._client()

        async def fetch() -> None:
            # streamed and read line by line, raw (not the SDK's decoder): a malformed line loses only itself
            responses.clear()
            errors.clear()
            number = malformed = 0
            async with client.messages.batches.with_streaming_response.results(record.batch_id) as response:
                async for line in response.iter_lines():
                    number += 1
                    if line.strip() and not self._read_line(line, responses, errors):
                        malformed += 1
                        logger.warning("%s: batch %s results line %d is not a result: %r", self.describe,
                                       record.batch_id, number, line[:120])
            if malformed:
                logger.warning("%s: batch %s: %d unreadable result line(s); their requests count as unanswered",
                               self.describe, record.batch_id, malformed)

        await self._api(fetch)
        return responses, errors

    def _read_line(self, line: str, responses: dict[str, ChatResponse], errors: dict[str, str]) -> bool:
        """One results line into `responses` / `errors`; False when it is not a result line."""
        try:
            entry = json.loads(line)
            cid, result = entry["custom_id"], entry["result"]
            kind = result["type"]
        except (ValueError, KeyError, TypeError):
            return False
        if kind == "succeeded":
            try:
                responses[cid] = self._parse_message(result.get("message"))
            except Exception as error:  # noqa: BLE001 - recorded as this request's failure
                errors[cid] = str(error)
        elif kind == "errored":
            errors[cid] = f"errored: {api_error_message(result.get('error'), 'error')}"[:300]
        else:  # canceled / expired
            errors[cid] = f"{kind} (batch ended before this request ran)"
        return True

    def _parse_message(self, message: Any) -> ChatResponse:
        try:
            text = reply_text(message["content"])
            usage = message.get("usage") or {}
            return ChatResponse(text=text, finish_reason=finish_reason(message.get("stop_reason")),
                                input_tokens=int(usage.get("input_tokens") or 0),
                                output_tokens=int(usage.get("output_tokens") or 0),
                                model=str(message.get("model") or self.model))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise malformed_error(self.describe, f"no message content in {str(message)[:120]!r}") from error
