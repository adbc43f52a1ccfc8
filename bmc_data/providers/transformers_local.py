"""In-process generation with a `transformers` causal LM, batching the requests that arrive together.

Requests queue up (`local_batching.LocalBatchingProvider`); each batch is left-padded and run as one
`generate` in a worker thread. Only one `generate` runs at a time per model.

A request with a `response_schema` is decoded under the grammar of that schema (`grammar.schema_to_gbnf`,
enforced per row by xgrammar: `row_constraints`), within its own `max_tokens`: the grammar's length limits are
fitted to the cap first (`grammar.fit_limits`; the context window also caps it), so the reply is complete JSON
that follows the schema and is never cut. A schema that cannot fit or compile fails its own request only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import ChatRequest, ChatResponse, ProviderError
from .grammar import GrammarLimits, fit_limits, schema_to_gbnf
from .local_batching import LocalBatchingProvider, model_lock
from .row_constraints import GrammarCompiler, Row, RowConstraints, grammar_runtime_problem

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
class _Prepared:
    request: ChatRequest
    prompt: str
    row: Row


class TransformersProvider(LocalBatchingProvider):
    """A local Hugging Face causal LM with a chat template.

    Args:
        model_or_path: Hub repo id or local folder (offline use needs it in the local cache).
        gguf_file: load a GGUF file from that repo/folder instead (dequantized by transformers; needs `gguf`).
        device: torch device, e.g. "cpu" or "cuda".
        dtype: e.g. "bfloat16"; default: the checkpoint's.
        max_batch_size: requests generated together at most.
        grammar_limits: the most a reply schema's free strings and arrays may hold (fitted down to each
            request's `max_tokens`, see `grammar.fit_limits`).

    Greedy decoding when `temperature == 0`, else sampling (`temperature`, `top_p`, `seed`). Token counts
    come from the tokenizer: prompt tokens, and completion tokens up to (not counting) end of turn.
    """

    name = "transformers"
    supports_response_schema = True

    def __init__(self, model_or_path: str, *, gguf_file: str | None = None, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, max_batch_size: int = 8,
                 grammar_limits: GrammarLimits = GrammarLimits()):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_or_path, gguf_file=gguf_file)
        kwargs: dict[str, Any] = {"gguf_file": gguf_file}
        if dtype is not None:
            kwargs["dtype"] = _resolve_dtype(dtype)
        model = AutoModelForCausalLM.from_pretrained(model_or_path, **kwargs).to(device)
        name = f"{model_or_path}/{gguf_file}" if gguf_file else model_or_path
        self._setup(model, tokenizer, name=name, max_batch_size=max_batch_size, grammar_limits=grammar_limits)

    @classmethod
    def from_pretrained_objects(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                                name: str | None = None, max_batch_size: int = 8,
                                grammar_limits: GrammarLimits = GrammarLimits()) -> TransformersProvider:
        """Wrap an already loaded model and tokenizer (e.g. a tiny random model in tests)."""
        provider = cls.__new__(cls)
        provider._setup(model, tokenizer, name=name or getattr(model, "name_or_path", "") or type(model).__name__,
                        max_batch_size=max_batch_size, grammar_limits=grammar_limits)
        return provider

    @classmethod
    def schema_runtime_problem(cls) -> str | None:
        return grammar_runtime_problem()

    def _setup(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
               max_batch_size: int, grammar_limits: GrammarLimits) -> None:
        LocalBatchingProvider.__init__(self, name)
        self._setup_batching(max_batch_size)
        self.grammar_limits = grammar_limits
        self._compiler: GrammarCompiler | None = None
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {name!r} has no chat template; set tokenizer.chat_template first")
        self.hf_model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self._stop_ids = self._end_of_turn_ids()
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(self._stop_ids)
        self._lock = model_lock(model)

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
        # a reply schema is in the request's own cache payload; the limits bound structured replies
        return {"provider": self.name, "model": self.model, **self.grammar_limits.identity()}

    # --- worker thread ---------------------------------------------------------------------------
    def _prompt(self, request: ChatRequest) -> str:
        return self.tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)

    def _context_room(self, prompt: str) -> tuple[int, int | None]:
        """(prompt tokens, tokens the context window leaves for the reply; None: no known window)."""
        tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        window = getattr(self.hf_model.config, "max_position_embeddings", None)
        return tokens, (window - tokens if isinstance(window, int) else None)

    def _prepare(self, request: ChatRequest) -> _Prepared:
        """The request's prompt and row rules; `ProviderError` when its reply schema cannot be enforced."""
        prompt = self._prompt(request)
        if request.response_schema is None:
            return _Prepared(request, prompt, Row(cap=request.max_tokens))
        prompt_tokens, room = self._context_room(prompt)
        cap = request.max_tokens if room is None else min(request.max_tokens, room)
        schema = request.response_schema.schema
        where = f"{self.name} {self.model}: reply schema {request.response_schema.name!r}"
        try:
            limits = fit_limits(schema, self.grammar_limits, cap)
            if limits is None:
                least = schema_to_gbnf(schema, GrammarLimits(0, 1))[1]
                window = "" if room is None else \
                    f", the context leaves {max(room, 0)} after the {prompt_tokens}-token prompt"
                raise ProviderError(f"{where}: its shortest complete reply may need {least} tokens, more than the "
                                    f"cap of {cap} (max_tokens {request.max_tokens}{window}); raise max_tokens",
                                    retryable=False)
            gbnf, bound = schema_to_gbnf(schema, limits, unrolled_strings=True)
            if self._compiler is None:
                self._compiler = GrammarCompiler(self.tokenizer, self._vocab_size(), sorted(self._stop_ids))
            return _Prepared(request, prompt, Row(cap=bound, matcher=self._compiler.matcher(gbnf)))
        except (ValueError, ModuleNotFoundError) as error:  # outside the grammar's subset, refused, no xgrammar
            raise ProviderError(f"{where}: {error}", retryable=False) from None

    def _vocab_size(self) -> int:
        return int(self.hf_model.get_output_embeddings().weight.shape[0])

    def _generate(self, requests: list[ChatRequest]) -> list[ChatResponse | ProviderError]:
        prepared: list[_Prepared | ProviderError] = []
        for request in requests:  # a schema that cannot be enforced fails its own request only
            try:
                prepared.append(self._prepare(request))
            except ProviderError as error:
                prepared.append(error)
        rows = [p for p in prepared if isinstance(p, _Prepared)]
        responses = iter(self._run(rows) if rows else [])
        self._count_batch(len(requests))
        return [next(responses) if isinstance(p, _Prepared) else p for p in prepared]

    def _run(self, rows: list[_Prepared]) -> list[ChatResponse]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        first = rows[0].request
        encoded = self.tokenizer([r.prompt for r in rows], return_tensors="pt", padding=True,
                                 padding_side="left", add_special_tokens=False).to(self.device)
        width = encoded["input_ids"].shape[1]
        config = GenerationConfig(
            max_new_tokens=max(r.row.cap for r in rows), do_sample=first.temperature > 0,
            pad_token_id=self._pad_id, eos_token_id=sorted(self._stop_ids),
        )
        if config.do_sample:
            config.temperature, config.top_p, config.top_k = first.temperature, first.top_p, 0
        constraints = RowConstraints([r.row for r in rows], prompt_width=width, stop_ids=sorted(self._stop_ids),
                                     vocab_size=self._vocab_size())
        with self._lock, torch.inference_mode():
            if config.do_sample and first.seed is not None:
                torch.manual_seed(first.seed)
            output = self.hf_model.generate(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], generation_config=config,
                logits_processor=LogitsProcessorList([constraints]),
            )
        new_tokens = output[:, width:].tolist()
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        return [self._response(r, ids, int(n)) for r, ids, n in zip(rows, new_tokens, prompt_lengths)]

    def _response(self, prepared: _Prepared, ids: list[int], prompt_tokens: int) -> ChatResponse:
        cap, constrained = prepared.row.cap, prepared.row.matcher is not None
        stop = next((i for i, token in enumerate(ids) if token in self._stop_ids), None)
        # a free-text row's end of turn at its cap was forced there; a grammar's never is
        if stop is not None and (stop < cap or constrained):
            ids, finish_reason = ids[:stop], "stop"
        else:
            ids, finish_reason = ids[:cap], "length"
        return ChatResponse(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            finish_reason=finish_reason, input_tokens=prompt_tokens, output_tokens=len(ids), model=self.model,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, device={str(self.device)!r}, max_batch_size={self.max_batch_size})"
