"""OpenAI chat completions, and any server that speaks them (vLLM, llama.cpp, `transformers serve`, ...)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import httpx2
import openai

from bmc_data.errors import CredentialError
from bmc_data.redaction import check_api_key

from .base import ChatRequest, ChatResponse, Pricing
from .limits import ProviderLimits
from .remote import RemoteProvider, check_base_url
from .retry import malformed_error

OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Sent to OpenAI-compatible local servers that need no key (the SDK refuses an empty one).
NO_KEY = "sk-no-key-required"
#: What `chat.completions.create` sends: bearer auth only.
_POST_OPTIONS: Any = {"security": {"bearer_auth": True}}


def _is_official(base_url: str) -> bool:
    return urlparse(base_url).hostname == "api.openai.com"


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
    """

    name = "openai"
    sdk = openai
    sdk_client_class = openai.AsyncOpenAI
    sdk_base_error = openai.OpenAIError

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 limits: ProviderLimits | None = None, pricing: Pricing | None = None,
                 token_limit_param: str | None = None):
        super().__init__(model, limits=limits, pricing=pricing)
        url_source = "base_url=" if base_url else "OPENAI_BASE_URL" if os.environ.get("OPENAI_BASE_URL") else "the default URL"
        self.base_url = check_base_url(base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL, url_source).rstrip("/")
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
        return params

    async def _attempt(self, request: ChatRequest) -> ChatResponse:
        # `client.post` is what `chat.completions.create` calls, minus its two costly steps (~1.3 ms of CPU
        # a call, most of the SDK's overhead): re-walking our plain JSON body against the typed-dict schema
        # and building a `ChatCompletion` model we read three fields of. Headers, auth, timeouts and the
        # error types (APIStatusError, APIConnectionError, ...) are the SDK's own, as before.
        try:
            response = await self._client().post("/chat/completions", body=self._params(request),
                                                  cast_to=httpx2.Response, options=_POST_OPTIONS)
            body = response.json()
        except Exception as error:
            translated = self._translate_sdk_error(error)
            if translated is None:
                raise
            raise translated from error
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
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
            raise malformed_error(self.describe, f"no choices[0].message in {str(body)[:120]!r}") from error
        return ChatResponse(
            text=text,
            finish_reason=str(finish_reason),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=str(body.get("model") or self.model),
        )


