"""TRL-identical tokenization, stopword ids and `add_diff_masks` on real datasets objects."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from bmc_data.pairs.schema import (
    CHOSEN_DIFF_MASK,
    MASK_TOKENIZER,
    MASK_TOKENIZER_HASH,
    REJECTED_DIFF_MASK,
    STATUS,
)
from bmc_data.tokens import tokenization
from bmc_data.tokens.diff import token_diff_masks
from bmc_data.tokens.masks import add_diff_masks, check_masks, masks_fit
from bmc_data.tokens.stopwords import load_stopwords, stopword_token_ids
from bmc_data.tokens.tokenization import (
    _batch_encoder,
    tokenize_pair,
    tokenize_pairs_batched,
    tokenizer_fingerprint,
    tokenizer_name,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FALLBACK_TEXT = [
    "The answer is bedroom because candles are lit where one sleeps.",
    "Stress is an outcome of having a lot of things on your plate.",
    "A person might see a bloody mess at the scene of a brutal killing.",
] * 20


def build_tiny_tokenizer(texts: list[str], vocab_size: int = 800) -> PreTrainedTokenizerFast:
    """A byte-level BPE like Llama-3/SmolLM2 (merges can cross the prompt/completion boundary), built offline."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def qa_rows():
    path = SHARED_DATA / "qa" / "ecqa-train.jsonl"
    if not path.exists():
        pytest.skip("../shared/data is not available")
    return [json.loads(line) for line in path.read_text().splitlines()[:300]]


@pytest.fixture(scope="module")
def tokenizer(qa_rows):
    return build_tiny_tokenizer([r["problem"] + "\n" + r["solution"] for r in qa_rows] + FALLBACK_TEXT)


def _edit(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(words))
        op = rng.choice("isd")
        if op == "i":
            words.insert(pos, rng.choice(["indeed", "clearly", "not", "the"]))
        elif op == "s":
            words[pos] = rng.choice(["wrong", "right", "maybe"])
        elif len(words) > 1:
            del words[pos]
    return " ".join(words)


def string_rows(qa_rows, n: int = 24) -> dict[str, list]:
    rng = random.Random(0)
    rows = qa_rows[:n]
    prompts = [r["problem"] + "\nAnswer:" for r in rows]
    rejected = [" " + r["solution"] for r in rows]
    chosen = [_edit(r, rng) for r in rejected]
    chosen[0] = chosen[0] + "<|im_end|>"  # already ends with EOS: TRL does not add a second one
    # trailing space + completion without one: " Word" merges across the boundary, so the tokenized prompt is not a
    # prefix of prompt+completion and TRL's common-prefix rule decides where the completion starts
    prompts[1] = prompts[1] + " "
    chosen[1], rejected[1] = "the " + chosen[1].lstrip(), "the " + rejected[1].lstrip()
    return {"prompt": prompts, "chosen": chosen, "rejected": rejected}


def conversational_rows(qa_rows, n: int = 24) -> dict[str, list]:
    rng = random.Random(1)
    rows = qa_rows[:n]
    prompts = [[{"role": "user", "content": r["problem"]}] for r in rows]
    prompts[0] = [{"role": "system", "content": "Be brief."}, *prompts[0]]
    prompts[1] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": rows[1]["problem"]},
    ]
    rejected = [[{"role": "assistant", "content": r["solution"]}] for r in rows]
    chosen = [[{"role": "assistant", "content": _edit(r["solution"], rng)}] for r in rows]
    return {"prompt": prompts, "chosen": chosen, "rejected": rejected}


