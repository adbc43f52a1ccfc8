"""In-process generation with a `transformers` causal LM, batching the requests that arrive together.

`complete()` never blocks the event loop: requests queue up, and one background task per event loop takes
what is waiting (up to `max_batch_size` with the same sampling settings), left-pads it into one batch and
runs a single `generate` in a worker thread. Only one `generate` runs at a time per model.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base import ChatRequest, ChatResponse, Provider, ProviderError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# one lock per model object: two providers sharing a model still generate one batch at a time
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(model: Any) -> threading.Lock:
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


def _resolve_dtype(dtype: str | torch.dtype | None) -> Any:
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        import torch

        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
        return resolved
    return dtype


@dataclass
class _Job:
    request: ChatRequest
    future: asyncio.Future[ChatResponse]


@dataclass
class _LoopQueue:
    jobs: deque[_Job] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


def _batch_key(request: ChatRequest, index: int) -> tuple[Any, ...]:
    """Requests that may share one `generate`: all greedy ones; sampled ones with equal settings.

    A seeded sampled request runs alone, so its sample does not depend on what else was waiting.
    """
    if request.temperature <= 0:
        return ("greedy",)
    if request.seed is not None:
        return ("seeded", index)
    return ("sample", request.temperature, request.top_p)


class TransformersProvider(Provider):
    """A local Hugging Face causal LM with a chat template.

    Args:
        model_or_path: Hub repo id or local folder (offline use needs it in the local cache).
        gguf_file: load a GGUF file from that repo/folder instead (dequantized by transformers; needs `gguf`).
        device: torch device, e.g. "cpu" or "cuda".
        dtype: e.g. "bfloat16"; default: the checkpoint's.
        max_batch_size: requests generated together at most.

    Greedy decoding when `temperature == 0`, else sampling (`temperature`, `top_p`, `seed`). Token counts
    come from the tokenizer: prompt tokens, and completion tokens up to (not counting) end of turn.
    """

    name = "transformers"

    def __init__(self, model_or_path: str, *, gguf_file: str | None = None, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, max_batch_size: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_or_path, gguf_file=gguf_file)
        kwargs: dict[str, Any] = {"gguf_file": gguf_file}
        if dtype is not None:
            kwargs["dtype"] = _resolve_dtype(dtype)
        model = AutoModelForCausalLM.from_pretrained(model_or_path, **kwargs).to(device)
        name = f"{model_or_path}/{gguf_file}" if gguf_file else model_or_path
        self._setup(model, tokenizer, name=name, max_batch_size=max_batch_size)

    @classmethod
    def from_pretrained_objects(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                                name: str | None = None, max_batch_size: int = 8) -> TransformersProvider:
        """Wrap an already loaded model and tokenizer (e.g. a tiny random model in tests)."""
        provider = cls.__new__(cls)
        provider._setup(model, tokenizer, name=name or getattr(model, "name_or_path", "") or type(model).__name__,
                        max_batch_size=max_batch_size)
        return provider

    def _setup(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
               max_batch_size: int) -> None:
        Provider.__init__(self, name)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {name!r} has no chat template; set tokenizer.chat_template first")
        self.hf_model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self._stop_ids = self._end_of_turn_ids()
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(self._stop_ids)
        self._lock = _model_lock(model)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmc-generate")
        #: how batching went: `generate` calls, requests served, largest batch
        self.batch_stats = {"generate_calls": 0, "requests": 0, "max_batch": 0}
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = weakref.WeakKeyDictionary()

    def _end_of_turn_ids(self) -> set[int]:
        ids: set[int] = set()
        configured = getattr(getattr(self.hf_model, "generation_config", None), "eos_token_id", None)
        for value in (configured, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value is not None:
                ids.update(int(v) for v in value)
        if not ids:
            raise ValueError(f"{self.model!r}: neither the tokenizer nor the generation config names an EOS token")
        return ids

    def identity(self) -> dict[str, Any]:
        return {"provider": self.name, "model": self.model}

    # --- asyncio side ----------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.refuse_response_schema(request)  # no grammar-constrained decoding here (yet): say so, never ignore it
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
                if not job.future.done():  # the caller may have been cancelled meanwhile
                    job.future.set_result(response)

    def _take_batch(self, jobs: deque[_Job]) -> list[_Job]:
        while jobs and jobs[0].future.done():  # cancelled while waiting
            jobs.popleft()
        if not jobs:
            return []
        key = _batch_key(jobs[0].request, 0)
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        for index, job in enumerate(jobs):
            if len(batch) < self.max_batch_size and not job.future.done() and _batch_key(job.request, index) == key:
                batch.append(job)
            elif not job.future.done():
                rest.append(job)
        jobs.clear()
        jobs.extend(rest)
        return batch

    # --- worker thread ---------------------------------------------------------------------------
    def _prompt(self, request: ChatRequest) -> str:
        return self.tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)

    def _generate(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        import torch
        from transformers import GenerationConfig

        first = requests[0]
        encoded = self.tokenizer([self._prompt(r) for r in requests], return_tensors="pt", padding=True,
                                 padding_side="left", add_special_tokens=False).to(self.device)
        config = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in requests), do_sample=first.temperature > 0,
            pad_token_id=self._pad_id, eos_token_id=sorted(self._stop_ids),
        )
        if config.do_sample:
            config.temperature, config.top_p, config.top_k = first.temperature, first.top_p, 0
        with self._lock, torch.inference_mode():
            if config.do_sample and first.seed is not None:
                torch.manual_seed(first.seed)
            output = self.hf_model.generate(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], generation_config=config,
            )
        self.batch_stats["generate_calls"] += 1
        self.batch_stats["requests"] += len(requests)
        self.batch_stats["max_batch"] = max(self.batch_stats["max_batch"], len(requests))
        new_tokens = output[:, encoded["input_ids"].shape[1]:].tolist()
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        return [self._response(r, ids, int(n)) for r, ids, n in zip(requests, new_tokens, prompt_lengths)]

    def _response(self, request: ChatRequest, ids: list[int], prompt_tokens: int) -> ChatResponse:
        stop = next((i for i, token in enumerate(ids) if token in self._stop_ids), None)
        if stop is not None and stop < request.max_tokens:
            ids, finish_reason = ids[:stop], "stop"
        else:  # this request's own limit may be below the batch's
            ids, finish_reason = ids[: request.max_tokens], "length"
        return ChatResponse(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            finish_reason=finish_reason, input_tokens=prompt_tokens, output_tokens=len(ids), model=self.model,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, device={str(self.device)!r}, max_batch_size={self.max_batch_size})"
