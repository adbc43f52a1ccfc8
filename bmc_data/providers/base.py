"""The one small interface every LLM backend implements.

A provider turns a `ChatRequest` into a `ChatResponse`, asynchronously. Retries, rate limits and
timeouts live inside the provider (each backend knows its own error shapes); caching wraps any
provider from the outside (`bmc_data.providers.cache.CachedProvider`), so a cache hit never reaches it.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ResponseSchema:
    """A JSON Schema the reply must follow (structured outputs / grammar-constrained decoding).

    `name` is what the API calls it (OpenAI `json_schema.name`, the Anthropic tool name): [a-zA-Z0-9_-]{1,64}.
    The reply's `ChatResponse.text` is then the JSON object itself."""

    name: str
    schema: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "schema": self.schema}


#: how an OpenAI-compatible request carries a `ResponseSchema` (`OpenAIProvider(structured_output=...)`): OpenAI's
#: `response_format` (json_schema, strict), which vLLM, SGLang, llama.cpp's llama-server, LM Studio and Ollama
#: accept as well; vLLM's older `guided_json` field (removed in vLLM 0.12); or vLLM's `structured_outputs`
#: (vLLM 0.10.2 and later)
STRUCTURED_OUTPUT_FIELDS = ("response_format", "guided_json", "structured_outputs")


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]  # [{"role": ..., "content": ...}, ...]
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    #: constrain the reply to this JSON Schema; only providers with `supports_response_schema` accept it
    response_schema: ResponseSchema | None = None

    def cache_payload(self) -> dict[str, Any]:
        """Everything about the request that changes the answer (used in the cache key).

        Without a response schema the payload (and so every cache key) is what it was before the field existed."""
        payload = asdict(self)
        payload["messages"] = [dict(m) for m in self.messages]
        if self.response_schema is None:
            del payload["response_schema"]
        return payload


@dataclass(frozen=True)
class ChatResponse:
    text: str
    finish_reason: str  # "stop", "length", ... as normalised by the provider
    input_tokens: int = 0
    output_tokens: int = 0
    model: str = ""
    cached: bool = False  # True when served from the on-disk cache (no call was made, no cost)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Pricing:
    """USD per 1M tokens; zero for local models."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1e6


class ProviderError(RuntimeError):
    """A call that failed for good (after the provider's own retries). The row is marked failed."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass
class Usage:
    """Running token and cost accounting for one provider (cache hits are counted apart)."""

    calls: int = 0
    cached_calls: int = 0
    retries: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    by_finish_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Provider(abc.ABC):
    """An async chat-completion backend."""

    #: short backend name: "openai", "anthropic", "transformers"
    name: str = "provider"
    #: True when `complete` honours `ChatRequest.response_schema` (constrains the reply to it); a provider that
    #: cannot refuses such a request with `ProviderError` (`refuse_response_schema`) instead of ignoring it
    supports_response_schema: bool = False

    def __init__(self, model: str, *, pricing: Pricing | None = None):
        self.model = model
        self.pricing = pricing or Pricing()
        self.usage = Usage()

    @abc.abstractmethod
    async def complete(self, request: ChatRequest) -> ChatResponse:
        """One chat completion. Raises `ProviderError` when it cannot succeed."""

    @classmethod
    def schema_runtime_problem(cls) -> str | None:
        """Why this provider cannot enforce a schema on this machine although it supports one (e.g. an optional
        package is missing), or None. Checked before a model is loaded or a call is made."""
        return None

    def refuse_response_schema(self, request: ChatRequest) -> None:
        """Raise `ProviderError` when `request` asks for a response schema this provider cannot enforce."""
        if request.response_schema is not None and not self.supports_response_schema:
            raise ProviderError(f"{self.name} {self.model}: this provider cannot constrain a reply to a JSON schema "
                                "(reply format 'structured'); use a provider that can, or another reply format")

    def identity(self) -> dict[str, Any]:
        """What identifies the answering model in a cache key and in provenance columns.

        Never includes credentials.
        """
        return {"provider": self.name, "model": self.model}

    def record(self, response: ChatResponse) -> None:
        self.usage.calls += 1
        self.usage.input_tokens += response.input_tokens
        self.usage.output_tokens += response.output_tokens
        self.usage.cost_usd += self.pricing.cost(response.input_tokens, response.output_tokens)
        self.usage.by_finish_reason[response.finish_reason] = (
            self.usage.by_finish_reason.get(response.finish_reason, 0) + 1
        )

    async def aclose(self) -> None:  # pragma: no cover - backends with sessions override
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def schema_support_problem(provider: Provider | type[Provider], reply_format: str) -> str | None:
    """Why `provider` (an instance, or a class: checked before a local model is loaded) cannot give `reply_format`
    ("structured" needs a schema-constrained reply), or None."""
    if reply_format != "structured":
        return None
    if not provider.supports_response_schema:
        return (f"reply format 'structured' needs a provider that constrains replies to a JSON schema; the "
                f"{provider.name} provider cannot (use --reply-format full or edits with it)")
    problem = provider.schema_runtime_problem()
    return f"reply format 'structured' with the {provider.name} provider: {problem}" if problem else None