def trl_prepared(dataset: Dataset, tokenizer, tmp_path) -> Dataset:
    """Build a real DPOTrainer (tiny random Llama + reference) and return its prepared train_dataset."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
    )
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to=[], use_cpu=True, max_length=None)
    trainer = DPOTrainer(
        model=LlamaForCausalLM(config), ref_model=LlamaForCausalLM(config), args=args,
        train_dataset=dataset, processing_class=tokenizer,
    )
    return trainer.train_dataset


@pytest.mark.parametrize("layout", ["string", "conversational"])
def test_tokenize_pair_equals_dpo_trainer(layout, qa_rows, tokenizer, tmp_path):
    data = string_rows(qa_rows) if layout == "string" else conversational_rows(qa_rows)
    prepared = trl_prepared(Dataset.from_dict(data), tokenizer, tmp_path)
    assert len(prepared) == len(data["prompt"])
    batched = tokenize_pairs_batched(tokenizer, data["prompt"], data["chosen"], data["rejected"])
    for i in range(len(prepared)):
        ours = tokenize_pair(tokenizer, data["prompt"][i], data["chosen"][i], data["rejected"][i])
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert ours[key] == prepared[i][key], (layout, i, key)
            assert batched[i][key] == prepared[i][key], (layout, i, key, "batched")
    if layout == "string":
        assert len(prepared[1]["prompt_ids"]) < len(tokenizer(data["prompt"][1])["input_ids"])  # boundary merge
        eos = tokenizer.eos_token_id
        first = tokenize_pair(tokenizer, data["prompt"][0], data["chosen"][0], data["rejected"][0])
        assert first["chosen_ids"][-1] == eos and first["chosen_ids"][-2] != eos  # EOS not doubled
        # and add_diff_masks gives exactly one mask entry per trainer token
        masked = add_diff_masks(Dataset.from_dict(data), tokenizer)
        for i in range(len(prepared)):
            assert len(masked[i][CHOSEN_DIFF_MASK]) == len(prepared[i]["chosen_ids"])
            assert len(masked[i][REJECTED_DIFF_MASK]) == len(prepared[i]["rejected_ids"])


EDGE_TEXTS = [
    "Emoji 🙂🚀 and ünïcödé, 数学 — dashes",
    " leading space",
    "trailing space ",
    "  ",
    "\n",
    "\n\nDouble newline start",
    "ends with EOS<|im_end|>",
    "<|im_end|>",
    "mid <|im_start|> special token",
    "x",
    "tabs\tand\r\nCRLF",
]


def edge_string_rows(qa_rows, n: int = 120, seed: int = 2) -> dict[str, list]:
    """Many plain-text rows: QA text with random edits, prompts whose end merges with the completion start,
    completions already ending with EOS, unicode/emoji and whitespace-only texts."""
    rng = random.Random(seed)
    prompts, chosen, rejected = [], [], []
    for k in range(n):
        row = qa_rows[rng.randrange(len(qa_rows))]
        prompt = row["problem"] + rng.choice(["\nAnswer:", "\n\n", " ", "", ":", "\n"])
        base = rng.choice([" ", "", "\n"]) + row["solution"]
        if k % 3 == 0:
            base = base + " " + rng.choice(EDGE_TEXTS)
        if k % 5 == 0:
            base = rng.choice(EDGE_TEXTS)
        other = _edit(base, rng) if base.strip() else base + rng.choice(EDGE_TEXTS)
        if k % 7 == 0:
            other = other + "<|im_end|>"
        if k % 11 == 0:
            prompt = rng.choice(EDGE_TEXTS)
        prompts.append(prompt)
        chosen.append(other)
        rejected.append(base)
    return {"prompt": prompts, "chosen": chosen, "rejected": rejected}


def edge_conversational_rows(qa_rows, n: int = 60, seed: int = 3) -> dict[str, list]:
    rng = random.Random(seed)
    prompts, chosen, rejected = [], [], []
    for k in range(n):
        row = qa_rows[rng.randrange(len(qa_rows))]
        prompt = [{"role": "user", "content": row["problem"] + rng.choice(["", " ", "\n", " 🙂"])}]
        if k % 4 == 0:
            prompt = [{"role": "system", "content": rng.choice(EDGE_TEXTS)}, *prompt]
        if k % 6 == 0:
            prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, *prompt]
        base = row["solution"] if k % 5 else rng.choice(EDGE_TEXTS)
        other = _edit(base, rng) if base.strip() else base + "!"
        # plain-string completions next to a chat prompt are one assistant message, as in tokenize_pair
        if k % 2:
            chosen.append([{"role": "assistant", "content": other}])
            rejected.append([{"role": "assistant", "content": base}])
        else:
            chosen.append(other)
            rejected.append(base)
        prompts.append(prompt)
    return {"prompt": prompts, "chosen": chosen, "rejected": rejected}


def assert_batched_equals_rowwise(tokenizer, data: dict[str, list], monkeypatch=None, **kwargs) -> list[dict]:
    if monkeypatch is not None:  # every row must take the batched path: the row-by-row reference is not called
        def row_by_row(*args, **kw):
            raise AssertionError("tokenize_pairs_batched fell back to tokenize_pair")

        monkeypatch.setattr(tokenization, "tokenize_pair", row_by_row)
    batched = tokenize_pairs_batched(tokenizer, data["prompt"], data["chosen"], data["rejected"], **kwargs)
    if monkeypatch is not None:
        monkeypatch.undo()
    assert len(batched) == len(data["prompt"])
    for i, ours in enumerate(batched):
        ref = tokenize_pair(
            tokenizer,
            data["prompt"][i],
            data["chosen"][i],
            data["rejected"][i],
            **{key: values[i] for key, values in kwargs.items()},
        )
        assert ours == ref, (i, data["prompt"][i], data["chosen"][i])
    return batched


@pytest.fixture(scope="module")
def bos_tokenizer(tokenizer, tmp_path_factory):
    """Like Llama-3: `tokenizer(text)` prepends BOS, and the chat template writes it itself (so
    `apply_chat_template` must encode its rendered text without special tokens)."""
    from tokenizers import processors

    path = tmp_path_factory.mktemp("bos")
    tokenizer.save_pretrained(path)
    bos = AutoTokenizer.from_pretrained(path)
    bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 0)]
    )
    bos.bos_token = "<|endoftext|>"
    bos.chat_template = "{{ bos_token }}" + CHATML
    return bos


@pytest.mark.parametrize("layout", ["string", "conversational"])
@pytest.mark.parametrize("which", ["plain", "bos"])
def test_tokenize_pairs_batched_equals_tokenize_pair(layout, which, qa_rows, tokenizer, bos_tokenizer, monkeypatch):
    tokenizer = bos_tokenizer if which == "bos" else tokenizer
    assert _batch_encoder(tokenizer) is not None  # the fast path is the one under test
    data = edge_string_rows(qa_rows) if layout == "string" else edge_conversational_rows(qa_rows)
    batched = assert_batched_equals_rowwise(tokenizer, data, monkeypatch)
    if layout == "string":
        # the edge cases are really there: boundary merges and completions that already end with EOS
        merged = sum(len(b["prompt_ids"]) < len(tokenizer(p)["input_ids"]) for b, p in zip(batched, data["prompt"]))
        assert merged > 0
        eos = tokenizer.eos_token_id
        assert all(b["chosen_ids"][-1] == eos and b["rejected_ids"][-1] == eos for b in batched)
        assert any(c.endswith("<|im_end|>") for c in data["chosen"])
        assert all(b["chosen_ids"][-2:] != [eos, eos] for b, c in zip(batched, data["chosen"]) if c != "<|im_end|>")
    bos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # exactly one BOS with the BOS tokenizer (not doubled by the chat template), none without
    assert all(b["prompt_ids"].count(bos) == (which == "bos") for b in batched)


def test_tokenize_pairs_batched_mixed_rows_and_fallbacks(qa_rows, tokenizer):
    text = edge_string_rows(qa_rows, n=10)
    chat = edge_conversational_rows(qa_rows, n=10)
    data = {key: text[key] + chat[key] for key in text}
    tools = [None] * 20
    tools[3] = json.dumps([{"type": "function", "function": {"name": "f", "parameters": {}}}])
    tools[13] = [{"type": "function", "function": {"name": "g", "parameters": {}}}]
    template_kwargs = [None] * 20
    template_kwargs[15] = {"custom_flag": True}
    template_kwargs[16] = {}
    assert_batched_equals_rowwise(tokenizer, data, tools=tools, chat_template_kwargs=template_kwargs)
    with pytest.raises(ValueError, match="plain-text prompt"):
        tokenize_pairs_batched(tokenizer, ["p"], [[{"role": "assistant", "content": "x"}]], ["y"])


class _CustomEncodeTokenizer(PreTrainedTokenizerFast):
    """A fast tokenizer with its own encoding logic: the batched path must not assume it."""

    def _encode_plus(self, *args, **kwargs):
        return super()._encode_plus(*args, **kwargs)


def test_tokenize_pairs_batched_falls_back_and_resets_backend_state(qa_rows, tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    custom = _CustomEncodeTokenizer.from_pretrained(tmp_path / "tok")
    assert _batch_encoder(custom) is None
    data = edge_string_rows(qa_rows, n=12)
    assert tokenize_pairs_batched(custom, data["prompt"], data["chosen"], data["rejected"]) == (
        tokenize_pairs_batched(tokenizer, data["prompt"], data["chosen"], data["rejected"])
    )
    # truncation left on the Rust backend (e.g. by an earlier `tokenizer(..., truncation=True)`): tokenizer(text)
    # does not truncate, and neither does the batched path
    truncating = copy.deepcopy(tokenizer)
    truncating.backend_tokenizer.enable_truncation(max_length=8)
    batched = assert_batched_equals_rowwise(truncating, data)
    assert max(len(b["chosen_ids"]) for b in batched) > 8


def test_tokenize_pair_wraps_plain_completions_for_chat_prompts(tokenizer):
    prompt = [{"role": "user", "content": "Where?"}]
    as_text = tokenize_pair(tokenizer, prompt, "In bed.", "On a roof.")
    as_messages = tokenize_pair(
        tokenizer, prompt, [{"role": "assistant", "content": "In bed."}], [{"role": "assistant", "content": "On a roof."}]
    )
    assert as_text == as_messages
    assert tokenizer.decode(as_text["chosen_ids"]).startswith("In bed.<|im_end|>")
    with pytest.raises(ValueError, match="plain-text prompt"):
        tokenize_pair(tokenizer, "Where?", [{"role": "assistant", "content": "x"}], "y")


def test_fingerprint_is_stable_and_discriminating(tokenizer, tmp_path):
    fp = tokenizer_fingerprint(tokenizer)
    assert len(fp) == 16 and int(fp, 16) >= 0
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer_fingerprint(reloaded) == fp
    assert tokenizer_name(reloaded) == str(tmp_path / "tok")
    reloaded.chat_template = CHATML.replace("<|im_start|>", "<|im_start|> ")
    assert tokenizer_fingerprint(reloaded) != fp
    other = build_tiny_tokenizer(FALLBACK_TEXT, vocab_size=400)
    assert tokenizer_fingerprint(other) != fp


def test_stopword_token_ids(tokenizer):
    words = load_stopwords()
    assert 150 <= len(words) <= 250 and {"the", "and", "of", "is"} <= words
    ids = stopword_token_ids(tokenizer)
    decoded = {tokenizer.decode([i]).strip().lower() for i in ids}
    assert decoded <= words
    for text in ("the", " the", " The", " and", " of"):
        piece = tokenizer(text)["input_ids"]
        if len(piece) == 1:
            assert piece[0] in ids, text
    assert tokenizer.eos_token_id not in ids
    with_punct = stopword_token_ids(tokenizer, include_punctuation=True)
    assert ids < with_punct
    assert tokenizer.convert_tokens_to_ids(".") in with_punct and tokenizer.convert_tokens_to_ids(".") not in ids


def test_add_diff_masks_string_layout(qa_rows, tokenizer):
    data = string_rows(qa_rows)
    data[STATUS] = ["bridged", "failed"] * (len(data["prompt"]) // 2)
    dataset = Dataset.from_dict(data)
    masked = add_diff_masks(dataset, tokenizer, batch_size=5)
    assert masked.column_names == [*dataset.column_names, CHOSEN_DIFF_MASK, REJECTED_DIFF_MASK, MASK_TOKENIZER,
                                   MASK_TOKENIZER_HASH]
    assert masks_fit(masked, tokenizer)
    for i, row in enumerate(masked):
        ids = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        expected = token_diff_masks(ids["chosen_ids"], ids["rejected_ids"])
        assert (row[CHOSEN_DIFF_MASK], row[REJECTED_DIFF_MASK]) == expected
        # every row gets masks, bridged or not; the edited rows have at least one difference
        assert any(row[CHOSEN_DIFF_MASK]) or any(row[REJECTED_DIFF_MASK]) or row["chosen"] == row["rejected"]
        assert row[MASK_TOKENIZER_HASH] == tokenizer_fingerprint(tokenizer)


def test_add_diff_masks_conversational_and_num_proc(qa_rows, tokenizer):
    dataset = Dataset.from_dict(conversational_rows(qa_rows))
    single = add_diff_masks(dataset, tokenizer)
    parallel = add_diff_masks(dataset, tokenizer, num_proc=2, batch_size=4)
    assert single[CHOSEN_DIFF_MASK] == parallel[CHOSEN_DIFF_MASK]
    assert single[REJECTED_DIFF_MASK] == parallel[REJECTED_DIFF_MASK]
    for row in single:
        ids = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        assert len(row[CHOSEN_DIFF_MASK]) == len(ids["chosen_ids"])
        # the template's closing tokens are shared, so they are never marked
        assert row[CHOSEN_DIFF_MASK][-1] is False and row[REJECTED_DIFF_MASK][-1] is False


def test_ignore_stopwords(qa_rows, tokenizer):
    dataset = Dataset.from_dict(string_rows(qa_rows))
    plain = add_diff_masks(dataset, tokenizer)
    ignored = add_diff_masks(dataset, tokenizer, ignore_stopwords=True)
    stop = stopword_token_ids(tokenizer)
    n_plain = n_ignored = 0
    for i in range(len(dataset)):
        ids = tokenize_pair(tokenizer, dataset[i]["prompt"], dataset[i]["chosen"], dataset[i]["rejected"])
        for side in ("chosen", "rejected"):
            col = CHOSEN_DIFF_MASK if side == "chosen" else REJECTED_DIFF_MASK
            for tok, m0, m1 in zip(ids[f"{side}_ids"], plain[i][col], ignored[i][col]):
                assert m1 == (m0 and tok not in stop)
                n_plain += m0
                n_ignored += m1
    assert n_ignored < n_plain


def test_recomputing_replaces_mask_columns(qa_rows, tokenizer):
    masked = add_diff_masks(Dataset.from_dict(string_rows(qa_rows, n=4)), tokenizer)
    other = build_tiny_tokenizer(FALLBACK_TEXT, vocab_size=400)
    assert not masks_fit(masked, other)
    with pytest.raises(ValueError, match="row 0: diff masks were built with tokenizer"):
        check_masks(masked, other)
    again = add_diff_masks(masked, other)
    assert again.column_names == masked.column_names
    assert masks_fit(again, other) and not masks_fit(again, tokenizer)


def test_add_diff_masks_names_the_row_it_cannot_tokenize(tokenizer):
    bad = Dataset.from_dict(
        {"prompt": ["p", "q"], "chosen": [[{"role": "assistant", "content": "x"}]] * 2, "rejected": ["r", "s"]}
    )
    with pytest.raises(ValueError, match="row 0: could not tokenize the pair as DPOTrainer does: a plain-text"):
        add_diff_masks(bad, tokenizer)


def test_clear_errors(tokenizer):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rejected'\]"):
        add_diff_masks(Dataset.from_dict({"prompt": ["p"], "chosen": ["c"]}), tokenizer)
    bad = Dataset.from_dict({"prompt": ["p", "q"], "chosen": ["c", ""], "rejected": ["r", "s"]})
    with pytest.raises(ValueError, match="row 1: field 'chosen' is empty"):
        add_diff_masks(bad, tokenizer)
    assert not masks_fit(Dataset.from_dict({"prompt": ["p"]}), tokenizer)
    with pytest.raises(ValueError, match="chosen_diff_mask"):
        check_masks(Dataset.from_dict({"prompt": ["p"]}), tokenizer)


def test_empty_dataset_keeps_the_schema(tokenizer):
    from datasets import Features, Value

    empty = Dataset.from_dict(
        {"prompt": [], "chosen": [], "rejected": []},
        features=Features({k: Value("string") for k in ("prompt", "chosen", "rejected")}),
    )
    masked = add_diff_masks(empty, tokenizer)
    assert len(masked) == 0 and masks_fit(masked, tokenizer)
    assert masked.features[CHOSEN_DIFF_MASK].feature.dtype == "bool"
