"""Structured replies through every provider path: request shapes, the loopback servers' checks, bridge_dataset."""

from __future__ import annotations

import json

import pytest
from batch_servers import BatchServer
from llm_servers import LLMServer, conformance_problems

from bmc_data import bridge_dataset
from bmc_data.__main__ import main as cli_main
from bmc_data.bridging.templates import load_template
from bmc_data.errors import UsageError
from bmc_data.providers import ChatRequest, ChatResponse, Provider, ProviderError, ProviderLimits, ResponseSchema
from bmc_data.providers.anthropic_batch import AnthropicBatchProvider
from bmc_data.providers.anthropic_messages import AnthropicProvider
from bmc_data.providers.cache import CallCache, cache_key
from bmc_data.providers.openai_batch import OpenAIBatchProvider
from bmc_data.providers.openai_chat import OpenAIProvider

FAST = ProviderLimits(max_concurrency=8, timeout_s=5.0, max_retries=1, backoff_base_s=0.01, backoff_max_s=0.05)
SCHEMA = ResponseSchema("bmc_edit_reply", {"type": "object", "properties": {"a": {"type": "string", "enum": ["x"]}},
                                           "required": ["a"], "additionalProperties": False})
REQUEST = ChatRequest(messages=({"role": "system", "content": "s"}, {"role": "user", "content": "héllo"}),
                      max_tokens=64, temperature=0, seed=0)
MATH = [{"prompt": f"What is {i}+{i}?", "chosen": f"{i}+{i}={2 * i}.\nThe answer is {2 * i}",
         "rejected": f"First, add them. {i}+{i}={2 * i + 1}.\nThe answer is {2 * i + 1}", "answer": str(2 * i)}
        for i in range(1, 4)]


def test_a_request_without_a_schema_keeps_its_cache_key():
    # the key of this request before ChatRequest had a response_schema field (computed at commit 3d011f3)
    identity = {"provider": "openai", "model": "m", "base_url": "http://x/v1"}
    assert cache_key(identity, "qa-math-v1@abc", REQUEST) == "da6b99607fdd91666f380dfdba8abbb70a4c75bcb2ed105eee27950f433f3d2b"
    assert "response_schema" not in REQUEST.cache_payload()
    structured = ChatRequest(**{**REQUEST.__dict__, "response_schema": SCHEMA})
    assert structured.cache_payload()["response_schema"] == {"name": SCHEMA.name, "schema": SCHEMA.schema}
    assert cache_key(identity, "qa-math-v1@abc", structured) != cache_key(identity, "qa-math-v1@abc", REQUEST)


def test_openai_request_shapes():
    official = OpenAIProvider("gpt-4o-mini", api_key="sk-test", base_url="https://api.openai.com/v1")
    with_schema = ChatRequest(messages=REQUEST.messages, response_schema=SCHEMA)
    assert official._params(with_schema)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "bmc_edit_reply", "schema": SCHEMA.schema, "strict": True}}
    assert "response_format" not in official._params(REQUEST)
    vllm = OpenAIProvider("qwen", base_url="http://127.0.0.1:9/v1", structured_output="guided_json")
    assert vllm._params(with_schema)["guided_json"] == SCHEMA.schema and "response_format" not in vllm._params(with_schema)
    new_vllm = OpenAIProvider("qwen", base_url="http://127.0.0.1:9/v1", structured_output="structured_outputs")
    assert new_vllm._params(with_schema)["structured_outputs"] == {"json": SCHEMA.schema}
    with pytest.raises(ValueError, match="is a vLLM field; api.openai.com takes only 'response_format'"):
        OpenAIProvider("gpt-4o-mini", api_key="sk-test", base_url="https://api.openai.com/v1", structured_output="guided_json")
    with pytest.raises(ValueError, match="structured_output must be one of"):
        OpenAIProvider("qwen", base_url="http://127.0.0.1:9/v1", structured_output="grammar")
    # the batch API carries the same body
    batch = OpenAIBatchProvider("gpt-4o-mini", api_key="sk-test", base_url="https://api.openai.com/v1", progress=False)
    assert json.loads(batch._batch_line("c1", with_schema))["body"]["response_format"]["json_schema"]["strict"] is True


