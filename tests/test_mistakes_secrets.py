"""Secrets in every form (credentials inside URLs, Hub tokens given to bmc_train), redaction that never rewrites
the user's data (placeholder keys, secrets the user wrote), a cache that stores what the server sent, and one cache
shared by `bridge` and `publish`. Real loopback servers; every written byte is searched, parquet and SQLite decoded."""

from __future__ import annotations

import base64
import copy
import json
import logging
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from batch_servers import BatchServer
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from llm_servers import Fault, LLMServer, bridge_reply
from test_mistakes_cli import _env, _one_error_line, _pairs

from bmc_data import bridge_dataset, redaction
from bmc_data.__main__ import main as bridge_main
from bmc_data.providers import ChatRequest, ProviderLimits, get_provider
from bmc_data.providers.batch_store import BatchStore
from bmc_data.providers.cache import CachedProvider, CallCache, cache_key
from bmc_data.providers.openai_batch import OpenAIBatchProvider
from bmc_data.publish import main as publish_main
from bmc_data.redaction import redact, secret_forms

REPO = Path(__file__).resolve().parents[1]
PW = "pw-Secret-7f3a9c1eB2"
QKEY = "qk-Secret-1b2c3d4e5f60"
BASIC = base64.b64encode(f"bmcuser:{PW}".encode()).decode()
FAST = ProviderLimits(max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=10)


def _cred_url(server_url: str) -> str:
    """`http://127.0.0.1:PORT/v1` with a user:password and an `?api_key=` in it."""
    return server_url.replace("http://", f"http://bmcuser:{PW}@") + f"?api_key={QKEY}"


def _forms() -> set[str]:
    return secret_forms(PW) | secret_forms(QKEY) | {BASIC}


def _scan(*texts: str | bytes, folders: tuple[Path, ...] = ()) -> None:
    """No form of the URL's credentials in `texts` nor in any byte under `folders` (parquet and SQLite decoded)."""
    blobs = [t.encode() if isinstance(t, str) else t for t in texts]
    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            blobs.append(path.read_bytes())
            if path.suffix == ".parquet":
                blobs.append(json.dumps(pq.read_table(path).to_pylist(), default=str).encode())
            if path.suffix == ".sqlite":
                with sqlite3.connect(path) as conn:
                    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                        blobs.append(json.dumps(conn.execute(f"SELECT * FROM {table}").fetchall()).encode())
    for form in _forms():
        for blob in blobs:
            assert form.encode() not in blob, form


