"""Structured replies with `--provider transformers`: grammar-constrained decoding (xgrammar) on a random model.

A random model's greedy output is gibberish, so a reply that parses and follows its per-pair schema is the
grammar's doing (each test also shows the same request without a schema does not parse)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from bmc_data import bridge_dataset
from bmc_data.pairs.answers import check_answer
from bmc_data.bridging.protocol import SCHEMA_NAME, VERDICTS, reply_schema, segment
from bmc_data.providers import ChatRequest, ProviderError, ResponseSchema
from bmc_data.providers.grammar import MIN_FITTED_STRING_CHARS, GrammarLimits, fit_limits, schema_to_gbnf
from bmc_data.providers.transformers_local import TransformersProvider

pytest.importorskip("xgrammar", reason="grammar-constrained decoding needs xgrammar (make install)")

PAIRS = [
    {"prompt": "Where would you put a candle for a romantic dinner?\nOptions:\nbedroom\ngarage\ndining table",
     "chosen": "Candles are set on the table for dinner.\nThe answer is dining table",
     "rejected": "A garage is where cars are kept. Candles go there.\nThe answer is garage", "answer": "dining table"},
    {"prompt": "What do you use to cut paper?\nOptions:\nscissors\nspoon\npillow",
     "chosen": "Scissors have blades that cut paper.\nThe answer is scissors",
     "rejected": "A spoon is used to cut \"paper\" quickly.\nThe answer is spoon", "answer": "scissors"},
    {"prompt": "Where do fish live?\nOptions:\nwater\ndesert\nsky",
     "chosen": "Fish breathe with gills in water.\nThe answer is water",
     "rejected": "Fish live in the desert sand. They like heat!\nThe answer is desert", "answer": "water"},
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, one_torch_thread):
    """A random 2-layer Llama with a byte-level BPE tokenizer trained on the pairs (built offline), saved."""
    from transformers import AutoModelForCausalLM

    from bmc_train.testing import build_tiny_model

    texts = [p[k] for p in PAIRS for k in ("prompt", "chosen", "rejected")]
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"), texts * 4)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.config.max_position_embeddings = 4096  # room for the bridge's prompt (~1,200 tokens of a 384-token BPE)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_folder), AutoTokenizer.from_pretrained(tiny_folder)


def provider(tiny, **kwargs) -> TransformersProvider:
    return TransformersProvider.from_pretrained_objects(*tiny, name="tiny-bpe", **kwargs)


def structured(pair: dict, max_tokens: int = 300) -> ChatRequest:
    schema = reply_schema(pair["rejected"], requires_verdict=True, answer=pair["answer"])
    return ChatRequest(messages=({"role": "user", "content": f"Fix: {pair['rejected']}"},), max_tokens=max_tokens,
                       response_schema=ResponseSchema(SCHEMA_NAME, schema))


def free(request: ChatRequest) -> ChatRequest:
    return ChatRequest(messages=request.messages, max_tokens=request.max_tokens)


def gather(p: TransformersProvider, requests: list[ChatRequest]) -> list:
    async def scenario():
        return await asyncio.gather(*(p.complete(r) for r in requests), return_exceptions=True)

    return asyncio.run(scenario())


def assert_follows_schema(text: str, pair: dict, request: ChatRequest, limits: GrammarLimits) -> dict:
    reply = json.loads(text)  # strict JSON: no raw control characters in strings
    assert list(reply) == ["verdict", "edits", "final_answer"]
    assert reply["verdict"] in VERDICTS and reply["final_answer"] == pair["answer"]
    segments = {s.text for s in segment(pair["rejected"])}
    assert 0 <= len(reply["edits"]) <= limits.max_array_items
    for edit in reply["edits"]:
        assert list(edit) == ["segment", "replacement"] and edit["segment"] in segments
        assert isinstance(edit["replacement"], str) and len(edit["replacement"]) <= limits.max_string_chars
    return reply


def test_every_row_of_a_batch_follows_its_own_schema_and_free_rows_stay_free(tiny):
    requests = [structured(p) for p in PAIRS]
    alone = provider(tiny, max_batch_size=1)
    free_alone = run_one(alone, free(requests[0]))
    with pytest.raises(json.JSONDecodeError):  # without the grammar the random model writes no JSON
        json.loads(free_alone.text)
    batched = provider(tiny, max_batch_size=4)
    replies = gather(batched, [*requests, free(requests[0])])
    assert batched.batch_stats == {"generate_calls": 1, "requests": 4, "max_batch": 4}
    for pair, request, reply in zip(PAIRS, requests, replies[:3]):
        limits = fit_limits(request.response_schema.schema, GrammarLimits(), request.max_tokens)
        assert limits is not None and limits.max_array_items == 1  # 300 tokens hold one edit of a few words
        assert reply.finish_reason == "stop" and reply.output_tokens <= request.max_tokens
        assert_follows_schema(reply.text, pair, request, limits)
    assert replies[3].text == free_alone.text  # a free-text row in the batch is unchanged by its neighbours
    assert replies[3].finish_reason == free_alone.finish_reason


def run_one(p: TransformersProvider, request: ChatRequest):
    return asyncio.run(p.complete(request))


def test_a_structured_reply_is_never_cut_at_its_token_cap(tiny):
    pair = PAIRS[1]  # its y_l quotes a word: the enum literal carries an escaped quote
    for max_tokens in (160, 250, 450):
        request = structured(pair, max_tokens)
        limits = fit_limits(request.response_schema.schema, GrammarLimits(), max_tokens)
        reply = run_one(provider(tiny), request)
        assert reply.finish_reason == "stop" and reply.output_tokens <= max_tokens, max_tokens
        assert_follows_schema(reply.text, pair, request, limits)
        # without the grammar the same request runs to the cap and is cut
        assert run_one(provider(tiny), free(request)).finish_reason == "length"


def test_sampled_replies_name_segments_and_close_their_strings_at_the_limit(tiny):
    # greedy, this random model opens no edit ("[]" wins); sampled, it writes edits of random bytes
    limits = GrammarLimits(max_string_chars=30, max_array_items=3)
    p = provider(tiny, grammar_limits=limits)
    edits = []
    for seed in range(6):
        pair = PAIRS[seed % 3]
        base = structured(pair, 400)
        request = ChatRequest(messages=base.messages, max_tokens=400, temperature=1.0, seed=seed,
                              response_schema=base.response_schema)
        reply = run_one(p, request)
        assert reply.finish_reason == "stop"
        edits += assert_follows_schema(reply.text, pair, request, limits)["edits"]
        with pytest.raises(json.JSONDecodeError):
            json.loads(run_one(p, free(request)).text)
    assert len(edits) >= 3
    assert any(len(e["replacement"]) == 30 for e in edits)  # a string that reached its limit was closed there


def test_a_schema_that_cannot_be_enforced_fails_its_own_request_only(tiny):
    good = structured(PAIRS[0])
    too_small = structured(PAIRS[2], max_tokens=40)  # y_l's segments alone need more than 40 tokens
    unsupported = ChatRequest(messages=good.messages, max_tokens=64, response_schema=ResponseSchema(
        "counts", {"type": "object", "properties": {"n": {"type": "number"}}}))
    p = provider(tiny, max_batch_size=4)
    ok, small, refused, plain = gather(p, [good, too_small, unsupported, free(good)])
    assert p.batch_stats["generate_calls"] == 1
    assert_follows_schema(ok.text, PAIRS[0], good, fit_limits(good.response_schema.schema, GrammarLimits(), 300))
    assert isinstance(small, ProviderError) and not small.retryable
    assert "tiny-bpe: reply schema 'bmc_edit_reply': its shortest complete reply may need" in str(small)
    assert "more than the cap of 40 (max_tokens 40, the context leaves " in str(small)
    assert str(small).endswith("; raise max_tokens")
    assert isinstance(refused, ProviderError)
    assert "reply schema 'counts': root-n: a local grammar supports object, array, string and enum" in str(refused)
    assert plain.text and p.usage.failures == 2 and p.usage.calls == 2


def test_fitted_limits_are_the_largest_that_fit_the_cap_keeping_a_sentence_per_edit():
    schema = reply_schema(PAIRS[0]["rejected"], requires_verdict=True, answer=PAIRS[0]["answer"])
    least = schema_to_gbnf(schema, GrammarLimits(0, 1))[1]
    assert fit_limits(schema, GrammarLimits(), least - 1) is None
    seen_items = set()
    for cap in range(least, 12000, 97):
        limits = fit_limits(schema, GrammarLimits(), cap)
        assert schema_to_gbnf(schema, limits)[1] <= cap, cap
        assert limits.max_array_items == 1 or limits.max_string_chars >= MIN_FITTED_STRING_CHARS
        if limits.max_string_chars < 400:  # one more character would not fit
            assert schema_to_gbnf(schema, GrammarLimits(limits.max_string_chars + 1, limits.max_array_items))[1] > cap
        seen_items.add(limits.max_array_items)
    assert min(seen_items) == 1 and max(seen_items) > 3


def test_grammar_limits_are_part_of_the_identity_only_when_changed(tiny):
    assert provider(tiny).identity() == {"provider": "transformers", "model": "tiny-bpe"}  # cache keys unchanged
    narrow = provider(tiny, grammar_limits=GrammarLimits(max_string_chars=20, max_array_items=2))
    assert narrow.identity() == {"provider": "transformers", "model": "tiny-bpe", "grammar_limits": "20/2"}
    request = structured(PAIRS[0], max_tokens=400)
    reply = json.loads(run_one(narrow, request).text)
    assert len(reply["edits"]) <= 2 and all(len(e["replacement"]) <= 20 for e in reply["edits"])


def test_bridge_with_structured_replies_on_a_local_transformers_model(tiny, tmp_path):
    ds, summary = bridge_dataset(PAIRS, task="qa", provider=provider(tiny), reply_format="structured",
                                 max_tokens=300, cache_dir=tmp_path, progress=False, return_summary=True)
    assert summary.usage["by_finish_reason"] == {"stop": 3}  # never cut
    for row in ds:
        # every reply parsed: a row fails only on what its edits say, never on the reply's format
        assert row["bmc_status"] in ("bridged", "failed"), row
        assert "JSON" not in row["bmc_reason"] and "truncated" not in row["bmc_reason"], row["bmc_reason"]
    for pair, row in zip(PAIRS, ds):
        if row["bmc_status"] == "bridged":  # ỹ_w states the reference answer (the schema fixed final_answer)
            assert check_answer(row["chosen"], pair["answer"], "qa")[0], row["chosen"]
    again = bridge_dataset(PAIRS, task="qa", provider=provider(tiny), reply_format="structured", max_tokens=300,
                           cache_dir=tmp_path, progress=False)
    assert again["chosen"] == ds["chosen"]


def test_cli_bridges_with_structured_replies_on_a_transformers_model(tiny_folder, tmp_path):
    from bmc_data.__main__ import main as cli_main

    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    code = cli_main(["bridge", "--source", str(source), "--task", "qa", "--provider", "transformers", "--model",
                     str(tiny_folder), "--reply-format", "structured", "--max-tokens", "300", "--out",
                     str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "bridged.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["bmc_status"] == "bridged" for r in rows), [r["bmc_reason"] for r in rows]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["usage"]["by_finish_reason"] == {"stop": 3}


def test_structured_without_xgrammar_is_refused_before_the_model_is_loaded(tmp_path):
    # a fresh interpreter in which xgrammar cannot be imported (as on a machine without it)
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    script = ("import sys\nsys.modules['xgrammar'] = None  # import fails, find_spec finds nothing\n"
              "from bmc_data.__main__ import main\nsys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run(
        [sys.executable, "-c", script, "bridge", "--source", str(source), "--task", "qa", "--provider",
         "transformers", "--model", str(tmp_path / "no-model"), "--reply-format", "structured", "--out",
         str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env=os.environ, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: reply format 'structured' with the transformers provider: it needs xgrammar, which is not "
        "installed: pip install --no-deps 'xgrammar>=0.2.8,<0.3' && pip install 'apache-tvm-ffi>=0.1.11'")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # SmolLM2-135M as float32 transformers: ~20 s to load, then 3 constrained replies
def test_bridge_with_structured_replies_on_smollm2_through_transformers(shared_data, tmp_path):
    """The real tokenizer (49,152 tokens, from the embedded GGUF) through xgrammar: every reply parses."""
    from bmc_data.providers.embedded import load_embedded_model

    rows = [json.loads(line) for line in (shared_data / "qa" / "ecqa-test.jsonl").read_text().splitlines()[:3]]
    pairs = [{"prompt": r["problem"], "chosen": r["solution"], "answer": r["answer"],
              "rejected": r["solution"].replace(r["answer"], "nowhere")} for r in rows]
    smol = TransformersProvider.from_pretrained_objects(*load_embedded_model(), name="smollm2", max_batch_size=3)
    ds, summary = bridge_dataset(pairs, task="qa", provider=smol, reply_format="structured", max_tokens=1024,
                                 cache_dir=False, progress=False, return_summary=True)
    assert summary.usage["by_finish_reason"] == {"stop": 3} and smol.batch_stats["max_batch"] == 3
    assert all("JSON" not in reason for reason in ds["bmc_reason"]), ds["bmc_reason"]
    for pair, row in zip(pairs, ds):
        if row["bmc_status"] == "bridged":
            assert check_answer(row["chosen"], pair["answer"], "qa")[0]
    assert ds["bmc_status"].count("bridged") >= 2