def test_anthropic_request_shape_forces_the_tool_and_reads_its_input():
    provider = AnthropicProvider("claude", api_key="sk-ant-test", base_url="http://127.0.0.1:9")
    params = provider._params(ChatRequest(messages=REQUEST.messages, response_schema=SCHEMA))
    assert params["tools"] == [{"name": "bmc_edit_reply", "description": "Submit your reply.", "input_schema": SCHEMA.schema}]
    assert params["tool_choice"] == {"type": "tool", "name": "bmc_edit_reply"}
    assert "tools" not in provider._params(REQUEST)
    batch = AnthropicBatchProvider("claude", api_key="sk-ant-test", base_url="http://127.0.0.1:9", progress=False)
    reply = batch._parse_message({"content": [{"type": "tool_use", "id": "t", "name": "bmc_edit_reply", "input": {"a": "x"}}],
                                  "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}})
    assert json.loads(reply.text) == {"a": "x"} and reply.finish_reason == "stop"


def _openai(server: LLMServer, **kwargs) -> OpenAIProvider:
    return OpenAIProvider("editor", base_url=server.openai_base_url, api_key="sk-test", limits=FAST, **kwargs)


def _anthropic(server: LLMServer) -> AnthropicProvider:
    return AnthropicProvider("claude", base_url=server.anthropic_base_url, api_key="sk-ant-test", limits=FAST)


def _expected_math(row: dict) -> str:
    # the loopback editor revises the first sentence; the library sets the answer line to the reference answer
    return row["rejected"].replace("First, add them.", "First, add them. (revised)").rsplit("is", 1)[0] + f"is {row['answer']}"


@pytest.mark.parametrize("path", ["openai-response_format", "vllm-guided_json", "vllm-structured_outputs", "anthropic-tools"])
def test_bridging_math_with_structured_replies_on_every_provider_path(path, tmp_path):
    with LLMServer() as server:
        if path.startswith("anthropic"):
            provider = _anthropic(server)
        else:
            provider = _openai(server, structured_output=path.split("-", 1)[1])
        ds, summary = bridge_dataset(MATH, task="math", provider=provider, cache_dir=tmp_path, reply_format="structured",
                                     progress=False, return_summary=True)
        assert server.call_count == 3
        bodies = server.bodies
    assert ds["bmc_status"] == ["bridged"] * 3
    assert ds["chosen"] == [_expected_math(row) for row in MATH]
    assert set(ds["bmc_prompt_version"]) == {load_template("math", reply_format="structured").version_id}
    field = {"openai-response_format": "response_format", "vllm-guided_json": "guided_json",
             "vllm-structured_outputs": "structured_outputs", "anthropic-tools": "tool:bmc_edit_reply"}[path]
    assert [f for _, f, _ in server.structured] == [field] * 3
    for (_, _, schema), row in zip(sorted(server.structured, key=lambda s: s[2]["properties"]["final_answer"]["enum"]), MATH):
        assert schema["properties"]["final_answer"]["enum"] == [row["answer"]]
        assert schema["properties"]["edits"]["items"]["properties"]["segment"]["enum"] == [
            "First, add them.", row["rejected"].split(". ", 1)[1].split("\n")[0], row["rejected"].split("\n")[1]]
    assert all("max_tokens" in b for b in bodies) and summary.counts == {"bridged": 3}


def test_the_official_api_refuses_vllm_fields_and_the_row_fails_with_its_reason(tmp_path):
    with LLMServer(vllm_fields=False) as server:
        ds = bridge_dataset(MATH[:1], task="math", provider=_openai(server, structured_output="guided_json"),
                            cache_dir=tmp_path, reply_format="structured", progress=False)
    assert ds["bmc_status"] == ["failed"]
    assert "Unrecognized request argument supplied: guided_json" in ds["bmc_reason"][0]


def test_a_reply_that_ignored_the_schema_gets_one_repair_turn_with_the_schema_again(tmp_path):
    seen = []

    def reply(messages, schema):
        seen.append(len(messages))
        if len(messages) == 2:  # the first turn: a server that ignored the schema
            return "Sure! The student is wrong."
        assert "I could not use your reply: the reply is not a JSON object" in messages[-1]["content"]
        return {"verdict": "REVISE", "edits": [], "final_answer": schema["properties"]["final_answer"]["enum"][0]}

    with LLMServer(structured_reply=reply) as server:
        ds = bridge_dataset(MATH[:1], task="math", provider=_openai(server), cache_dir=tmp_path,
                            reply_format="structured", progress=False)
        assert [f for _, f, _ in server.structured] == ["response_format"] * 2
    assert seen == [2, 4] and ds["bmc_status"] == ["bridged"]
    assert ds["chosen"][0] == MATH[0]["rejected"].replace("is 3", "is 2")  # only the answer line: honest stats count it


def test_a_refusal_fails_the_row_with_the_models_words(tmp_path):
    from llm_servers import Refusal

    with LLMServer(structured_reply=lambda messages, schema: Refusal("I can't help with that.")) as server:
        ds = bridge_dataset(MATH[:1], task="math", provider=_openai(server), cache_dir=tmp_path,
                            reply_format="structured", progress=False)
        assert server.call_count == 1  # a refusal is final: no retry, no repair turn
    assert ds["bmc_status"] == ["failed"]
    assert ds["bmc_reason"][0] == "provider error: openai editor: the model refused: I can't help with that."


def test_instruction_rows_bridge_through_the_batch_apis(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "A fine answer.", "rejected": f"Bad answer {i}. Second sentence."} for i in range(3)]
    with BatchServer() as server:
        for provider in (OpenAIBatchProvider("editor", base_url=server.openai_base_url, api_key="sk-test", limits=FAST,
                                             poll_interval_s=0.02, progress=False),
                         AnthropicBatchProvider("editor", base_url=server.url, api_key="sk-test", limits=FAST,
                                                poll_interval_s=0.02, progress=False)):
            ds = bridge_dataset(rows, task="instruction", provider=provider, cache_dir=tmp_path / provider.name,
                                reply_format="structured", progress=False)
            assert ds["chosen"] == [f"Bad answer {i}. (revised) Second sentence." for i in range(3)], provider.name


class _NoSchemaProvider(Provider):
    name = "plain"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.refuse_response_schema(request)
        return ChatResponse(text="ok", finish_reason="stop")


def test_a_provider_that_cannot_enforce_a_schema_says_so_before_any_call(tmp_path):
    provider = _NoSchemaProvider("m")
    with pytest.raises(UsageError, match="reply format 'structured' needs a provider that constrains replies to a "
                                         "JSON schema; the plain provider cannot"):
        bridge_dataset(MATH, task="math", provider=provider, cache_dir=tmp_path, reply_format="structured", progress=False)
    import asyncio

    with pytest.raises(ProviderError, match="cannot constrain a reply to a JSON schema"):
        asyncio.run(provider.complete(ChatRequest(messages=REQUEST.messages, response_schema=SCHEMA)))


def test_structured_replies_are_cached_under_their_own_key(tmp_path):
    with LLMServer() as server:
        for _ in range(2):
            bridge_dataset(MATH, task="math", provider=_openai(server), cache_dir=tmp_path, reply_format="structured",
                           progress=False)
        assert server.call_count == 3  # the rerun came from the cache
    cache = CallCache(tmp_path / "calls.sqlite")
    assert len(cache) == 3
    stored = [json.loads(r[0]) for r in cache._conn.execute("SELECT request FROM calls")]
    assert all(r["response_schema"]["name"] == "bmc_edit_reply" for r in stored)


def test_cli_reply_format_structured_and_structured_output(tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in MATH))
    with LLMServer() as server:
        code = cli_main(["bridge", "--source", str(source), "--task", "math", "--provider", "openai", "--model", "m",
                         "--base-url", server.openai_base_url, "--reply-format", "structured",
                         "--structured-output", "structured_outputs", "--out", str(tmp_path / "out"),
                         "--cache-dir", str(tmp_path / "cache"), "--quiet"])
        assert [f for _, f, _ in server.structured] == ["structured_outputs"] * 3
    assert code == 0
    rows = [json.loads(l) for l in (tmp_path / "out" / "bridged.jsonl").read_text().splitlines()]
    assert [r["bmc_status"] for r in rows] == ["bridged"] * 3
    # the run summary says what the editor did: one revised sentence and the answer line per row
    editor = json.loads((tmp_path / "out" / "summary.json").read_text())["editor"]
    assert editor == {"rows": 3, "bridged": 3, "bridged_share": 1.0, "median_word_edit_distance_before": 5.0,
                      "median_word_edit_distance_after": 2.0, "answer_rows": 3, "only_final_answer_changed": 0,
                      "only_final_answer_changed_share": 0.0}
    summary_md = (tmp_path / "out" / "summary.md").read_text()
    assert "editor: median word edit distance over the bridged rows: y_w↔y_l 5, ỹ_w↔y_l 2" in summary_md
    assert "editor: only the final-answer line changed: 0 of 3 bridged QA/math rows (0.0%)" in summary_md
    capsys.readouterr()
    assert cli_main(["bridge", "--source", str(source), "--task", "math", "--provider", "anthropic", "--model", "c",
                     "--structured-output", "guided_json", "--out", str(tmp_path / "o2")]) == 2
    assert "--structured-output is for the openai and openai-batch providers, not 'anthropic'" in capsys.readouterr().err