def _run(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bmc_data", *argv], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)


# --- credentials in URLs -----------------------------------------------------------------------------------------


def test_split_url_registers_every_form_and_shows_the_url_without_them():
    url = redaction.split_url(f"http://bmcuser:{PW}@host:8000/v1?api-version=2024&api_key={QKEY}")
    assert url.public == "http://host:8000/v1?api-version=2024"
    assert url.connect == f"http://bmcuser:{PW}@host:8000/v1" and url.query == {"api-version": "2024", "api_key": QKEY}
    text = f"Basic {BASIC}; {PW}; key={QKEY}; {QKEY.replace('-', '%2D')}; bmcuser:{PW}"
    assert all(form not in redact(text) for form in _forms())


def test_url_credentials_reach_no_summary_log_error_or_cache_and_the_query_is_sent_right(tmp_path):
    """`--base-url http://user:PW@host/v1?api_key=KEY`: Basic auth and the query on every request, the path intact;
    summaries show http://host/v1; a 401 echoing the Basic header (exit 3) and --verbose logs leak nothing."""
    first, second = _pairs(tmp_path / "a.jsonl", 2), tmp_path / "b.jsonl"
    second.write_text(json.dumps({"prompt": "Other?", "chosen": "Yes.", "rejected": "No."}) + "\n"
                      + json.dumps({"prompt": "More?", "chosen": "Yes!", "rejected": "No!"}) + "\n")
    state = {"echo": False}

    def fault(index, body):  # once asked to, the server echoes the request's Authorization header in a 401
        return Fault.error(401, f"bad credentials in {server.requests[0].headers['authorization']}") if state["echo"] else None

    with LLMServer(reply=bridge_reply, fault_fn=fault) as server:
        url = _cred_url(server.openai_base_url)
        ok = _run(tmp_path, "bridge", "--source", str(first), "--task", "instruction", "--provider", "openai",
                  "--model", "editor", "--base-url", url, "--out", str(tmp_path / "out"), "--verbose")
        assert ok.returncode == 0, ok.stderr
        assert {r.path for r in server.requests} == {f"/v1/chat/completions?api_key={QKEY}"}
        assert {r.headers["authorization"] for r in server.requests} == {f"Basic {BASIC}"}
        state["echo"] = True
        stopped = _run(tmp_path, "bridge", "--source", str(second), "--task", "instruction", "--provider", "openai",
                       "--model", "editor", "--base-url", url, "--out", str(tmp_path / "out2"), "--verbose")
    public = server.openai_base_url
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["provider"]["base_url"] == public
    assert stopped.returncode == 3 and "HTTP 401" in _one_error_line(stopped) and public in stopped.stderr
    _scan(ok.stdout, ok.stderr, stopped.stdout, stopped.stderr, folders=(tmp_path / "out", tmp_path / "cache"))


def test_credentials_in_openai_base_url_and_in_a_pool_are_secrets_too(tmp_path, monkeypatch):
    with LLMServer(reply=bridge_reply) as one, LLMServer(reply=bridge_reply) as two:
        monkeypatch.setenv("OPENAI_BASE_URL", _cred_url(one.openai_base_url))
        single = get_provider("openai", "editor", api_key="sk-unused-Abc123Def456", limits=FAST)
        assert single.base_url == one.openai_base_url and PW not in repr(single)
        pool = get_provider("openai", "editor", base_url=[_cred_url(one.openai_base_url), _cred_url(two.openai_base_url)],
                            limits=FAST)
        data, summary = bridge_dataset(_rows(4), task="instruction", provider=pool, cache_dir=tmp_path / "cache",
                                       progress=False, return_summary=True)
        requests = one.requests + two.requests
    assert set(summary.usage["by_endpoint"]) == {one.openai_base_url, two.openai_base_url}
    assert {r.path for r in requests} == {f"/v1/chat/completions?api_key={QKEY}"}
    _scan(str(summary), json.dumps(summary.to_dict()), json.dumps(data.to_list()), folders=(tmp_path,))


def test_the_batch_ledger_and_the_batches_command_show_no_url_credentials(tmp_path, monkeypatch, capsys):
    with BatchServer() as server:
        url = _cred_url(server.openai_base_url)
        provider = OpenAIBatchProvider("editor", api_key="sk-test-Batch0123456789", base_url=url, limits=FAST,
                                       poll_interval_s=0.02, progress=False)
        _, summary = bridge_dataset(_rows(2), task="instruction", provider=provider, cache_dir=tmp_path / "cache",
                                    progress=False, return_summary=True)
        assert summary.counts == {"bridged": 2}
        assert BatchStore.in_cache_dir(tmp_path / "cache").batches()[0].endpoint == server.openai_base_url
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-Batch0123456789")
        monkeypatch.setenv("OPENAI_BASE_URL", url)  # the credentials come back from the environment, not the ledger
        assert bridge_main(["batches", "--cache-dir", str(tmp_path / "cache"), "--refresh"]) == 0
    out = capsys.readouterr()
    assert server.openai_base_url in out.out
    _scan(out.out, out.err, folders=(tmp_path,))


# --- redaction never rewrites data ---------------------------------------------------------------------------------


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"How do I reset my password? ({i})", "chosen": "Open settings, then Password.",
             "rejected": "Use the password page."} for i in range(n)]


@pytest.mark.parametrize("value", ["password", "lm-studio", "none", "EMPTY", "sk-dummy", "sk-no-key-required",
                                   "sk-xxxxxxxxxxxxxxxx", "12341234"])
