"""English stopwords, and the token ids of a tokenizer that spell one.

The official BMC code never marks a stopword token as a difference (it downloads NLTK's English list at import and
keeps the ids of stopwords that tokenize to a single token). We bundle our own list of ~200 common English function
words (`resources/stopwords_en.txt`, no download, no nltk) and scan the whole vocabulary instead: a token is a
stopword token when its text, with a leading 'Ġ' / '▁' / whitespace removed and lowercased, is in the list. That
covers "the", " the", "The" and " The" alike, a superset of the official ids (it also catches capitalised forms,
which the official code added by hand).

Decision: by default only stopwords are ignored, as in the official code. `include_punctuation=True` also ignores
tokens made only of punctuation and/or whitespace (",", ".\\n", "  "), which some users prefer for masks that
highlight content words only. Special tokens (BOS/EOS/PAD, chat markers) are never included.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["load_stopwords", "normalize_token_text", "stopword_token_ids"]

_PREFIX_MARKERS = ("Ġ", "▁", "Ċ", "ĉ")  # byte-level BPE space/newline/tab, sentencepiece space


@lru_cache(maxsize=1)
def load_stopwords() -> frozenset[str]:
    """The bundled English stopword list (lowercase)."""
    text = resources.files("bmc_data").joinpath("resources/stopwords_en.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def normalize_token_text(text: str) -> str:
    """Token text without leading space markers and surrounding whitespace, lowercased."""
    text = text.strip()
    while text.startswith(_PREFIX_MARKERS):
        text = text[1:].lstrip()
    return text.lower()


def _is_punctuation_or_space(text: str) -> bool:
    # `text` is already stripped: empty means the token was whitespace (or only space markers). U+FFFD is what a
    # lone byte of a multi-byte character decodes to: not punctuation.
    if "\ufffd" in text:
        return False
    return all(unicodedata.category(ch).startswith(("P", "S")) for ch in text)


def stopword_token_ids(
    tokenizer: Any,
    *,
    include_punctuation: bool = False,
    stopwords: frozenset[str] | set[str] | None = None,
) -> set[int]:
    """Ids of vocabulary tokens that are an English stopword (and, optionally, punctuation/whitespace).

    Args:
        tokenizer: A Hugging Face tokenizer (or a processor with a `.tokenizer`).
        include_punctuation: Also include tokens made only of punctuation/symbols/whitespace.
        stopwords: Word list to use instead of the bundled one (lowercase).
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    words = load_stopwords() if stopwords is None else frozenset(w.lower() for w in stopwords)
    special_ids = set(getattr(tok, "all_special_ids", []) or [])
    vocab = tok.get_vocab()
    ids = [i for i in sorted(set(vocab.values())) if i not in special_ids]
    # Decode each id on its own (done in Rust for fast tokenizers), so byte-level tokens such as 'Ġthe' read ' the';
    # the raw vocabulary string is the fallback for tokenizers without a decoder.
    decoded = tok.batch_decode([[i] for i in ids], skip_special_tokens=False)
    id_to_token = {i: t for t, i in vocab.items()}
    result: set[int] = set()
    for i, text in zip(ids, decoded):
        for candidate in (text, id_to_token.get(i, "")):
            norm = normalize_token_text(candidate)
            if norm in words or (include_punctuation and _is_punctuation_or_space(norm)):
                result.add(i)
                break
    return result
