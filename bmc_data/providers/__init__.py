"""LLM backends for the Bridging Phase, all behind one async interface (`Provider.complete`).

    from bmc_data.providers import get_provider
    provider = get_provider("openai", "gpt-4o-mini")                                   # $OPENAI_API_KEY
    provider = get_provider("openai", "Qwen/Qwen2.5-7B-Instruct", base_url="http://localhost:8000/v1")
    provider = get_provider("anthropic", "claude-sonnet-4-5", max_concurrency=8)     # $ANTHROPIC_API_KEY
    provider = get_provider("openai-batch", "gpt-4o-mini")                           # Batch API, half price
    provider = get_provider("openai", "Qwen/Qwen2.5-7B-Instruct", base_url=["http://gpu1:8000/v1", "http://gpu2:8000/v1"])
    provider = get_provider()                                                        # embedded SmolLM2-135M

Backends are imported on first use, so `import bmc_data` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .base import (
    ChatRequest,
    ChatResponse,
    Pricing,
    Provider,
    ProviderError,
    ResponseSchema,
    Usage,
)
from .limits import ProviderLimits

PROVIDER_NAMES = ("openai", "anthropic", "transformers", "embedded", "openai-batch", "anthropic-batch")
#: batch APIs (half price, results within 24 h): the online provider's options plus the batch ones
_BATCH_CLASSES = {"openai-batch": "OpenAIBatchProvider", "anthropic-batch": "AnthropicBatchProvider"}

_LAZY = {
    "OpenAIProvider": "openai_chat",
    "AnthropicProvider": "anthropic_messages",
    "TransformersProvider": "transformers_local",
    "EmbeddedProvider": "embedded",
    "LlamaCppProvider": "llama_cpp_local",
    "load_embedded_model": "embedded",
    "RetryableError": "retry",
    "OpenAIBatchProvider": "openai_batch",
    "AnthropicBatchProvider": "anthropic_batch",
    "EndpointPool": "pool",
}

__all__ = [
    "ChatRequest", "ChatResponse", "Pricing", "Provider", "ProviderError", "ProviderLimits", "ResponseSchema", "Usage",
    "PROVIDER_NAMES", "get_provider", "provider_class", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


def _limits(kwargs: dict[str, Any]) -> ProviderLimits | None:
    """`limits=` (a ProviderLimits or dict), optionally overridden by loose fields like `max_concurrency=8`."""
    limits = kwargs.pop("limits", None)
    loose = {k: kwargs.pop(k) for k in list(kwargs) if k in ProviderLimits.model_fields}
    if isinstance(limits, dict):
        limits = ProviderLimits(**limits)
    if loose:
        limits = (limits or ProviderLimits()).model_copy(update=loose)
        limits = ProviderLimits(**limits.model_dump())  # validate the overrides
    return limits


def _pricing(value: Any) -> Pricing | None:
    if value is None or isinstance(value, Pricing):
        return value
    if isinstance(value, dict):
        return Pricing(**value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Pricing(float(value[0]), float(value[1]))
    raise TypeError(f"pricing must be a Pricing, a dict or (input, output) USD per 1M tokens; got {value!r}")


_CLASSES = {"openai": "OpenAIProvider", "anthropic": "AnthropicProvider", "transformers": "TransformersProvider",
            "embedded": "EmbeddedProvider", **_BATCH_CLASSES}


def provider_class(name: str | None) -> type[Provider]:
    """The class `get_provider(name)` builds (None: the embedded one), without building it."""
    name = (name or "embedded").lower()
    if name not in _CLASSES:
        raise ValueError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    return __getattr__(_CLASSES[name])


def get_provider(name: str | None = None, model: str | None = None, **kwargs: Any) -> Provider:
    """Build a provider by name: "openai", "anthropic", "transformers" or "embedded" (the default), or a batch
    API: "openai-batch" / "anthropic-batch" (also `poll_interval_s`, `cache_dir`, `max_requests_per_batch`, ...).

    Args:
        name: backend name; None means "embedded" (SmolLM2-135M-Instruct on CPU, no key, no network).
        model: model id (required for openai/anthropic; model id or path for transformers).
        **kwargs: passed to the backend: `api_key`, `base_url` (default from `$OPENAI_API_KEY`/`$OPENAI_BASE_URL`
            or `$ANTHROPIC_API_KEY`/`$ANTHROPIC_BASE_URL`), `pricing` (Pricing, dict or (in, out) USD per 1M
            tokens), `limits` (ProviderLimits or dict) or any single limit such as `max_concurrency=8`,
            `requests_per_minute=500`, `timeout_s=60`; for transformers `gguf_file`, `device`, `dtype`,
            `max_batch_size`.
    """
    name = (name or "embedded").lower()
    if name not in PROVIDER_NAMES:
        raise ValueError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    if name in ("openai", "anthropic", *_BATCH_CLASSES):
        if not model:
            raise ValueError(f"provider {name!r} needs a model, e.g. get_provider({name!r}, "
                             f"{'gpt-4o-mini' if name.startswith('openai') else 'claude-sonnet-4-5'!r})")
        # the backends read ${NAME}_API_KEY / ${NAME}_BASE_URL themselves (so errors name the variable)
        limits, pricing = _limits(kwargs), _pricing(kwargs.pop("pricing", None))
        if name == "openai" and isinstance(kwargs.get("base_url"), (list, tuple)):  # several: a pool of endpoints
            return __getattr__("EndpointPool").from_urls(list(kwargs.pop("base_url")), model, limits=limits,
                                                         pricing=pricing, **kwargs)
        cls = __getattr__(_BATCH_CLASSES.get(name) or ("OpenAIProvider" if name == "openai" else "AnthropicProvider"))
        return cls(model, limits=limits, pricing=pricing, **kwargs)
    if name == "transformers":
        if not model:
            raise ValueError("provider 'transformers' needs a model id or path, e.g. "
                             "get_provider('transformers', 'HuggingFaceTB/SmolLM2-360M-Instruct')")
        return __getattr__("TransformersProvider")(model, **kwargs)
    from .embedded import EMBEDDED_MODEL, EmbeddedProvider

    if model not in (None, "", EMBEDDED_MODEL):
        raise ValueError(f"the embedded provider has one model ({EMBEDDED_MODEL}); for another local model "
                         f"use get_provider('transformers', {model!r})")
    return EmbeddedProvider(**kwargs)


if TYPE_CHECKING:  # pragma: no cover
    from .anthropic_batch import AnthropicBatchProvider
    from .anthropic_messages import AnthropicProvider
    from .embedded import EmbeddedProvider, load_embedded_model
    from .llama_cpp_local import LlamaCppProvider
    from .openai_batch import OpenAIBatchProvider
    from .openai_chat import OpenAIProvider
    from .pool import EndpointPool
    from .retry import RetryableError
    from .transformers_local import TransformersProvider