def test_placeholder_keys_are_not_secrets(value):
    assert redaction.placeholder_reason(value) is not None
    assert redaction.placeholder_reason("sk-proj-abcDEF123ghiJKL456mno") is None and redaction.placeholder_reason("hunter22") is None


def test_a_dummy_key_rewrites_no_data_and_a_rerun_without_it_gives_the_same_rows(tmp_path, monkeypatch, caplog):
    """OPENAI_API_KEY=password (a local server's dummy key): "password" in the data survives, with one warning."""
    monkeypatch.setenv("OPENAI_API_KEY", "password")
    caplog.set_level(logging.WARNING)
    with LLMServer(reply=bridge_reply) as server:
        first = bridge_dataset(_rows(3), task="instruction", provider=get_provider(
            "openai", "editor", base_url=server.openai_base_url, limits=FAST), cache_dir=tmp_path / "c", progress=False)
        monkeypatch.delenv("OPENAI_API_KEY")
        again = bridge_dataset(_rows(3), task="instruction", provider=get_provider(
            "openai", "editor", base_url=server.openai_base_url, limits=FAST), cache_dir=tmp_path / "c", progress=False)
        assert server.call_count == 3  # the rerun came from the cache
    for row in first:
        assert "reset my password?" in row["prompt"] and row["rejected"] == "Use the password page."
        assert row["original_chosen"] == "Open settings, then Password." and "password page" in row["chosen"]
    assert first.to_list() == again.to_list()
    warnings = [r.getMessage() for r in caplog.records if "OPENAI_API_KEY is not treated as a secret" in r.getMessage()]
    assert len(warnings) == 1 and "common placeholder" in warnings[0]


def test_a_real_secret_the_user_wrote_is_kept_one_the_server_added_is_masked_and_the_cache_holds_neither(tmp_path):
    key = "sk-live-Real0Key1In2User3Data4"
    echoed = "sk-live-Echo5Of6A7Header8Value9"
    rows = [{"prompt": "Why does my key fail?", "chosen": "Rotate it.", "rejected": f"Paste {key} again."}]
    reply = lambda messages: bridge_reply(messages).replace("</revised>", f" [{echoed}]</revised>")
    with LLMServer(reply=reply) as server:
        provider = get_provider("openai", "editor", base_url=server.openai_base_url, api_key=key, limits=FAST)
        redact("", echoed)  # a secret of this process too (e.g. another provider's key)
        first = bridge_dataset(rows, task="instruction", provider=provider, cache_dir=tmp_path / "c", progress=False)
        again = bridge_dataset(rows, task="instruction", provider=provider, cache_dir=tmp_path / "c", progress=False)
        assert server.call_count == 1
    row = first[0]
    assert row["rejected"] == f"Paste {key} again." and key in row["chosen"]  # the user's own text, unchanged
    assert echoed not in row["chosen"] and "[***]" in row["chosen"]
    assert first.to_list() == again.to_list()  # restored from the cache byte for byte
    cache_bytes = (tmp_path / "c" / "calls.sqlite").read_bytes()
    with sqlite3.connect(tmp_path / "c" / "calls.sqlite") as conn:
        stored = json.dumps(conn.execute("SELECT request, response FROM calls").fetchall())
    for secret in (key, echoed):
        assert secret.encode() not in cache_bytes and secret not in stored


# --- one cache ----------------------------------------------------------------------------------------------------


