"""Real-world mistakes through the Python API (the rows of docs/errors.md that do not need a subprocess):
typed errors with one clear message, systemic failures that stop a run in seconds, degenerate rows named before
any call, honest per-run summaries, and secrets scrubbed from every sink. Loopback servers, real datasets."""

from __future__ import annotations

import json
import logging
import time

import pytest
from llm_servers import Fault, LLMServer, bridge_reply

from bmc_data import bridge_dataset, load_pairs
from bmc_data.errors import (
    AllRowsFailed,
    BMCError,
    CredentialError,
    InputError,
    MissingFileError,
    SystemicFailure,
    UsageError,
)
from bmc_data.pairs.loading import InvalidRowError
from bmc_data.providers.anthropic_messages import AnthropicProvider
from bmc_data.providers.base import ProviderError
from bmc_data.providers.limits import ProviderLimits
from bmc_data.providers.openai_chat import OpenAIProvider
from bmc_data.redaction import contains_secret, redact, register_secret, secret_forms
from bmc_data.runner import run_cli

# production-like retries (7 attempts, 1 s base backoff): a systemic failure must not wait them out
REAL = ProviderLimits(max_concurrency=4, timeout_s=5.0)
KEY = "sk-apiTEST-Distinct-9f8e7d6c5b4a"


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}: name a colour.", "chosen": f"Blue, number {i}.", "rejected": f"Maybe {i}."}
            for i in range(n)]


def _openai(server: LLMServer | None, *, url: str | None = None, limits: ProviderLimits = REAL,
            key: str = KEY) -> OpenAIProvider:
    return OpenAIProvider("editor", base_url=url or server.openai_base_url, api_key=key, limits=limits)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- secrets ----------------------------------------------------------------------------------------------------


def test_redact_scrubs_every_escaped_form_of_a_key():
    key = "sk-redactTEST-abc+/=123\r"
    register_secret(key)
    core = key.strip()
    texts = [f"Illegal header value b'Bearer {key}'", repr(key), json.dumps({"k": key}), f"key={core}",
             "x=" + __import__("urllib.parse").parse.quote(core, safe=""), repr(key.encode())]
    for text in texts:
        out = redact(text)
        assert core not in out and "abc+/=123" not in out and "***" in out, (text, out)
        assert not contains_secret(out)
    assert redact("nothing to see") == "nothing to see"
    assert all(len(f) >= 8 for f in secret_forms(key))


