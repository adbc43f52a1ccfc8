"""OpenAI chat completions, and any server that speaks them (vLLM, llama.cpp, `transformers serve`, ...)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import httpx2
import openai

from bmc_data.errors import CredentialError
from bmc_data.redaction import check_api_key

from .base import (
    STRUCTURED_OUTPUT_FIELDS,
    ChatRequest,
    ChatResponse,
    Pricing,
    ProviderError,
    ResponseSchema,
)
from .limits import ProviderLimits
from .remote import RemoteProvider
from .retry import malformed_error

OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Sent to OpenAI-compatible local servers that need no key (the SDK refuses an empty one).
NO_KEY = "sk-no-key-required"
#: What `chat.completions.create` sends: bearer auth only.
_POST_OPTIONS: Any = {"security": {"bearer_auth": True}}


def _is_official(base_url: str) -> bool:
    return urlparse(base_url).hostname == "api.openai.com"


def structured_output_params(schema: ResponseSchema, field: str) -> dict[str, Any]:
    """The request-body fields that constrain the reply to `schema`, in the form `field` names."""
    if field == "response_format":
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": schema.name, "schema": schema.schema, "strict": True}}}
    if field == "guided_json":
        return {"guided_json": schema.schema}
    if field == "structured_outputs":
        return {"structured_outputs": {"json": schema.schema}}
    raise ValueError(f"structured_output must be one of {list(STRUCTURED_OUTPUT_FIELDS)}, got {field!r}")


class OpenAIProvider(RemoteProvider):
    """Chat completions through the official `openai` SDK, with our own limits and retries.

    Args:
        model: model id, e.g. "gpt-4o-mini", or the name a local server serves.
        api_key: default `$OPENAI_API_KEY`; for a local server without auth none is needed.
        base_url: default `$OPENAI_BASE_URL` or https://api.openai.com/v1; e.g. "http://localhost:8000/v1"
            for vLLM or llama.cpp.
        limits: concurrency, rate, timeout and retry limits (`ProviderLimits`).
        pricing: USD per 1M input/output tokens, for cost accounting (default: 0).
        token_limit_param: request field for `max_tokens`: "max_completion_tokens" (what OpenAI's reasoning
            models require) or "max_tokens" (what every compatible server accepts). Default: the former for
            api.openai.com, the latter elsewhere.
        structured_output: how a request's `response_schema` is sent: "response_format" (the default: OpenAI
            structured outputs, `strict: true`; vLLM, SGLang, llama-server, LM Studio and Ollama accept it too),
            "guided_json" (vLLM before 0.12) or "structured_outputs" (vLLM 0.10.2 and later). Only
            "response_format" is sent to api.openai.com, which refuses unknown fields.
    """

    name = "openai"
    sdk = openai
    sdk_client_class = openai.AsyncOpenAI
    sdk_base_error = openai.OpenAIError
    supports_response_schema = True

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 limits: ProviderLimits | None = None, pricing: Pricing | None = None,
                 token_limit_param: str | None = None, structured_output: str = "response_format"):
        super().__init__(model, limits=limits, pricing=pricing)
        url_source = "base_url=" if base_url else "OPENAI_BASE_URL" if os.environ.get("OPENAI_BASE_URL") else "the default URL"
        self._use_base_url(base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL, url_source)
        self.key_source = "api_key=" if api_key else "OPENAI_API_KEY"
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if _is_official(self.base_url):
                raise CredentialError(
                    "no OpenAI API key: pass api_key=... or set OPENAI_API_KEY (for a local OpenAI-compatible "
                    "server, pass base_url=... instead)"
                )
            api_key = NO_KEY
        else:
            check_api_key(api_key, self.key_source)  # registered as a secret; a stray \r or space is refused
        self._api_key = api_key
        if token_limit_param is None:
            token_limit_param = "max_completion_tokens" if _is_official(self.base_url) else "max_tokens"
        if token_limit_param not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(f"token_limit_param must be 'max_tokens' or 'max_completion_tokens', got {token_limit_param!r}")
        self.token_limit_param = token_limit_param
        if structured_output not in STRUCTURED_OUTPUT_FIELDS:
            raise ValueError(f"structured_output must be one of {list(STRUCTURED_OUTPUT_FIELDS)}, got {structured_output!r}")
        if structured_output != "response_format" and _is_official(self.base_url):
            raise ValueError(f"structured_output={structured_output!r} is a vLLM field; api.openai.com takes only "
                             "'response_format'")
        self.structured_output = structured_output

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),  # the SDK only serialises them
            self.token_limit_param: request.max_tokens,
            "temperature": request.temperature,
        }
        if request.top_p != 1.0:  # some models reject top_p next to temperature
            params["top_p"] = request.top_p
        if request.seed is not None:
            params["seed"] = request.seed
        if request.response_schema is not None:
            params.update(structured_output_params(request.response_schema, self.structured_output))
        return params

    async def _attempt(self, request: ChatRequest) -> ChatResponse:
        # `client.post` is what `chat.completions.create` calls, minus its two costly steps (~1.3 ms of CPU
        # a call, most of the SDK's overhead): re-walking our plain JSON body against the typed-dict schema
        # and building a `ChatCompletion` model we read three fields of. Headers, auth, timeouts and the
        # error types (APIStatusError, APIConnectionError, ...) are the SDK's own, as before.
        with self._sdk_errors():
            response = await self._client().post("/chat/completions", body=self._params(request),
                                                  cast_to=httpx2.Response, options=_POST_OPTIONS)
            body = response.json()
        return self._parse(body)

    def _parse(self, body: Any) -> ChatResponse:
        """A chat-completion JSON body (as a dict) -> ChatResponse; anything else is a malformed reply."""
        try:
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason") or "stop"
            usage = body.get("usage") or {}
            input_tokens = int(usage.get("prompt_tokens") or 0)
            output_tokens = int(usage.get("completion_tokens") or 0)
            if not isinstance(text, str):
                raise TypeError(f"message content is {type(text).__name__}, not text")
            refusal = choice["message"].get("refusal")
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
            raise malformed_error(self.describe, f"no choices[0].message in {str(body)[:120]!r}") from error
        if not text and isinstance(refusal, str) and refusal:  # structured outputs: a refusal instead of the JSON
            raise ProviderError(f"{self.describe}: the model refused: {self._safe(refusal)[:200]}")
        return ChatResponse(
            text=text,
            finish_reason=str(finish_reason),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=str(body.get("model") or self.model),
        )