def test_the_seed_at_temperature_0_does_not_split_the_cache_but_old_entries_are_still_found(tmp_path):
    request = lambda seed, t=0.0: ChatRequest(messages=({"role": "user", "content": "hi"},), max_tokens=8,
                                              temperature=t, seed=seed)
    ident = {"provider": "openai", "model": "m"}
    assert cache_key(ident, "ns", request(0), reply_only=True) == cache_key(ident, "ns", request(42), reply_only=True)
    assert cache_key(ident, "ns", request(1, 0.7), reply_only=True) == cache_key(ident, "ns", request(1, 0.7))
    with LLMServer(reply=lambda m: "fresh") as server:
        inner = get_provider("openai", "m", base_url=server.openai_base_url, api_key="sk-x-Abc123Def456", limits=FAST)
        cache = CallCache(tmp_path / "calls.sqlite")
        from bmc_data.providers.base import ChatResponse
        old = ChatResponse(text="from an old cache", finish_reason="stop", input_tokens=1, output_tokens=3)
        cache.put(cache_key(inner.identity(), "ns", request(7)), old, namespace="ns", identity=inner.identity(),
                  request=request(7))  # a key written before the rule: with its seed
        from bmc_data.bridging.concurrency import run_sync
        assert run_sync(CachedProvider(inner, cache, "ns").complete(request(7))).text == "from an old cache"
        assert server.call_count == 0


