"""Anthropic Messages API (Claude), through the official `anthropic` SDK."""

from __future__ import annotations

import json
import os
from typing import Any

import anthropic

from bmc_data.errors import CredentialError
from bmc_data.redaction import check_api_key

from .base import ChatRequest, ChatResponse, Pricing, ProviderError, ResponseSchema
from .limits import ProviderLimits
from .remote import RemoteProvider
from .retry import malformed_error

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
#: stop_reason -> the OpenAI-style finish_reason every provider reports. bmc sends a tool only to have the reply
#: written as its input (a response schema), so a tool call is the whole reply: "stop"
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                   "model_context_window_exceeded": "length", "refusal": "content_filter", "tool_use": "stop"}


def _field(block: Any, name: str) -> Any:
    """A content block's field, whether the block is the SDK's object or plain JSON (batch results)."""
    return block.get(name) if isinstance(block, dict) else getattr(block, name, None)


def reply_text(content: Any) -> str:
    """The reply in a message's content blocks: the input of its tool call as JSON when there is one (bmc sends
    a tool only to force a response schema), else the joined text blocks."""
    for block in content:
        if _field(block, "type") == "tool_use":
            return json.dumps(_field(block, "input"), ensure_ascii=False)
    return "".join(_field(block, "text") for block in content if _field(block, "type") == "text")


def finish_reason(stop_reason: Any) -> str:
    """Anthropic's stop_reason in OpenAI's words."""
    return _FINISH_REASONS.get(stop_reason, str(stop_reason or "stop"))


def structured_output_params(schema: ResponseSchema) -> dict[str, Any]:
    """Tool use with the schema as the tool's input schema, the model made to call it: its input is the reply."""
    return {"tools": [{"name": schema.name, "description": "Submit your reply.", "input_schema": schema.schema}],
            "tool_choice": {"type": "tool", "name": schema.name}}


def split_system(messages: tuple[dict[str, str], ...] | list[dict[str, str]]) -> tuple[str | None, list[dict[str, str]]]:
    """Anthropic takes system text as a parameter: pull system turns out (joined), keep the rest in order."""
    system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    rest = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] not in ("system", "developer")]
    return ("\n\n".join(system) if system else None), rest


class AnthropicProvider(RemoteProvider):
    """Claude through the Messages API, with our own limits and retries (529 "overloaded" is retried).

    Args:
        model: e.g. "claude-sonnet-4-5".
        api_key: default `$ANTHROPIC_API_KEY`.
        base_url: default `$ANTHROPIC_BASE_URL` or https://api.anthropic.com.
        limits, pricing: as for `OpenAIProvider`.
        send_sampling_params: also send `temperature` (and `top_p` when not 1) in the request body. The
            installed SDK no longer types them and current Claude models fix their own sampling, so by default
            they are not sent; turn this on for older models or compatible servers that honour them.
    """

    name = "anthropic"
    sdk = anthropic
    sdk_client_class = anthropic.AsyncAnthropic
    sdk_base_error = anthropic.AnthropicError
    supports_response_schema = True

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 limits: ProviderLimits | None = None, pricing: Pricing | None = None,
                 send_sampling_params: bool = False):
        super().__init__(model, limits=limits, pricing=pricing)
        self.send_sampling_params = send_sampling_params
        url_source = "base_url=" if base_url else "ANTHROPIC_BASE_URL" if os.environ.get("ANTHROPIC_BASE_URL") else "the default URL"
        self._use_base_url(base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL, url_source)
        self.key_source = "api_key=" if api_key else "ANTHROPIC_API_KEY"
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise CredentialError("no Anthropic API key: pass api_key=... or set ANTHROPIC_API_KEY")
        self._api_key = check_api_key(api_key, self.key_source)

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        system, messages = split_system(request.messages)
        if not messages:
            raise ProviderError(f"{self.describe}: the request has only system messages")
        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
        }
        if system is not None:
            params["system"] = system
        if request.response_schema is not None:
            params.update(structured_output_params(request.response_schema))
        if self.send_sampling_params:
            sampling: dict[str, float] = {"temperature": request.temperature}
            if request.top_p != 1.0:  # Claude models reject temperature and top_p together
                sampling["top_p"] = request.top_p
            params["extra_body"] = sampling
        return params  # the Messages API has no seed

    async def _attempt(self, request: ChatRequest) -> ChatResponse:
        params = self._params(request)
        with self._sdk_errors():
            message = await self._client().messages.create(**params)
        return self._parse(message)

    def _parse(self, message: Any) -> ChatResponse:
        try:
            text = reply_text(message.content)
            stop_reason = message.stop_reason
        except (AttributeError, TypeError) as error:
            raise malformed_error(self.describe, f"no content blocks in {str(message)[:120]!r}") from error
        usage = getattr(message, "usage", None)
        return ChatResponse(
            text=text,
            finish_reason=finish_reason(stop_reason),
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            model=str(getattr(message, "model", "") or self.model),
        )