def test_cli_structured_mistakes_are_one_line_exit_2_before_any_model_or_call(tmp_path, capsys, monkeypatch):
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in MATH))
    common = ["bridge", "--source", str(source), "--task", "math", "--out", str(tmp_path / "out"), "--reply-format",
              "structured", "--cache-dir", str(tmp_path / "cache")]
    # a provider class without grammar-constrained decoding (every built-in one has it now: transformers stands in)
    # is refused before its model is loaded (the path does not exist)
    from bmc_data.providers.transformers_local import TransformersProvider

    monkeypatch.setattr(TransformersProvider, "supports_response_schema", False)
    assert cli_main([*common, "--provider", "transformers", "--model", str(tmp_path / "no-model")]) == 2
    assert ("error: reply format 'structured' needs a provider that constrains replies to a JSON schema; the "
            "transformers provider cannot") in capsys.readouterr().err
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert cli_main([*common, "--provider", "openai", "--model", "gpt-4o-mini", "--structured-output", "guided_json"]) == 2
    assert "structured_output='guided_json' is a vLLM field; api.openai.com takes only 'response_format'" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_loopback_reply_conforms_to_the_schema_it_was_built_for():
    from bmc_data.bridging.protocol import reply_schema
    from llm_servers import schema_instance

    schema = reply_schema(MATH[0]["rejected"], requires_verdict=True, answer="2")
    assert conformance_problems(schema_instance([], schema), schema) == []