def test_env_secrets_are_known_without_registration(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_envTokenXYZ0123456789")
    assert redact("token hf_envTokenXYZ0123456789 here") == "token *** here"


def test_a_key_with_a_stray_carriage_return_is_refused_without_printing_it(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-crTEST-0123456789\r")
    with pytest.raises(CredentialError) as info:
        OpenAIProvider("gpt-4o-mini")
    message = str(info.value)
    assert "OPENAI_API_KEY" in message and "carriage return" in message and "at its end" in message
    assert "0123456789" not in message and info.value.exit_code == 2
    with pytest.raises(CredentialError, match="a space at position"):
        AnthropicProvider("claude", api_key="sk-ant-with space-0123456789")


def test_missing_key_is_a_credential_error(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(CredentialError, match="OPENAI_API_KEY"):
        OpenAIProvider("gpt-4o-mini")
    with pytest.raises(CredentialError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider("claude")


def test_a_401_echoing_the_key_reaches_no_log_error_cache_or_row(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # a server that echoes the key in every error body, and once in a 200 reply
    echo = f"Incorrect API key provided: {KEY}"
    with LLMServer(reply=lambda m: f"<revised>ok {KEY}</revised>", faults=[None, Fault.error(500, echo)],
                   fault_fn=lambda i, body: Fault.error(401, echo)) as server:
        with pytest.raises(SystemicFailure) as info:
            bridge_dataset(_rows(3), task="instruction", provider=_openai(server), cache_dir=tmp_path,
                           concurrency=1, progress=False)
    assert "401" in str(info.value) and "rejected the key" in str(info.value)
    db = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    everything = str(info.value) + caplog.text + db.decode("utf-8", "replace")
    for form in secret_forms(KEY):
        assert form not in everything and form.encode() not in db
    assert "ok ***" in db.decode("utf-8", "replace")  # the paid reply was kept, scrubbed


# --- systemic failures stop the run ----------------------------------------------------------------------------


def test_refused_connection_stops_the_run_in_seconds(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(SystemicFailure, match=r"refused the connection") as info:
        bridge_dataset(_rows(6), task="instruction", provider=_openai(None, url=url), cache_dir=tmp_path,
                       progress=False)
    assert time.perf_counter() - start < 10  # was ~67 s of retries for 2 rows
    assert url in str(info.value) and info.value.exit_code == 3


def test_unknown_host_is_systemic():
    provider = _openai(None, url="http://no-such-host.invalid/v1")
    with pytest.raises(SystemicFailure, match="cannot resolve the host|cannot connect"):
        bridge_dataset(_rows(2), task="instruction", provider=provider, cache_dir=False, progress=False)


@pytest.mark.parametrize("status,needle", [(401, "rejected the key"), (403, "refused access"),
                                           (404, "was not found")])
def test_auth_and_not_found_stop_every_row_at_once(status, needle):
    with LLMServer(fault_fn=lambda i, body: Fault.error(status, "nope")) as server:
        start = time.perf_counter()
        provider = _openai(server)
        with pytest.raises(SystemicFailure, match=needle) as info:
            bridge_dataset(_rows(20), task="instruction", provider=provider, cache_dir=False, progress=False)
        assert server.call_count <= REAL.max_concurrency  # the rows in flight, no retries, no further rows
        # calls never made are not counted as failures (those in flight when the run stopped were cancelled)
        assert 1 <= provider.usage.failures <= server.call_count
    assert time.perf_counter() - start < 10
    assert isinstance(info.value, ProviderError) and info.value.status == status


def test_the_same_failure_on_every_recent_call_trips_the_breaker():
    limits = ProviderLimits(max_concurrency=1, max_consecutive_failures=3)
    with LLMServer(fault_fn=lambda i, body: Fault.error(400, "unsupported parameter: seed")) as server:
        with pytest.raises(SystemicFailure, match="last 3 calls all failed the same way.*unsupported parameter"):
            bridge_dataset(_rows(10), task="instruction", provider=_openai(server, limits=limits), cache_dir=False,
                           concurrency=1, progress=False)
        assert server.call_count == 3


def test_transient_errors_keep_their_retries():
    fast = ProviderLimits(max_concurrency=2, backoff_base_s=0.01, backoff_max_s=0.05)
    faults = [Fault.rate_limited(retry_after=0.05), Fault.server_error(502), Fault.overloaded(), Fault.drop()]
    with LLMServer(reply=bridge_reply, faults=faults) as server:
        out = bridge_dataset(_rows(3), task="instruction", provider=_openai(server, limits=fast), cache_dir=False,
                             progress=False)
    assert out["bmc_status"] == ["bridged"] * 3


def test_rerun_after_a_systemic_stop_repeats_no_paid_call(tmp_path):
    broken = {"on": False}

    def fault(i, body):
        return Fault.error(401, "key revoked") if broken["on"] else None

    seen: list[str] = []
    with LLMServer(reply=bridge_reply, fault_fn=fault) as server:
        limits = ProviderLimits(max_concurrency=1)
        first = bridge_dataset(_rows(2), task="instruction", provider=_openai(server, limits=limits),
                               cache_dir=tmp_path, concurrency=1, progress=False)
        assert first["bmc_status"] == ["bridged"] * 2
        broken["on"] = True
        with pytest.raises(SystemicFailure):
            bridge_dataset(_rows(5), task="instruction", provider=_openai(server, limits=limits), cache_dir=tmp_path,
                           concurrency=1, progress=False)
        paid = [json.dumps(r.body, sort_keys=True) for r in server.requests if r.fault is None]
        broken["on"] = False
        before = server.call_count
        out, summary = bridge_dataset(_rows(5), task="instruction", provider=_openai(server, limits=limits),
                                      cache_dir=tmp_path, concurrency=1, progress=False, return_summary=True)
        seen = [json.dumps(r.body, sort_keys=True) for r in server.requests[before:]]
    assert out["bmc_status"] == ["bridged"] * 5
    assert len(seen) == 3 and not set(seen) & set(paid)  # only the 3 rows never answered were called
    assert summary.usage["calls"] == 3 and summary.usage["cached_calls"] == 2


# --- degenerate rows, summaries -----------------------------------------------------------------------------------


def test_degenerate_rows_are_named_before_any_call():
    rows = _rows(3)
    rows[0]["rejected"] = rows[0]["chosen"]
    rows[2]["rejected"] = "word " * 200_000  # ~1 MB: far over the default budget
    with LLMServer(reply=bridge_reply) as server:
        out, summary = bridge_dataset(rows, task="instruction", provider=_openai(server), cache_dir=False,
                                      progress=False, return_summary=True)
        assert server.call_count == 1  # only the ordinary row
    assert out["bmc_status"] == ["filtered", "bridged", "failed"]
    assert "identical" in out[0]["bmc_reason"] and "max_input_tokens=30000" in out[2]["bmc_reason"]
    assert summary.headline() == "processed 3 pairs: 1 bridged, 1 filtered, 1 failed"
    with pytest.raises(UsageError, match="max_input_tokens"):
        bridge_dataset(rows, task="instruction", provider=_openai(server), max_input_tokens=0, progress=False)


def test_summary_counts_each_run_of_a_reused_provider_apart():
    with LLMServer(reply=bridge_reply) as server:
        provider = _openai(server)
        _, first = bridge_dataset(_rows(3), task="instruction", provider=provider, cache_dir=False, progress=False,
                                  return_summary=True)
        _, second = bridge_dataset(_rows(2), task="instruction", provider=provider, cache_dir=False,
                                   progress=False, return_summary=True)
    assert first.usage["calls"] == 3 and second.usage["calls"] == 2
    assert second.usage["input_tokens"] < first.usage["input_tokens"]
    assert provider.usage.calls == 5  # the provider's own running total is unchanged


def test_skip_invalid_lists_every_skipped_row_in_the_summary(tmp_path):
    rows = _rows(5)
    rows[1]["chosen"] = 7
    rows[3]["rejected"] = "   "
    with LLMServer(reply=bridge_reply) as server:
        _, summary = bridge_dataset(rows, task="instruction", provider=_openai(server), cache_dir=False,
                                    on_invalid="skip", progress=False, return_summary=True,
                                    summary_path=tmp_path / "s.json")
    listed = json.loads((tmp_path / "s.json").read_text())["skipped_rows"]
    assert [(r["index"], r["field"]) for r in listed] == [(1, "chosen"), (3, "rejected")]
    assert "expected a string, got int" in listed[0]["problem"] and summary.total == 3


def test_all_rows_failed_is_flagged():
    with LLMServer(reply=lambda m: "I will not use tags.") as server:
        _, summary = bridge_dataset(_rows(2), task="instruction", provider=_openai(server), cache_dir=False,
                                    progress=False, return_summary=True)
    assert summary.all_failed and summary.headline() == "processed 2 pairs: 0 bridged, 0 filtered, 2 failed"


# --- bad input through the loader ---------------------------------------------------------------------------------


def test_bad_files_get_one_clear_line(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": \n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON"):
        load_pairs(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(InputError, match="the file is empty"):
        load_pairs(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        load_pairs(latin)
    monkeypatch.chdir(tmp_path)  # a relative path that does not exist is not a Hub id
    with pytest.raises(MissingFileError, match="data/pairs.jsonl: no such file or folder$"):
        load_pairs("data/pairs.jsonl")
    with pytest.raises(InvalidRowError) as info:
        load_pairs([{"prompt": "p", "chosen": 3, "rejected": "r"}])
    assert (info.value.index, info.value.field) == (0, "chosen") and isinstance(info.value, InputError)
    with pytest.raises(UsageError, match="limit"):
        load_pairs([{"prompt": "p", "chosen": "c", "rejected": "r"}], limit=-1)


# --- the CLI wrapper --------------------------------------------------------------------------------------------


def test_run_cli_maps_errors_to_one_line_and_exit_codes(capsys, monkeypatch):
    register_secret("sk-cliTEST-0123456789")

    def failing(error):
        def main(argv):
            raise error
        return main

    cases = [(UsageError("bad --x"), 2), (InputError("f.jsonl:3: bad"), 2), (SystemicFailure("stopped"), 3),
             (AllRowsFailed("all failed"), 4), (BMCError("generic"), 1)]
    for error, code in cases:
        assert run_cli(failing(error), []) == code
        err = capsys.readouterr().err
        assert err == f"error: {error}\n"
    monkeypatch.delenv("BMC_DEBUG", raising=False)
    assert run_cli(failing(KeyError("sk-cliTEST-0123456789")), []) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--debug" in err and "0123456789" not in err
    assert run_cli(failing(KeyError("sk-cliTEST-0123456789")), ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "0123456789" not in err
    assert run_cli(failing(KeyboardInterrupt()), []) == 130


def test_every_row_of_the_docs_table_names_tests_that_exist():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "errors.md").read_text()
    table = [l for l in text.split("## One row per mistake")[1].splitlines() if re.match(r"\| \d+ \|", l)]
    assert len(table) >= 20
    defined = set(re.findall(r"^def (test_\w+)", "".join(p.read_text() for p in (root / "tests").glob("test_*.py")),
                             flags=re.M))
    for line in table:
        named = re.findall(r"`(test_\w+)`", line)
        assert named or "tests/test_" in line, line
        assert set(named) <= defined, (line, set(named) - defined)


def test_make_pairs_validates_its_options_and_rows():
    from bmc_data import make_pairs

    problems = [{"problem": "1+1?", "solution": "The answer is 2", "answer": "2"}]
    for kwargs, needle in [({"limit": -1}, "limit"), ({"concurrency": 0}, "concurrency"), ({"keep": "some"}, "keep"),
                           ({"task": "instruction"}, "qa' or 'math")]:
        with pytest.raises(UsageError, match=needle):
            make_pairs(problems, model=_openai(None, url="http://127.0.0.1:9/v1"), cache_dir=False, **kwargs)
    with pytest.raises(InputError, match="row 0: expected problem/solution/answer"):
        make_pairs([{"text": "x"}], model=_openai(None, url="http://127.0.0.1:9/v1"), cache_dir=False)
