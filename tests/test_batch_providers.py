"""OpenAI and Anthropic batch providers against a loopback batch server (tests/batch_servers.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_servers import BatchScript, BatchServer
from llm_servers import LLMServer, bridge_reply

from bmc_data import bridge_dataset
from bmc_data.errors import SystemicFailure
from bmc_data.providers import ChatRequest, Pricing, ProviderLimits, get_provider
from bmc_data.providers.anthropic_batch import AnthropicBatchProvider
from bmc_data.providers.batch_store import COLLECTED, BatchStore
from bmc_data.providers.openai_batch import OpenAIBatchProvider

REPO = Path(__file__).resolve().parents[1]
FAST = ProviderLimits(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=10)
APIS = ["openai", "anthropic"]
REQUEST = ChatRequest(messages=({"role": "user", "content": "hello there"},), max_tokens=20)


def pairs(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}", "id": f"p{i}"}
            for i in range(n)]


def make(api: str, server: BatchServer, **kwargs):
    kwargs = {"api_key": "sk-test", "limits": FAST, "poll_interval_s": 0.02, "progress": False, **kwargs}
    if api == "openai":
        return OpenAIBatchProvider("editor", base_url=server.openai_base_url, **kwargs)
    return AnthropicBatchProvider("editor", base_url=server.url, **kwargs)


def bridge(provider, data, cache_dir, **kwargs):
    return bridge_dataset(data, task="instruction", provider=provider, cache_dir=cache_dir, progress=False,
                          return_summary=True, **kwargs)


@pytest.fixture
def server():
    with BatchServer() as s:
        yield s


@pytest.mark.parametrize("api", APIS)
def test_in_progress_polls_partial_errors_and_a_malformed_line_are_resubmitted_once(api, server, tmp_path):
    server.script(BatchScript(polls=3, error_every=4, malformed_line=True))
    ds, summary = bridge(make(api, server), pairs(12), tmp_path)
    assert ds["bmc_status"] == ["bridged"] * 12
    assert ds["chosen"] == [f"bad answer {i} (revised)" for i in range(12)]  # each reply mapped to its own row
    assert ds["id"] == [f"p{i}" for i in range(12)]
    first, second = server.created(api)
    assert first.polls == 4 and len(first.requests) == 12
    # 3 error lines + the one request whose result line was malformed: resubmitted, once, in one batch
    assert len(second.requests) == 4
    assert summary.usage["resubmitted"] == 4 and summary.usage["batch_requests_submitted"] == 16
    assert summary.usage["calls"] == 12


@pytest.mark.parametrize("api", APIS)
def test_expired_batch_with_missing_results_resubmits_then_fails_with_reason(api, server, tmp_path):
    # first expiry: the unfinished requests are simply absent; second: OpenAI lists them as batch_expired errors
    server.script(BatchScript(final="expired", finished=5, unfinished_in_error_file=False),
                  BatchScript(final="expired", finished=2))
    ds, summary = bridge(make(api, server), pairs(8), tmp_path)
    statuses = ds["bmc_status"]
    assert statuses[:7] == ["bridged"] * 7 and statuses[7] == "failed"
    assert "batch request failed 2 time(s)" in ds["bmc_reason"][7]
    assert ("batch_expired" if api == "openai" else "expired (batch ended before this request ran)") in ds["bmc_reason"][7]
    assert [len(b.requests) for b in server.created(api)] == [8, 3]


@pytest.mark.parametrize("api", APIS)
def test_cancelled_batch_resubmits_its_unfinished_requests(api, server, tmp_path):
    server.script(BatchScript(final="cancelled", finished=2))
    ds, _ = bridge(make(api, server), pairs(5), tmp_path)
    assert ds["bmc_status"] == ["bridged"] * 5
    assert [len(b.requests) for b in server.created(api)] == [5, 3]


def test_openai_failed_batch_fails_every_row_after_one_resubmission(server, tmp_path):
    server.script(BatchScript(final="failed"), BatchScript(final="failed"))
    ds, _ = bridge(make("openai", server), pairs(3), tmp_path)
    assert ds["bmc_status"] == ["failed"] * 3
    assert all("batch failed: scripted validation failure" in r for r in ds["bmc_reason"])
    assert len(server.created()) == 2


@pytest.mark.parametrize("api", APIS)
def test_429_on_upload_is_retried(api, server, tmp_path):
    server.upload_faults.extend([429, 429])
    ds, summary = bridge(make(api, server), pairs(3), tmp_path)
    assert ds["bmc_status"] == ["bridged"] * 3 and len(server.created()) == 1
    assert summary.usage["retries"] == 2


def test_upload_refused_for_good_fails_rows_with_the_reason(server, tmp_path):
    server.upload_faults.extend([429] * 20)
    ds, _ = bridge(make("openai", server, limits=FAST.model_copy(update={"max_retries": 1})), pairs(2), tmp_path)
    assert ds["bmc_status"] == ["failed"] * 2
    assert all("submission failed" in r and "429" in r for r in ds["bmc_reason"])
    assert not server.created()


@pytest.mark.parametrize("api", APIS)
def test_rejected_key_on_upload_stops_the_run_and_a_rerun_submits_once(api, server, tmp_path):
    server.upload_faults.append(401)
    started = time.monotonic()
    with pytest.raises(SystemicFailure, match="401"):
        bridge(make(api, server), pairs(3), tmp_path)
    assert time.monotonic() - started < 10 and not server.created()
    ds, _ = bridge(make(api, server), pairs(3), tmp_path)  # the key fixed: nothing recorded blocks the rerun
    assert ds["bmc_status"] == ["bridged"] * 3 and len(server.created()) == 1


@pytest.mark.parametrize("api", APIS)
def test_shards_by_request_count_and_bytes(api, server, tmp_path):
    ds, _ = bridge(make(api, server, max_requests_per_batch=4), pairs(10), tmp_path)
    assert ds["bmc_status"] == ["bridged"] * 10
    assert [len(b.requests) for b in server.created()] == [4, 4, 2]
    line = make(api, server)._batch_line("x" * 64, REQUEST)
    by_bytes = make(api, server, max_bytes_per_batch=3 * (len(line) + 40))
    server.batches.clear()
    ds, _ = bridge(by_bytes, pairs(7), tmp_path / "b")
    assert ds["bmc_status"] == ["bridged"] * 7
    sizes = [len(b.requests) for b in server.created()]
    assert sum(sizes) == 7 and max(sizes) <= 3 and len(sizes) >= 3


def test_repair_turn_goes_into_the_next_round(tmp_path):
    def reply(messages):  # unparsable first replies; the repair turn (4 messages) is answered properly
        return bridge_reply(messages[:2]) if len(messages) > 2 else "I cannot follow the format"

    with BatchServer(reply=reply) as server:
        ds, summary = bridge(make("openai", server), pairs(4), tmp_path)
    assert ds["bmc_status"] == ["bridged"] * 4
    first, second = server.created()
    assert len(first.requests) == 4 and len(second.requests) == 4
    assert all(len(r["body"]["messages"]) == 4 for r in second.requests)  # original turns + reply + repair
    assert summary.usage["calls"] == 8


def test_results_equal_online_bridging(server, tmp_path):
    data = pairs(6)
    batch_ds, _ = bridge(make("openai", server), data, tmp_path / "batch")
    with LLMServer(reply=bridge_reply) as online:
        online_provider = get_provider("openai", "editor", base_url=online.openai_base_url, api_key="sk-test")
        online_ds, _ = bridge(online_provider, data, tmp_path / "online")
    columns = ["prompt", "chosen", "rejected", "bmc_status", "bmc_reason", "bmc_prompt_version", "id"]
    assert batch_ds.select_columns(columns).to_list() == online_ds.select_columns(columns).to_list()
    # the same requests travel in both: the batch bodies are the online bodies
    as_set = lambda bodies: sorted(json.dumps(b, sort_keys=True) for b in bodies)  # noqa: E731
    assert as_set(r["body"] for r in server.created()[0].requests) == as_set(online.bodies)


@pytest.mark.parametrize("api", APIS)
def test_cost_is_reported_at_batch_prices(api, server, tmp_path):
    provider = make(api, server, pricing=Pricing(2.0, 8.0))
    _, summary = bridge(provider, pairs(3), tmp_path)
    u = summary.usage
    assert u["input_tokens"] > 0 and u["cost_usd"] == pytest.approx((u["input_tokens"] * 1.0 + u["output_tokens"] * 4.0) / 1e6)
    assert u["price_basis"].startswith("batch (50%")
    assert "cost at batch (50% of list price)" in str(summary)


def test_rerun_reuses_cache_and_ledger_without_new_batches(server, tmp_path):
    bridge(make("openai", server), pairs(4), tmp_path)
    assert len(server.created()) == 1
    assert BatchStore.in_cache_dir(tmp_path).batches()[0].state == COLLECTED  # the ledger is in calls.sqlite
    ds, summary = bridge(make("openai", server), pairs(4), tmp_path)
    assert ds["bmc_status"] == ["bridged"] * 4 and len(server.created()) == 1
    assert summary.usage["cached_calls"] == 4 and summary.usage["calls"] == 0


def test_batch_provider_needs_a_cache(server):
    with pytest.raises(ValueError, match="batch ledger"):
        bridge_dataset(pairs(1), task="instruction", provider=make("openai", server), cache_dir=False, progress=False)


def test_batch_created_by_a_killed_process_is_found_by_its_token(server, tmp_path):
    """Killed after `create` but before the id was recorded: the rerun adopts the batch instead of a new one."""
    import asyncio

    provider = make("openai", server)
    provider.bind_store(tmp_path)
    request = REQUEST
    cid = provider.custom_id(request)
    record = provider.store.record_submission(api="openai", endpoint=provider.endpoint, model="editor", custom_ids=[cid])

    async def submit_without_recording():
        try:
            await provider._submit(record, [provider._batch_line(cid, request)])
        finally:
            await provider.aclose()

    asyncio.run(submit_without_recording())
    assert provider.store.get(record.local_id).batch_id is None and len(server.created()) == 1
    response = asyncio.run(_complete(make("openai", server, cache_dir=tmp_path), request))
    assert response.text and len(server.created()) == 1
    assert provider.store.get(record.local_id).state == COLLECTED


async def _complete(provider, request):
    try:
        return await provider.complete(request)
    finally:
        await provider.aclose()


def _bridge_command(url: str, source: Path, cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bmc_data", "bridge", "--source", str(source), "--task", "instruction",
            "--provider", "openai-batch", "--model", "editor", "--base-url", url, "--cache-dir", str(cache),
            "--out", str(out), "--poll-interval", "0.05", "--quiet"]


def test_sigkilled_run_resumes_its_batch_without_submitting_again(server, tmp_path):
    source = tmp_path / "pairs.jsonl"
    data = pairs(9)
    source.write_text("".join(json.dumps(row) + "\n" for row in data))
    command = _bridge_command(server.openai_base_url, source, tmp_path / "cache", tmp_path / "out")
    env = {**os.environ, "OPENAI_API_KEY": "", "PYTHONPATH": str(REPO)}
    server.hold = True  # submitted, never finishing while the first process lives
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # wait until the child has submitted and is polling (it recorded the batch id before its first poll)
        while not any(m == "GET" and p.startswith("/v1/batches/") for m, p in server.log):
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the bridging process never polled"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(server.created()) == 1 and not (tmp_path / "out" / "bridged.jsonl").exists()
    ledger = BatchStore.in_cache_dir(tmp_path / "cache").batches()
    assert [r.batch_id for r in ledger] == ["batch_1"] and ledger[0].open

    server.hold = False
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(server.created()) == 1  # no new batch
    assert sorted(server.submitted_custom_ids()) == sorted(set(server.submitted_custom_ids()))
    rows = [json.loads(line) for line in (tmp_path / "out" / "bridged.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [row["id"] for row in data]  # input order
    assert [r["bmc_status"] for r in rows] == ["bridged"] * 9
    assert [r["chosen"] for r in rows] == [f"{row['rejected']} (revised)" for row in data]


def test_batches_cli_lists_and_cancels(server, tmp_path, capsys):
    from bmc_data.__main__ import main

    bridge(make("openai", server), pairs(2), tmp_path)
    store = BatchStore.in_cache_dir(tmp_path)
    provider = make("openai", server, cache_dir=tmp_path)
    import asyncio

    server.hold = True
    request = REQUEST
    cid = provider.custom_id(request)
    record = store.record_submission(api="openai", endpoint=provider.endpoint, model="editor", custom_ids=[cid])

    async def submit():
        try:
            return await provider._submit(record, [provider._batch_line(cid, request)])
        finally:
            await provider.aclose()

    store.update(record.local_id, batch_id=asyncio.run(submit()), state="submitted")
    assert main(["batches", "--cache-dir", str(tmp_path)]) == 0
    assert main(["batches", "--cache-dir", str(tmp_path), "--cancel", "batch_2"]) == 0
    assert server.batches["batch_2"].cancel_requested
    assert store.get(record.local_id).state == "cancelling"
    capsys.readouterr()
    assert main(["batches", "--cache-dir", str(tmp_path), "--cancel", "nope"]) == 2
    assert "error: --cancel nope: no open batch with that id" in capsys.readouterr().err  # (was on stdout)
    assert main(["batches", "--cache-dir", str(tmp_path / "missing")]) == 2


def test_batches_cli_table(server, tmp_path, capsys):
    from bmc_data.__main__ import main

    bridge(make("openai", server), pairs(2), tmp_path)
    capsys.readouterr()
    assert main(["batches", "--cache-dir", str(tmp_path), "--refresh"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["#", "api", "batch", "id"]
    assert out[1].split()[:6] == ["1", "openai", "batch_1", "completed,", "collected", "2"]


@pytest.mark.parametrize("api", APIS)
def test_a_recorded_open_batch_is_waited_for_not_resubmitted(api, server, tmp_path):
    """What a rerun after a kill sees: requests already in a submitted batch wait for it (both APIs)."""
    import asyncio

    from bmc_data.bridging.bridge import Bridger
    from bmc_data.bridging.templates import load_template
    from bmc_data.pairs.schema import PreferencePair, Task

    data = pairs(3)
    first = make(api, server, cache_dir=tmp_path)
    template = load_template("instruction")
    bridger = Bridger(first, template, Task.INSTRUCTION)
    requests = [bridger._request(template.render(prompt=p["prompt"], chosen=p["chosen"], rejected=p["rejected"]))
                for p in data]
    cids = [first.custom_id(r) for r in requests]
    record = first.store.record_submission(api=api, endpoint=first.endpoint, model="editor", custom_ids=cids)

    async def submit():
        try:
            return await first._submit(record, [first._batch_line(c, r) for c, r in zip(cids, requests)])
        finally:
            await first.aclose()

    first.store.update(record.local_id, batch_id=asyncio.run(submit()), state="submitted")
    assert len(server.created()) == 1
    ds, summary = bridge(make(api, server), [PreferencePair(**p) for p in data], tmp_path)
    assert ds["bmc_status"] == ["bridged"] * 3 and len(server.created()) == 1
    assert summary.usage["batch_requests_submitted"] == 0 and summary.usage["calls"] == 3


def test_batch_ledger_never_stores_a_key_a_server_echoes(tmp_path):
    from bmc_data.redaction import register_secret

    key = "sk-batch-ledger-ECHO-0123456789"
    register_secret(key)
    store = BatchStore.in_cache_dir(tmp_path)
    record = store.record_submission(api="openai", endpoint="http://127.0.0.1:1/v1", model="editor", custom_ids=["a"])
    store.store_results(record.local_id, {}, {"a": f"401: Incorrect API key provided: {key}"},
                        detail=f"failed: Bearer {key}")
    store._conn.commit()
    data = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert key.encode() not in data and key[4:20].encode() not in data
    assert "401: Incorrect API key provided" in store.history(["a"], api="openai", endpoint="http://127.0.0.1:1/v1")["a"].errors[-1]


@pytest.mark.parametrize("api", APIS)
def test_batch_and_online_providers_share_one_identity(api, server):
    """The same model at the same endpoint answers alike online and in a batch: one cache key for both."""
    from bmc_data.providers.anthropic_messages import AnthropicProvider
    from bmc_data.providers.openai_chat import OpenAIProvider

    batch = make(api, server)
    online_class, base_url = (OpenAIProvider, server.openai_base_url) if api == "openai" else (AnthropicProvider, server.url)
    online = online_class("editor", api_key="sk-test", base_url=base_url)
    assert batch.identity() == online.identity() == {"provider": api, "model": "editor", "base_url": batch.base_url}


def test_a_batch_never_created_is_no_attempt(server, tmp_path):
    """A batch that never reached the provider leaves no request behind: no attempt counted, none in the table."""
    provider = make("openai", server, cache_dir=tmp_path)
    store = provider.store
    kept = store.record_submission(api="openai", endpoint=provider.endpoint, model="editor", custom_ids=["a"])
    store.store_results(kept.local_id, {}, {"a": "no result (batch expired)"})
    record = store.record_submission(api="openai", endpoint=provider.endpoint, model="editor", custom_ids=["b", "c"])
    store.forget_unsent(record.local_id)
    assert set(store.history(["a", "b", "c"], api="openai", endpoint=provider.endpoint)) == {"a"}
    assert store.custom_ids(record.local_id) == [] and store.get(record.local_id).request_count == 0
    assert store.request_counts() == {kept.local_id: (0, 1)}
