"""A pool of three loopback OpenAI-compatible endpoints, one of which goes down mid-run."""

from __future__ import annotations

import logging
import threading

import pytest
from llm_servers import Fault, LLMServer, bridge_reply

from bmc_data import bridge_dataset
from bmc_data.cli.args import add_provider_args, build_provider
from bmc_data.errors import SystemicFailure
from bmc_data.providers import ChatRequest, ProviderError, ProviderLimits
from bmc_data.providers.openai_chat import OpenAIProvider
from bmc_data.providers.pool import EndpointPool

LIMITS = ProviderLimits(max_concurrency=8, timeout_s=5, max_retries=0)


def pairs(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"q {i}", "chosen": f"good {i}", "rejected": f"bad {i}", "id": f"p{i}"} for i in range(n)]


def pool_of(servers, **kwargs) -> EndpointPool:
    return EndpointPool.from_urls([s.openai_base_url for s in servers], "editor", limits=LIMITS, api_key="sk-test",
                                  **kwargs)


def test_endpoint_that_starts_refusing_connections_mid_run_loses_no_row(caplog, tmp_path):
    servers = [LLMServer(reply=bridge_reply, latency_s=0.01).start() for _ in range(3)]
    dying = servers[1]
    went_down = threading.Event()

    def die_after_five(index, body):
        if index >= 5:  # from its 6th request on: close the listener, drop what is in flight
            if not went_down.is_set():
                went_down.set()
                def refuse():  # stop accepting and close the listening socket: new connections are refused
                    dying._httpd.shutdown()
                    dying._httpd.server_close()

                threading.Thread(target=refuse, daemon=True).start()
            return Fault.drop()
        return None

    dying.fault_fn = die_after_five
    try:
        pool = pool_of(servers, eject_after=2, backoff_s=30)
        with caplog.at_level(logging.WARNING, logger="bmc_data.providers.pool"):
            ds, summary = bridge_dataset(pairs(60), task="instruction", provider=pool, cache_dir=tmp_path,
                                         concurrency=12, progress=False, return_summary=True)
    finally:
        for s in servers:
            s.stop()
    assert went_down.is_set()
    assert ds["id"] == [f"p{i}" for i in range(60)]  # every row, once, in input order
    assert ds["bmc_status"] == ["bridged"] * 60 and ds["chosen"] == [f"bad {i} (revised)" for i in range(60)]
    answered = [sum(1 for r in s.requests if r.fault is None) for s in servers]
    assert sum(answered) == 60  # no row answered twice (the pool retried only what got no reply)
    by_endpoint = summary.usage["by_endpoint"]
    assert list(by_endpoint.values()) == answered and by_endpoint[dying.openai_base_url] == 5
    assert summary.usage["ejections"] == {dying.openai_base_url: 1}
    assert any("leaves the pool" in r.getMessage() and dying.openai_base_url in r.getMessage() for r in caplog.records)
    assert "calls per endpoint:" in str(summary)


def test_least_in_flight_routing_spreads_the_load():
    import asyncio

    servers = [LLMServer(latency_s=0.05).start() for _ in range(3)]
    try:
        pool = pool_of(servers)

        async def run():
            try:
                requests = [ChatRequest(messages=({"role": "user", "content": f"r{i}"},)) for i in range(30)]
                return await asyncio.gather(*(pool.complete(r) for r in requests))
            finally:
                await pool.aclose()

        replies = asyncio.run(run())
    finally:
        for s in servers:
            s.stop()
    assert [r.text for r in replies] == [f"r{i}" for i in range(30)]
    assert [s.call_count for s in servers] == [10, 10, 10]


def test_a_request_the_server_refuses_fails_at_once_and_is_not_retried_elsewhere():
    import asyncio

    servers = [LLMServer(faults=[Fault.error(400, "bad request")]).start() for _ in range(2)]
    try:
        pool = pool_of(servers)
        with pytest.raises(ProviderError, match="400"):
            asyncio.run(pool.complete(ChatRequest(messages=({"role": "user", "content": "x"},))))
    finally:
        for s in servers:
            s.stop()
    assert sum(s.call_count for s in servers) == 1


def test_all_endpoints_down_stops_the_run_naming_every_endpoint(tmp_path):
    servers = [LLMServer().start() for _ in range(2)]
    urls = [s.openai_base_url for s in servers]
    for s in servers:
        s.stop()
    pool = EndpointPool.from_urls(urls, "editor", limits=LIMITS, api_key="sk-test", eject_after=1, backoff_s=0.01,
                                  max_attempts=4)
    # every endpoint refusing connections is a systemic failure of the run (docs/errors.md), not a row failure
    with pytest.raises(SystemicFailure, match="every endpoint failed") as caught:
        bridge_dataset(pairs(2), task="instruction", provider=pool, cache_dir=tmp_path, progress=False)
    assert all(url in str(caught.value) for url in urls) and "refused the connection" in str(caught.value)


def test_cli_base_url_repeatable_or_comma_list_builds_a_pool():
    import argparse

    parser = argparse.ArgumentParser()
    add_provider_args(parser, cache_default="x")
    args = parser.parse_args(["--provider", "openai", "--model", "m", "--base-url", "http://a:1/v1,http://b:2/v1",
                              "--base-url", "http://c:3/v1"])
    pool = build_provider(args)
    assert isinstance(pool, EndpointPool) and [e.url for e in pool.endpoints] == ["http://a:1/v1", "http://b:2/v1", "http://c:3/v1"]
    assert all(e.provider.limits.max_retries == 0 for e in pool.endpoints)
    single = build_provider(parser.parse_args(["--provider", "openai", "--model", "m", "--base-url", "http://a:1/v1"]))
    assert isinstance(single, OpenAIProvider) and single.base_url == "http://a:1/v1"
    # a Namespace built by hand (experiments/qa_ablation) passes one URL as a string
    plain = build_provider(argparse.Namespace(provider="openai", model="m", base_url="http://a:1/v1", concurrency=4,
                                              requests_per_minute=None, tokens_per_minute=None, timeout=None))
    assert isinstance(plain, OpenAIProvider) and plain.base_url == "http://a:1/v1"
    with pytest.raises(ValueError, match="pool of openai endpoints"):
        build_provider(parser.parse_args(["--provider", "anthropic", "--model", "m", "--base-url", "http://a,http://b"]))
    from bmc_data.providers import get_provider

    assert isinstance(get_provider("openai", "m", base_url=["http://a/v1", "http://b/v1"]), EndpointPool)
    with pytest.raises(ValueError, match="twice"):
        EndpointPool.from_urls(["http://a/v1", "http://a/v1"], "m")
