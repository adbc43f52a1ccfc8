"""Per-row rules for one batched, left-padded transformers `generate`: a grammar or free text, and a token cap.

`generate` takes one `max_new_tokens` and one list of logits processors for the whole batch; `RowConstraints`
is that processor, with one entry per row:

* a row with a reply schema gets its own xgrammar `GrammarMatcher` (compiled from `grammar.schema_to_gbnf`, the
  same grammar llama.cpp enforces for the embedded model): before each step the matcher fills the row's bitmask
  of allowed tokens, the disallowed logits become -inf, and the chosen token is fed back at the next step. Once the
  grammar is complete only an end-of-turn token is allowed, so the reply ends there. Its cap is the grammar's
  bound (`fit_limits`), so it is never reached: the row ends itself.
* a free-text row is only capped: at its own `max_tokens` an end-of-turn token is forced, so a short request
  does not run on to the batch's longest cap (its reply is then reported as cut, `finish_reason="length"`).

xgrammar (`pip install --no-deps xgrammar apache-tvm-ffi`; see README, Setup) was chosen by measurement:
docs/providers.md, "Structured replies with --provider transformers".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

#: what `pip` needs for grammar-constrained decoding with transformers (xgrammar's own metadata asks for triton,
#: a GPU compiler of several hundred MB that the CPU path never imports)
INSTALL_HINT = "pip install --no-deps 'xgrammar>=0.2.8,<0.3' && pip install 'apache-tvm-ffi>=0.1.11'"


def grammar_runtime_problem() -> str | None:
    """Why grammar-constrained decoding cannot run here (xgrammar missing), or None."""
    if importlib.util.find_spec("xgrammar") is None or importlib.util.find_spec("tvm_ffi") is None:
        return f"it needs xgrammar, which is not installed: {INSTALL_HINT}"
    return None


class GrammarCompiler:
    """Compiles GBNF grammars for one tokenizer (built once per provider: ~0.1 s for a 49k vocabulary)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int]):
        problem = grammar_runtime_problem()
        if problem:
            raise ModuleNotFoundError(f"grammar-constrained decoding: {problem}")
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        # one worker thread: the machine's cores belong to the model; a per-pair schema is compiled in ~5 ms
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_limit_bytes=64 << 20)
        self.vocab_size = vocab_size

    def matcher(self, gbnf: str) -> Any:
        """A fresh matcher of `gbnf` (root rule `root`); raises ValueError when xgrammar cannot compile it."""
        import xgrammar

        try:
            compiled = self._compiler.compile_grammar(gbnf, root_rule_name="root")
        except RuntimeError as error:
            raise ValueError(f"xgrammar could not compile the grammar of the reply schema: {error}") from None
        return xgrammar.GrammarMatcher(compiled)


@dataclass
class Row:
    """One request in the batch: its cap in new tokens, and its grammar matcher (None: free text)."""

    cap: int
    matcher: Any = None


class RowConstraints:
    """A transformers logits processor applying each row's grammar and cap (see the module docstring)."""

    def __init__(self, rows: list[Row], *, prompt_width: int, stop_ids: list[int], vocab_size: int):
        self.rows = rows
        self.prompt_width = prompt_width
        self.stop_ids = stop_ids
        self.vocab_size = vocab_size
        self.ended = [False] * len(rows)  # the row produced an end-of-turn token (it is padded from then on)
        self._bitmask: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import xgrammar

        step = input_ids.shape[1] - self.prompt_width
        masked: list[int] = []
        for index, row in enumerate(self.rows):
            if self.ended[index]:
                continue
            if step > 0:
                token = int(input_ids[index, -1])
                if token in self.stop_ids:
                    self.ended[index] = True
                    continue
                if row.matcher is not None and not row.matcher.accept_token(token):
                    raise RuntimeError(f"row {index}: the grammar refused token {token}, which it had allowed")
            if row.matcher is None and step >= row.cap:
                scores[index, :] = float("-inf")
                scores[index, self.stop_ids[0]] = 0.0
            elif row.matcher is not None:
                if self._bitmask is None:
                    self._bitmask = xgrammar.allocate_token_bitmask(len(self.rows), self.vocab_size)
                row.matcher.fill_next_token_bitmask(self._bitmask, index)
                masked.append(index)
        if masked:  # xgrammar masks logits on CPU or CUDA (as its own transformers processor does: others via CPU)
            device = scores.device
            target = scores if device.type in ("cpu", "cuda") else scores.to("cpu")
            xgrammar.apply_token_bitmask_inplace(target, self._bitmask.to(target.device), vocab_size=self.vocab_size,
                                                 indices=masked)
            scores = target.to(device)
        return scores
