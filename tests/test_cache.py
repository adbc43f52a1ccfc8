"""The on-disk call cache: keys, hits without server calls, durability across reopen and SIGKILL."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from llm_servers import Fault, LLMServer

from bmc_data.providers import (
    ChatRequest,
    ChatResponse,
    Pricing,
    ProviderError,
    ProviderLimits,
)
from bmc_data.errors import InputError
from bmc_data.providers.cache import CachedProvider, CallCache, cache_key
from bmc_data.providers.openai_chat import OpenAIProvider

SECRET = "sk-test-SECRET-cache-0123456789"
FAST = ProviderLimits(max_concurrency=16, timeout_s=2.0, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05)
IDENTITY = {"provider": "openai", "model": "m", "base_url": "http://x/v1"}


def request(text: str = "hello world", **kwargs) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},), **kwargs)


def cached_provider(server: LLMServer, path: Path, namespace: str = "qa-v1@abc") -> CachedProvider:
    inner = OpenAIProvider("m", base_url=server.openai_base_url, api_key=SECRET, limits=FAST,
                           pricing=Pricing(1.0, 1.0))
    return CachedProvider(inner, CallCache(path), namespace=namespace)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def test_key_is_canonical_and_covers_what_changes_the_answer():
    base = cache_key(IDENTITY, "v1", request())
    assert base == cache_key(dict(reversed(IDENTITY.items())), "v1", request())  # key order
    assert base == cache_key(IDENTITY, "v1", request(temperature=0))  # 0 == 0.0
    assert len(base) == 64 and int(base, 16) >= 0
    different = [
        cache_key({**IDENTITY, "model": "other"}, "v1", request()),
        cache_key({**IDENTITY, "base_url": "http://y/v1"}, "v1", request()),
        cache_key(IDENTITY, "v2", request()),
        cache_key(IDENTITY, "v1", request("hello there")),
        cache_key(IDENTITY, "v1", request(max_tokens=7)),
        cache_key(IDENTITY, "v1", request(temperature=0.7)),
        cache_key(IDENTITY, "v1", request(seed=1)),
        cache_key(IDENTITY, "v1", request(top_p=0.5)),
    ]
    assert len({base, *different}) == len(different) + 1


def test_hit_makes_no_server_call(server, tmp_path):
    provider = cached_provider(server, tmp_path / "calls.sqlite")
    first = run(provider.complete(request()))
    second = run(provider.complete(request()))
    assert server.call_count == 1
    assert not first.cached and second.cached and second.text == first.text == "hello world"
    assert (second.input_tokens, second.output_tokens, second.finish_reason) == (2, 2, "stop")
    usage = provider.usage
    assert (usage.calls, usage.cached_calls) == (1, 1) and usage.cost_usd == pytest.approx(4 / 1e6)
    assert provider.usage is provider.inner.usage  # one account for the whole run
    stats = provider.cache.stats()
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 1 and stats["writes"] == 1
    assert stats["by_namespace"] == {"qa-v1@abc": 1}


def test_cache_survives_reopening(server, tmp_path):
    path = tmp_path / "calls.sqlite"
    provider = cached_provider(server, path)
    run(provider.complete(request("one")))
    run(provider.complete(request("two")))
    provider.cache.close()
    reopened = cached_provider(server, path)
    assert [run(reopened.complete(request(t))).text for t in ("one", "two")] == ["one", "two"]
    assert server.call_count == 2 and reopened.usage.cached_calls == 2 and reopened.usage.calls == 0
    assert len(reopened.cache) == 2


def test_namespace_and_identity_separate_entries(server, tmp_path):
    path = tmp_path / "calls.sqlite"
    run(cached_provider(server, path, namespace="v1").complete(request()))
    run(cached_provider(server, path, namespace="v2").complete(request()))
    assert server.call_count == 2


def test_failed_calls_are_not_cached_but_truncated_ones_are(server, tmp_path):
    provider = cached_provider(server, tmp_path / "calls.sqlite")
    server.add_faults(Fault.error(400, "bad"))
    with pytest.raises(ProviderError):
        run(provider.complete(request()))
    assert run(provider.complete(request())).text == "hello world"  # the failure was not stored
    assert server.call_count == 2

    server.add_faults(Fault.truncated())
    cut = run(provider.complete(request("a long reply here")))
    again = run(provider.complete(request("a long reply here")))
    assert cut.finish_reason == again.finish_reason == "length" and again.cached and again.text == cut.text
    assert server.call_count == 3


def test_identical_requests_in_flight_make_one_call(tmp_path):
    with LLMServer(latency_s=0.2) as server:
        provider = cached_provider(server, tmp_path / "calls.sqlite")

        async def many():
            return await asyncio.gather(*(provider.complete(request("same")) for _ in range(5)))

        responses = run(many())
    assert server.call_count == 1 and [r.text for r in responses] == ["same"] * 5
    assert sum(r.cached for r in responses) == 4 and provider.usage.cached_calls == 4


def test_in_flight_failure_reaches_every_waiter(tmp_path):
    with LLMServer(latency_s=0.1, faults=[Fault.error(401, "no")]) as server:
        provider = cached_provider(server, tmp_path / "calls.sqlite")

        async def many():
            return await asyncio.gather(*(provider.complete(request("same")) for _ in range(3)), return_exceptions=True)

        results = run(many())
    assert server.call_count == 1 and all(isinstance(r, ProviderError) for r in results)


def test_many_concurrent_writers_lose_nothing(tmp_path):
    with LLMServer() as server:
        provider = cached_provider(server, tmp_path / "calls.sqlite")

        async def many():
            return await asyncio.gather(*(provider.complete(request(f"row {i}")) for i in range(100)))

        run(many())
    assert len(provider.cache) == 100
    with sqlite3.connect(tmp_path / "calls.sqlite") as conn:  # another connection sees every committed row
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 100
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_no_secret_in_the_cache_file(server, tmp_path):
    path = tmp_path / "calls.sqlite"
    run(cached_provider(server, path).complete(request()))
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("calls.sqlite"))
    assert SECRET.encode() not in blob and b"hello world" in blob


def test_rows_committed_before_sigkill_survive(tmp_path):
    path = tmp_path / "calls.sqlite"
    child = textwrap.dedent(f"""
        import os, signal, sys
        from bmc_data.providers.cache import CallCache, cache_key
        from bmc_data.providers.base import ChatRequest, ChatResponse
        cache = CallCache({str(path)!r})
        for i in range(50):
            req = ChatRequest(messages=({{"role": "user", "content": f"q{{i}}"}},))
            key = cache_key({{"provider": "p", "model": "m"}}, "ns", req)
            cache.put(key, ChatResponse(text=f"a{{i}}", finish_reason="stop"), namespace="ns",
                      identity={{"provider": "p", "model": "m"}}, request=req)
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == -9 and "written" in done.stdout, done.stderr
    with CallCache(path) as cache:
        assert len(cache) == 50
        req = ChatRequest(messages=({"role": "user", "content": "q49"},))
        hit = cache.get(cache_key({"provider": "p", "model": "m"}, "ns", req))
        assert hit == ChatResponse(text="a49", finish_reason="stop", cached=True)
        assert cache._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_unreadable_entry_is_a_miss(tmp_path):
    with CallCache(tmp_path / "c.sqlite") as cache:
        cache.put("k", ChatResponse(text="x", finish_reason="stop"), namespace="n", identity=IDENTITY, request=request())
        cache._conn.execute("UPDATE calls SET response = 'not json' WHERE key = 'k'")
        assert cache.get("k") is None


def test_schema_version_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    CallCache(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(InputError, match="schema version 99.*move it aside"):
        CallCache(path)


def test_cached_provider_keeps_provenance(server, tmp_path):
    provider = cached_provider(server, tmp_path / "calls.sqlite")
    assert provider.identity() == provider.inner.identity()
    assert provider.name == "openai" and provider.model == "m"
    assert SECRET not in repr(provider)
