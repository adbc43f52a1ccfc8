"""A GGUF model run by llama.cpp (`llama-cpp-python`) in this process: batched decoding, grammar-constrained replies.

* **No dequantization**: the GGUF's own kernels (Q4_1 for the embedded model) run the model.
* **Batching**: the requests that arrive together (`local_batching`) are decoded in one llama.cpp context with
  one sequence each: prompts are prefilled packed together, then every step decodes one token of every live
  sequence in a single `llama_decode`.
* **Grammar** (`ChatRequest.response_schema`): the schema becomes a strict GBNF grammar (`grammar.schema_to_gbnf`)
  and each sequence gets its own grammar sampler, used "verify first" (what llama.cpp's own `common_sampler`
  does): the greedy token is checked against the grammar alone; when the grammar refuses it, the 64 best tokens
  are checked, and only when it refuses them all is the grammar run over the whole vocabulary (200-400 ms on a
  loaded 2-core CPU). The result is exactly greedy decoding under the grammar. llama-cpp-python's `create_completion(grammar=...)` runs it over the
  whole vocabulary at every step, 15-45x slower. Decoding stops when the grammar is complete (only the end of
  turn is then allowed); the token cap is the grammar's bound (see `grammar`), so such a reply is never cut.
* **Threads**: `default_threads()`; oversubscribed cores make llama.cpp's OpenMP threads spin-wait (a 2-core
  machine at load 8 fell from 45 to 1 token/s), so the default leaves busy cores alone.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path
from typing import Any

from bmc_data.errors import UsageError

from .base import ChatRequest, ChatResponse, ProviderError
from .grammar import GrammarLimits, schema_to_gbnf
from .local_batching import LocalBatchingProvider, model_lock

THREADS_ENV = "BMC_EMBEDDED_THREADS"
_DECODE_CHUNK = 512  # tokens per llama_decode during prefill (the context's n_batch)
_SHORTLIST = 64  # best tokens the grammar checks before it checks the whole vocabulary


def default_threads() -> int:
    """`$BMC_EMBEDDED_THREADS` if set, else the usable cores not already busy (1-minute load), at least 1."""
    configured = os.environ.get(THREADS_ENV)
    if configured:
        try:
            threads = int(configured)
        except ValueError:
            raise UsageError(f"{THREADS_ENV} must be a whole number of threads, got {configured!r}") from None
        if threads < 1:
            raise UsageError(f"{THREADS_ENV} must be at least 1, got {threads}")
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Sequence:
    """One request being decoded: its tokens, its sampler(s) and where it stands."""

    def __init__(self, provider: LlamaCppProvider, request: ChatRequest, index: int):
        import llama_cpp
        import numpy as np

        self.request, self.index = request, index
        self.prompt = provider.tokenize_prompt(request)
        self.out: list[int] = []
        self.finish_reason: str | None = None
        room = provider.n_ctx_per_seq - len(self.prompt)
        if room < 1:
            raise ProviderError(f"{provider.name} {provider.model}: the prompt has {len(self.prompt)} tokens, more "
                                f"than the context of {provider.n_ctx_per_seq}", retryable=False)
        self.grammar = None
        cap = request.max_tokens
        if request.response_schema is not None:
            gbnf, cap = schema_to_gbnf(request.response_schema.schema, provider.grammar_limits)
            self.grammar = llama_cpp.llama_sampler_init_grammar(provider.vocab, gbnf.encode(), b"root")
            if not self.grammar:
                raise ProviderError(f"{provider.name}: llama.cpp could not compile the grammar of the reply schema")
        self.cap = min(cap, room)
        self.chain = None
        penalize = request.response_schema is None and provider.repeat_penalty != 1.0
        if request.temperature > 0 or penalize:  # a grammar in a chain filters the whole vocabulary first
            chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
            if self.grammar is not None:
                llama_cpp.llama_sampler_chain_add(chain, self.grammar)
                self.grammar = None  # owned by the chain now
            if penalize:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_penalties(
                    provider.n_vocab, provider.repeat_last_n, provider.repeat_penalty, 0.0, 0.0))
            if request.temperature > 0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(request.top_p, 1))
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(request.temperature))
                seed = request.seed if request.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
            else:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            self.chain = chain
        self._one = np.zeros(1, provider.token_dtype)
        self._all = provider.all_tokens
        self.full_passes = 0

    def _filter(self, candidates: Any) -> None:
        import llama_cpp

        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            size=len(candidates), selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))

    def sample(self, ctx: Any, logits_index: int, n_vocab: int) -> int:
        import llama_cpp
        import numpy as np

        if self.chain is not None:
            return int(llama_cpp.llama_sampler_sample(self.chain, ctx, logits_index))
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, logits_index), shape=(n_vocab,))
        token = int(logits.argmax())
        if self.grammar is None:
            return token
        self._one[0] = (token, 0.0, 0.0)
        self._filter(self._one)
        if not np.isfinite(self._one[0]["logit"]):  # refused: the best token the grammar allows
            token = self._best_allowed(logits)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def _best_allowed(self, logits: Any) -> int:
        """The highest-logit token the grammar allows: among the top `_SHORTLIST` first (exact, since every
        token outside them scores lower), else among all tokens."""
        import numpy as np

        top = np.argpartition(-logits, _SHORTLIST)[:_SHORTLIST]
        shortlist = np.zeros(_SHORTLIST, self._all.dtype)
        shortlist["id"], shortlist["logit"] = top, logits[top]
        self._filter(shortlist)
        if np.isfinite(shortlist["logit"]).any():
            return int(shortlist["id"][int(shortlist["logit"].argmax())])
        self.full_passes += 1
        self._all["logit"] = logits
        self._filter(self._all)
        token = int(self._all["logit"].argmax())
        if not np.isfinite(self._all["logit"][token]):
            raise ProviderError("the grammar allows no token (llama.cpp grammar state is stuck)")
        return token

    def free(self) -> None:
        import llama_cpp

        for sampler in (self.grammar, self.chain):
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)
        self.grammar = self.chain = None


class LlamaCppProvider(LocalBatchingProvider):
    """A local GGUF chat model run by llama.cpp.

    Args:
        model_path: the .gguf file.
        name: the model's name in provenance (default: the file name).
        n_threads: CPU threads (default: `default_threads()`).
        max_batch_size: sequences decoded together at most.
        n_ctx_per_seq: context window of each sequence (prompt plus reply), in tokens.
        grammar_limits: bounds for free strings and arrays of a reply schema (see `grammar`).
        repeat_penalty: llama.cpp's repeat penalty over the last `repeat_last_n` tokens, for free-text requests
            only (1.0: off). A reply schema never gets it: copying y_l's text verbatim is the point of an edit.
    """

    name = "llama-cpp"
    supports_response_schema = True

    def __init__(self, model_path: str | Path, *, name: str | None = None, n_threads: int | None = None,
                 max_batch_size: int = 8, n_ctx_per_seq: int = 2048,
                 grammar_limits: GrammarLimits = GrammarLimits(), repeat_penalty: float = 1.0,
                 repeat_last_n: int = 64):
        try:
            import llama_cpp
        except ModuleNotFoundError:
            raise ModuleNotFoundError("the llama.cpp runtime needs `llama-cpp-python`: pip install 'bmc[embedded]' "
                                      "(see README, Setup)") from None
        import numpy as np

        path = Path(model_path)
        super().__init__(name or path.name)
        self._setup_batching(max_batch_size)
        self.model_path = path
        self.n_threads = n_threads or default_threads()
        self.n_ctx_per_seq = n_ctx_per_seq
        self.grammar_limits = grammar_limits
        self.repeat_penalty, self.repeat_last_n = repeat_penalty, repeat_last_n
        # the high-level object loads the weights and the tokenizer; decoding uses our own multi-sequence context
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=self.n_threads,
                                   n_threads_batch=self.n_threads, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.token_dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        self.all_tokens = np.zeros(self.n_vocab, self.token_dtype)
        self.all_tokens["id"] = np.arange(self.n_vocab, dtype=np.int32)
        self._chat = self._chat_formatter()
        self._lock = model_lock(self.llm)
        self._ctx: Any = None
        self._batch: Any = None
        self.grammar_full_passes = 0
        self._sha256: str | None = None

    def _chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{self.model_path} has no chat template (tokenizer.chat_template) in its metadata")
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode(errors="replace")
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token="")

    def tokenize_prompt(self, request: ChatRequest) -> list[int]:
        prompt = self._chat(messages=[dict(m) for m in request.messages]).prompt
        return self.llm.tokenize(prompt.encode(), add_bos=False, special=True)

    def identity(self) -> dict[str, Any]:
        import llama_cpp

        if self._sha256 is None:  # read once: the file is ~100 MB
            self._sha256 = file_sha256(self.model_path)
        identity = {"provider": self.name, "model": self.model, "runtime": f"llama-cpp-python {llama_cpp.__version__}",
                    "model_sha256": self._sha256}
        if self.repeat_penalty != 1.0:  # changes free-text replies: part of the cache key and provenance
            identity["repeat_penalty"] = f"{self.repeat_penalty}/{self.repeat_last_n}"
        return {**identity, **self.grammar_limits.identity()}  # the limits bound structured replies: likewise

    # --- worker thread ---------------------------------------------------------------------------
    def _context(self) -> Any:
        import llama_cpp

        if self._ctx is None:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = self.n_ctx_per_seq * self.max_batch_size
            params.n_batch = params.n_ubatch = _DECODE_CHUNK
            params.n_seq_max = self.max_batch_size
            params.n_threads = params.n_threads_batch = self.n_threads
            self._ctx = llama_cpp.llama_init_from_model(self.llm.model, params)
            if not self._ctx:
                raise ProviderError(f"{self.name} {self.model}: llama.cpp could not create a context")
            self._batch = llama_cpp.llama_batch_init(max(_DECODE_CHUNK, self.max_batch_size), 0, self.max_batch_size)
        else:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        return self._ctx

    def _decode(self, ctx: Any, items: list[tuple[int, int, int, bool]]) -> None:
        """One `llama_decode` of (token, position, sequence, wants logits) items."""
        import llama_cpp

        batch = self._batch
        batch.n_tokens = len(items)
        for k, (token, pos, seq, logits) in enumerate(items):
            batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = token, pos, 1, logits
            batch.seq_id[k][0] = seq
        code = llama_cpp.llama_decode(ctx, batch)
        if code != 0:
            raise ProviderError(f"{self.name} {self.model}: llama_decode failed with code {code}")

    def _generate(self, requests: list[ChatRequest]) -> list[ChatResponse | ProviderError]:
        prepared: list[_Sequence | ProviderError] = []
        try:
            for request in requests:  # a prompt too long or a schema refused fails its own request only
                try:
                    prepared.append(_Sequence(self, request, len(prepared)))
                except (ProviderError, ValueError) as error:
                    prepared.append(error if isinstance(error, ProviderError) else ProviderError(
                        f"{self.name} {self.model}: {error}"))
            sequences = [s for s in prepared if isinstance(s, _Sequence)]
            for index, seq in enumerate(sequences):
                seq.index = index  # llama.cpp sequence ids are 0..n-1
            if sequences:
                with self._lock:
                    self._run(sequences)
            self._count_batch(len(requests))
            self.grammar_full_passes += sum(s.full_passes for s in sequences)
            return [self._response(s) if isinstance(s, _Sequence) else s for s in prepared]
        finally:
            for seq in prepared:
                if isinstance(seq, _Sequence):
                    seq.free()

    def _run(self, sequences: list[_Sequence]) -> None:
        import llama_cpp

        ctx = self._context()
        # prefill: every prompt token but the last, packed across sequences, without logits; then the last
        # token of every prompt in one batch with logits (a later decode would overwrite earlier logits)
        pending = [(t, p, s.index, False) for s in sequences for p, t in enumerate(s.prompt[:-1])]
        for offset in range(0, len(pending), _DECODE_CHUNK):
            self._decode(ctx, pending[offset:offset + _DECODE_CHUNK])
        self._decode(ctx, [(s.prompt[-1], len(s.prompt) - 1, s.index, True) for s in sequences])
        live = list(sequences)
        while live:
            step: list[tuple[int, int, int, bool]] = []
            still: list[_Sequence] = []
            for row, seq in enumerate(live):
                token = seq.sample(ctx, row, self.n_vocab)
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    seq.finish_reason = "stop"
                    continue
                seq.out.append(token)
                if len(seq.out) >= seq.cap:
                    seq.finish_reason = "length"
                    continue
                step.append((token, len(seq.prompt) + len(seq.out) - 1, seq.index, True))
                still.append(seq)
            live = still
            if step:
                self._decode(ctx, step)

    def _response(self, seq: _Sequence) -> ChatResponse:
        text = self.llm.detokenize(seq.out).decode("utf-8", errors="replace")
        return ChatResponse(text=text, finish_reason=seq.finish_reason or "length", input_tokens=len(seq.prompt),
                            output_tokens=len(seq.out), model=self.model)

    def close(self) -> None:
        """Free the llama.cpp context and model now (otherwise at garbage collection, which at interpreter exit
        can run after llama-cpp-python's own module teardown and print an ignored exception)."""
        import llama_cpp

        with self._lock:
            if self._ctx is not None:
                llama_cpp.llama_batch_free(self._batch)
                llama_cpp.llama_free(self._ctx)
                self._ctx = self._batch = None
            self.llm.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self.model!r}, n_threads={self.n_threads}, "
                f"max_batch_size={self.max_batch_size})")
