"""The embedded runtime: schema grammars (strict strings, a length bound), llama.cpp batched and grammar-constrained
decoding of the real SmolLM2-135M GGUF, and the demo pipeline end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bmc_data.bridging.protocol import parse_structured_reply, reply_schema
from bmc_data.providers.base import ChatRequest, ResponseSchema
from bmc_data.providers.grammar import GrammarLimits, gbnf_literal, schema_to_gbnf

REPO = Path(__file__).resolve().parents[1]
Y_L = 'Bob said "hi".\nCandles are lit in a synagogue.\nThe answer is synagogue'


def test_gbnf_literal_escapes_quotes_backslashes_and_newlines():
    assert gbnf_literal('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'


def test_schema_bound_counts_every_byte_the_grammar_allows():
    schema = {"type": "object", "properties": {
        "v": {"type": "string", "enum": ["GOOD", "REVISE"]},
        "xs": {"type": "array", "items": {"type": "string"}}}, "required": ["v", "xs"], "additionalProperties": False}
    grammar, bound = schema_to_gbnf(schema, GrammarLimits(max_string_chars=10, max_array_items=3))
    assert 'char{0,10}' in grammar and '{0,2}' in grammar  # at most 3 items: one, then up to two more
    longest = '{ "v" : "REVISE" , "xs" : [ "' + "\\u0000" * 10 + '" , "' + "\\u0000" * 10 + '" , "' \
              + "\\u0000" * 10 + '" ] }'
    assert len(longest.encode()) <= bound < 2 * len(longest.encode())


def test_unsupported_schemas_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="root-n.*integer"):
        schema_to_gbnf({"type": "object", "properties": {"n": {"type": "integer"}}})


def test_bad_thread_setting_is_a_usage_error_naming_the_variable(monkeypatch):
    from bmc_data.errors import UsageError
    from bmc_data.providers.llama_cpp_local import default_threads

    monkeypatch.setenv("BMC_EMBEDDED_THREADS", "two")
    with pytest.raises(UsageError, match="BMC_EMBEDDED_THREADS must be a whole number of threads, got 'two'"):
        default_threads()
    monkeypatch.setenv("BMC_EMBEDDED_THREADS", "3")
    assert default_threads() == 3


def test_demo_with_a_missing_source_says_so_in_one_line_exit_2(tmp_path, capsys):
    from bmc_data.runner import run_cli
    from bmc_demo.__main__ import main

    assert run_cli(main, ["--source", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --source {tmp_path / 'nope.jsonl'}: no such file (the demo reads ECQA from the shared/ "
                   "folder beside the repository; pass another QA .jsonl with --source)"]
    assert not (tmp_path / "out").exists()


def test_demo_refuses_files_it_did_not_write_before_anything_runs(tmp_path, capsys, shared_data):
    from bmc_data.runner import run_cli
    from bmc_demo.__main__ import main

    out = tmp_path / "out"
    (out / "dpo-bmc").mkdir(parents=True)
    (out / "dpo-bmc" / "my-notes.txt").write_text("mine")
    (out / "report.html").write_text("my page")
    (out / "notes.txt").write_text("outside the demo's paths")
    source = shared_data / "qa" / "ecqa-train.jsonl"
    for page_too in (True, False):
        assert run_cli(main, ["--source", str(source), "--out", str(out), "--limit", "1"]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {out}: 1 file(s) in the way that bmc did not write")
        assert ("report.html" if page_too else "dpo-bmc/my-notes.txt") in err[0] and "[1/5]" not in captured.out
        (out / "report.html").unlink(missing_ok=True)
    assert (out / "dpo-bmc" / "my-notes.txt").read_text() == "mine" and (out / "notes.txt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["dpo-bmc", "notes.txt"]  # no lock or manifest left behind


llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def embedded():
    from bmc_data.providers.embedded import EmbeddedProvider

    try:
        return EmbeddedProvider(max_batch_size=4, n_threads=1)
    except ModuleNotFoundError as error:
        pytest.skip(str(error))


def _allowed(provider, grammar, prefix: str, candidate: str) -> bool:
    """Does `grammar`, after `prefix`, allow the token(s) of `candidate` as the next token?"""
    import numpy as np

    sampler = llama_cpp.llama_sampler_init_grammar(provider.vocab, grammar.encode(), b"root")
    try:
        for token in provider.llm.tokenize(prefix.encode(), add_bos=False):
            llama_cpp.llama_sampler_accept(sampler, token)
        token = provider.llm.tokenize(candidate.encode(), add_bos=False)[0]
        data = np.zeros(1, provider.token_dtype)
        data[0] = (token, 1.0, 0.0)
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.ctypes.POINTER(llama_cpp.llama_token_data)), size=1, selected=-1,
            sorted=False)
        llama_cpp.llama_sampler_apply(sampler, llama_cpp.ctypes.byref(array))
        return bool(np.isfinite(data[0]["logit"]))
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_grammar_refuses_a_raw_newline_in_a_string_and_text_that_is_not_a_segment(embedded):
    grammar, _ = schema_to_gbnf(reply_schema(Y_L, requires_verdict=True, answer="bedroom"))
    inside = '{"verdict": "REVISE", "edits": [{"segment": "Candles are lit in a synagogue.", "replacement": "Candles'
    assert _allowed(embedded, grammar, inside, " are")
    assert not _allowed(embedded, grammar, inside, "\n")  # JSON forbids a raw control character in a string
    assert _allowed(embedded, grammar, inside, "\\")  # its escape is fine
    segment = '{"verdict": "REVISE", "edits": [{"segment": "'
    assert _allowed(embedded, grammar, segment, "Bob") and not _allowed(embedded, grammar, segment, "Alice")
    final = '{"verdict": "REVISE", "edits": [], "final_answer": "'
    assert _allowed(embedded, grammar, final, "bed") and not _allowed(embedded, grammar, final, "syn")


def test_embedded_replies_are_bounded_to_six_edits_of_240_characters(embedded):
    """The embedded editor's grammar bounds (a 135M model's replies otherwise loop past the context)."""
    grammar, _ = schema_to_gbnf(reply_schema(Y_L, requires_verdict=True, answer="bedroom"), embedded.grammar_limits)
    assert "char{0,240}" in grammar and "){0,5}" in grammar  # one edit, then at most five more
    assert embedded.identity()["grammar_limits"] == "240/6"


def test_repeat_penalty_breaks_the_greedy_loop_of_a_free_text_answer(embedded, monkeypatch):
    """ECQA train row 1 (the demo's data): greedy SmolLM2 loops "The answer is the answer is ..." to the cap;
    with the embedded default penalty (1.1 over 64 tokens) it ends by itself, and the identity says so."""
    from bmc_data.bridging.sampling import ANSWER_INSTRUCTION
    from bmc_data.providers.embedded import FREE_TEXT_REPEAT_PENALTY

    problem = ("If you want to set a romantic atmosphere you might light a candle where?\nOptions:\ndimly lit room\n"
               "synagogue\nbedroom\nbirthday cake\nroses")
    request = ChatRequest(messages=({"role": "user", "content": f"{problem}\n\n{ANSWER_INSTRUCTION}"},), max_tokens=48)
    assert embedded.repeat_penalty == FREE_TEXT_REPEAT_PENALTY == 1.1
    assert embedded.identity()["repeat_penalty"] == "1.1/64"
    penalized = asyncio.run(embedded.complete(request))
    monkeypatch.setattr(embedded, "repeat_penalty", 1.0)
    plain = asyncio.run(embedded.complete(request))
    assert plain.finish_reason == "length" and plain.text.lower().count("the answer is") > 5
    assert penalized.finish_reason == "stop" and penalized.output_tokens < 24


@pytest.mark.slow  # the real model decodes ~100 constrained tokens: seconds on a quiet CPU
def test_structured_requests_always_parse_and_state_the_reference_answer(embedded):
    """Two constrained requests and one free one decoded as one batch: the constrained replies end by themselves
    (not at a cap), parse, name only segments of y_l, and end with the reference answer."""
    schema = ResponseSchema("bmc_edit_reply", reply_schema(Y_L, requires_verdict=True, answer="bedroom"))
    ask = "Question: where would you light a candle for romance? Reference: The answer is bedroom.\nStudent:\n"
    requests = [ChatRequest(messages=({"role": "user", "content": ask + Y_L + f"\nReply with JSON edits{n}."},),
                            max_tokens=8, response_schema=schema) for n in ("", "!")]
    requests.append(ChatRequest(messages=({"role": "user", "content": "Say hello."},), max_tokens=8))

    async def run_all():
        return await asyncio.gather(*(embedded.complete(r) for r in requests))

    before = dict(embedded.batch_stats)
    replies = asyncio.run(run_all())
    assert embedded.batch_stats["generate_calls"] == before["generate_calls"] + 1  # one batch for all three
    for reply in replies[:2]:
        assert reply.finish_reason == "stop" and reply.output_tokens > 8  # the schema's bound, not max_tokens
        parsed = parse_structured_reply(reply.text, Y_L, requires_verdict=True, answer="bedroom")
        assert parsed.revised is None or parsed.revised.rstrip().endswith("bedroom")
    assert replies[2].output_tokens <= 8
    identity = embedded.identity()
    assert identity["runtime"].startswith("llama-cpp-python") and len(identity["model_sha256"]) == 64


@pytest.mark.slow  # ~2 min on a quiet 2-core CPU: y_l sampling, bridging, masks, page, one training step
def test_demo_pipeline_runs_end_to_end_on_two_rows(tmp_path, shared_data):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "bmc_demo", "--source", str(shared_data / "qa" / "ecqa-train.jsonl"),
                           "--limit", "2", "--train-steps", "1", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    record = json.loads((out / "demo.json").read_text())
    assert done.returncode == (0 if record["bridged"] else 4), done.stderr[-2000:]
    assert record["rows"] == 2 and (out / "report.html").is_file() and (out / "bridged.parquet").is_file()
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in done.stdout
    if record["bridged"]:
        assert (out / "dpo-bmc" / "model.safetensors").is_file()
        assert {"loss", "rewards/margins", "bmc/lambda_chosen_mean"} <= set(record["training"][0])
    listed = json.loads((out / "bmc_files.json").read_text())["files"]
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"bmc_files.json"}
    assert written - set(listed) <= {"cache/calls.sqlite-wal", "cache/calls.sqlite-shm"}, written - set(listed)
    assert listed["pairs.jsonl"]["writer"] == "demo" and listed["report.html"]["writer"].startswith("report")
    # a rerun without training: the policy is reused (not converted again), the calls replay from the cache, the
    # earlier weights (the demo's own, unchanged) are removed, and a file the demo did not write stays
    policy = out / "smollm2-135m-instruct-fp32" / "model.safetensors"
    converted = policy.stat().st_mtime_ns
    first_rows = (out / "bridged.jsonl").read_text()
    (out / "notes.txt").write_text("mine")
    again = subprocess.run([sys.executable, "-m", "bmc_demo", "--source", str(shared_data / "qa" / "ecqa-train.jsonl"),
                            "--limit", "2", "--train-steps", "0", "--out", str(out)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert again.returncode == done.returncode, again.stderr[-2000:]
    assert policy.stat().st_mtime_ns == converted and (out / "notes.txt").read_text() == "mine"
    assert not (out / "dpo-bmc").exists()
    assert (out / "bridged.jsonl").read_text() == first_rows  # every reply replayed from the cache


def test_a_prompt_longer_than_the_context_fails_alone_and_its_batch_runs_on():
    from bmc_data.providers.base import ProviderError
    from bmc_data.providers.embedded import EmbeddedProvider

    small = EmbeddedProvider(max_batch_size=2, n_threads=1, n_ctx_per_seq=64)
    long = ChatRequest(messages=({"role": "user", "content": "word " * 80},), max_tokens=4)
    short = ChatRequest(messages=({"role": "user", "content": "Hi"},), max_tokens=4)

    async def both():
        return await asyncio.gather(small.complete(long), small.complete(short), return_exceptions=True)

    failed, served = asyncio.run(both())
    small.close()
    assert isinstance(failed, ProviderError) and "more than the context of 64" in str(failed)
    assert served.output_tokens >= 1 and small.batch_stats["max_batch"] == 2