def test_publish_after_bridge_on_the_same_data_makes_no_call(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-OneCache0123456789")
    source = _pairs(tmp_path / "pairs.jsonl", 3)
    with LLMServer(reply=bridge_reply) as server:
        common = ["--source", str(source), "--task", "instruction", "--provider", "openai", "--model", "editor",
                  "--base-url", server.openai_base_url, "--quiet"]
        assert bridge_main(["bridge", *common, "--out", str(tmp_path / "bridged")]) == 0
        calls = server.call_count
        assert publish_main([*common, "--no-push", "--no-stats", "--no-report", "--out", str(tmp_path / "pub")]) == 0
        assert server.call_count == calls == 3
    capsys.readouterr()


# --- Hub tokens given to bmc_train -----------------------------------------------------------------------------------


def test_the_hub_token_is_left_out_of_pickles_but_kept_for_the_push():
    from bmc_train.config import BMCConfig

    config = BMCConfig(output_dir="unused", hub_token="hf_TokenForThePush0123456789", report_to="none")
    assert copy.deepcopy(config).hub_token == config.hub_token == copy.copy(config).hub_token
    data = pickle.dumps(config)
    assert b"hf_TokenForThePush0123456789" not in data and pickle.loads(data).hub_token is None


@pytest.mark.slow  # a real (tiny) training run with checkpoints, pushed to a loopback Hub
def test_bmc_train_writes_and_pushes_no_byte_of_the_hub_token(tmp_path):
    import os

    import torch
    from datasets import Dataset
    from hub_server import HubServer

    from bmc_train.testing import build_tiny_model

    token = "hf_TrainPushToken0a1B2c3D4e5F6g7H"
    rows = [{"prompt": f"Question {i}?", "chosen": f"The answer is {i}.", "rejected": f"It is {i + 1}.",
             "original_chosen": f"The answer is {i}.", "bmc_status": "bridged"} for i in range(8)]
    (tmp_path / "data" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "data" / "data" / "train-00000-of-00001.parquet"))
    model = build_tiny_model(tmp_path / "tiny", [r["prompt"] + " " + r["chosen"] + " " + r["rejected"] for r in rows])
    out = tmp_path / "run"
    with HubServer() as hub:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false"}
        env.pop("HF_TOKEN", None)
        proc = subprocess.run(
            [sys.executable, "-m", "bmc_train", "--model_name_or_path", str(model), "--dataset_name",
             str(tmp_path / "data"), "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size",
             "4", "--save_steps", "1", "--logging_steps", "1", "--report_to", "none", "--bf16", "false",
             "--gradient_checkpointing", "false", "--max_length", "64", "--disable_tqdm", "true",
             "--push_to_hub", "--hub_model_id", "bmc-org/tiny-bmc", "--hub_token", token, "--verbose"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert hub.seen_tokens() == {token}  # the push itself used it
        pushed = hub.files("bmc-org/tiny-bmc", repo_type="model")
    assert "training_args.bin" in pushed
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.parent.name.startswith("checkpoint-") and p.name == "training_args.bin" for p in written)
    for name, blob in [*((str(p), p.read_bytes()) for p in written), *pushed.items(), ("output", proc.stdout + proc.stderr)]:
        data = blob.encode() if isinstance(blob, str) else blob
        assert token.encode() not in data, name
    args = torch.load(out / "training_args.bin", weights_only=False)  # the pickled arguments, decoded
    assert args.hub_token is None and token not in json.dumps(vars(args), default=str)


def test_a_url_refused_as_malformed_is_shown_without_its_credentials(tmp_path, capsys):
    source = _pairs(tmp_path / "pairs.jsonl", 1)
    code = bridge_main(["bridge", "--source", str(source), "--task", "instruction", "--provider", "openai", "--model",
                        "m", "--base-url", f"bmcuser:{PW}@host/v1?api_key={QKEY}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "got 'host/v1'" in err
    _scan(err)


def test_anthropic_base_url_credentials_are_sent_in_the_query_and_shown_nowhere(monkeypatch):
    from bmc_data.bridging.concurrency import run_sync

    with LLMServer() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", f"{server.url}?key={QKEY}")
        provider = get_provider("anthropic", "claude", api_key="sk-ant-Test0123456789abcdef", limits=FAST)
        reply = run_sync(provider.complete(ChatRequest(messages=({"role": "user", "content": "hi"},), max_tokens=8)))
        assert reply.text == "hi" and server.requests[0].path == f"/v1/messages?key={QKEY}"
    assert provider.base_url == server.url and QKEY not in repr(provider) + json.dumps(provider.identity())


def test_a_reply_an_older_version_cached_with_the_users_text_masked_is_fetched_again(tmp_path, caplog):
    """Older versions masked every value of OPENAI_API_KEY (`password` too), in the cached request and reply."""
    from bmc_data.bridging.templates import load_template
    from bmc_data.providers.base import ChatResponse

    rows = _rows(1)
    with LLMServer(reply=bridge_reply) as server:
        provider = get_provider("openai", "editor", base_url=server.openai_base_url, api_key="sk-x-Abc123Def456",
                                limits=FAST)
        template = load_template("instruction")
        messages = template.render(prompt=rows[0]["prompt"], chosen=rows[0]["chosen"], rejected=rows[0]["rejected"])
        request = ChatRequest(messages=tuple(messages), max_tokens=2048, temperature=0.0, seed=0)
        cache = CallCache(tmp_path / "c" / "calls.sqlite")
        key = cache_key(provider.identity(), template.version_id, request)  # the key older versions used
        masked = ChatResponse(text=bridge_reply(messages).replace("password", "***"), finish_reason="stop",
                              input_tokens=1, output_tokens=1)
        cache.put(key, masked, namespace=template.version_id, identity=provider.identity(), request=request,
                  request_json=json.dumps({"messages": json.loads(json.dumps(messages).replace("password", "***"))}))
        cache.close()
        row = bridge_dataset(rows, task="instruction", provider=provider, cache_dir=tmp_path / "c", progress=False)[0]
        assert server.call_count == 1
    assert "***" not in row["chosen"] and "password page" in row["chosen"]
    assert any("calling again for such entries" in r.getMessage() for r in caplog.records)


@settings(max_examples=60, deadline=None)
@given(password=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=12, max_size=30),
       token=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=12, max_size=30))
def test_any_url_credential_is_masked_in_every_encoded_form(password, token):
    from urllib.parse import quote, quote_plus

    assume(redaction.placeholder_reason(password) is None and redaction.placeholder_reason(token) is None)
    url = redaction.split_url(f"http://me:{quote(password, safe='')}@host:1/v1?x=1&access_token={quote_plus(token)}")
    assert url.public == "http://host:1/v1?x=1" and url.query["access_token"] == token
    basic = base64.b64encode(f"me:{password}".encode()).decode()
    for form in (password, quote(password, safe=""), basic, token, quote_plus(token), quote(token, safe="")):
        assert form not in redact(f"echo: <{form}>"), form
