"""The rows of docs/errors.md through the real CLIs: `python -m bmc_data bridge`, `python -m bmc_data.publish` and
`python -m bmc_train`. Secrets and fail-fast runs are real subprocesses against loopback servers (a refusing port, a
401 that echoes the key, an accepting one), and every byte they write is searched for the key in every escaped
form. Input and option mistakes call the same `main(argv)` in-process (a subprocess costs seconds of imports)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from llm_servers import Fault, LLMServer, bridge_reply

from bmc_data.__main__ import main as bridge_main
from bmc_data.publish import main as publish_main
from bmc_data.redaction import secret_forms

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-cliSECRET-Distinct-0a1b2c3d4e5f"
KEY_CR = "sk-cliSECRET-CarriageReturn-99887766\r"
#: a systemic failure must stop a run in seconds (imports included); before, 2 rows took ~67 s of retries
FAST_S = 30


def _pairs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour.", "chosen": f"Blue, number {i}.",
                                        "rejected": f"Maybe {i}."}) + "\n" for i in range(n)))
    return path


def _env(tmp_path: Path, key: str = KEY) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OPENAI_", "ANTHROPIC_", "BMC_"))}
    return {**base, "OPENAI_API_KEY": key, "BMC_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false"}


def _bridge(tmp_path: Path, source: Path, url: str, out: str = "out", *extra: str, key: str = KEY):
    command = [sys.executable, "-m", "bmc_data", "bridge", "--source", str(source), "--task", "instruction",
               "--provider", "openai", "--model", "editor", "--base-url", url, "--out", str(tmp_path / out),
               "--concurrency", "1", *extra]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, env=_env(tmp_path, key), capture_output=True, text=True,
                          timeout=120)
    return proc, time.perf_counter() - start


def _assert_no_secret(proc: subprocess.CompletedProcess, *folders: Path, key: str = KEY) -> None:
    """The key, in any escaped form, is in no stdout/stderr byte, no file byte, and no decoded parquet cell."""
    forms = secret_forms(key) | {key.strip()}
    streams = proc.stdout + proc.stderr
    for form in forms:
        assert form not in streams, form
    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            texts = [data]
            if path.suffix == ".parquet":  # compressed pages: also search the decoded cells
                texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str).encode())
            for form in forms:
                for text in texts:
                    assert form.encode() not in text, (path, form)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip() and "%|" not in l]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith("error: "), proc.stderr
    return lines[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- secrets and fail-fast: real subprocesses --------------------------------------------------------------------


def test_key_with_a_carriage_return_is_refused_before_any_request(tmp_path):
    source = _pairs(tmp_path / "pairs.jsonl", 2)
    with LLMServer(reply=bridge_reply) as server:
        proc, _ = _bridge(tmp_path, source, server.openai_base_url, key=KEY_CR)
        assert server.call_count == 0
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "OPENAI_API_KEY" in line and "carriage return" in line
    assert not (tmp_path / "out").exists()
    _assert_no_secret(proc, tmp_path, key=KEY_CR)


def test_refused_port_stops_in_seconds_with_exit_3(tmp_path):
    source = _pairs(tmp_path / "pairs.jsonl", 4)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    proc, seconds = _bridge(tmp_path, source, url)
    assert proc.returncode == 3 and seconds < FAST_S, (proc.returncode, seconds, proc.stderr)
    assert f"the server at {url} refused the connection" in _one_error_line(proc)
    assert not (tmp_path / "out" / "summary.json").exists()


def test_401_echoing_the_key_stops_in_seconds_and_leaks_nothing(tmp_path):
    source = _pairs(tmp_path / "pairs.jsonl", 4)
    echo = f"Incorrect API key provided: {KEY}. Header was b'Bearer {KEY}\\r'"
    with LLMServer(fault_fn=lambda i, body: Fault.error(401, echo)) as server:
        proc, seconds = _bridge(tmp_path, source, server.openai_base_url, "out", "--verbose")  # verbose: every log
        assert server.call_count == 1
    assert proc.returncode == 3 and seconds < FAST_S, (proc.returncode, seconds)
    line = _one_error_line(proc)
    assert "HTTP 401" in line and "rejected the key from OPENAI_API_KEY" in line and "***" in line
    assert not (tmp_path / "out" / "bridged.parquet").exists()
    _assert_no_secret(proc, tmp_path)


def test_systemic_stop_then_rerun_completes_without_repeating_a_call(tmp_path):
    source = _pairs(tmp_path / "pairs.jsonl", 5)
    answered = {"n": 0, "limit": 2}

    def fault(index, body):  # the key is revoked after two paid replies
        if answered["n"] >= answered["limit"]:
            return Fault.error(401, f"revoked: {KEY}")
        answered["n"] += 1
        return None

    with LLMServer(reply=lambda m: bridge_reply(m) + f" ({KEY})", fault_fn=fault) as server:
        first, seconds = _bridge(tmp_path, source, server.openai_base_url)
        assert first.returncode == 3 and seconds < FAST_S and "401" in _one_error_line(first)
        assert not (tmp_path / "out").exists()  # no output that pretends to be complete
        paid = {json.dumps(r.body, sort_keys=True) for r in server.requests if r.fault is None}
        answered["limit"] = 10**6  # the user fixes the key
        before = server.call_count
        second, _ = _bridge(tmp_path, source, server.openai_base_url)
        rerun = [json.dumps(r.body, sort_keys=True) for r in server.requests[before:]]
    assert second.returncode == 0, second.stderr
    assert len(paid) == 2 and len(rerun) == 3 and not paid & set(rerun)  # no paid call repeated
    assert "processed 5 pairs: 5 bridged, 0 filtered, 0 failed" in second.stdout
    assert "HTTP Request" not in second.stderr  # per-request logs only with --verbose
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["usage"]["calls"] == 3 and summary["usage"]["cached_calls"] == 2
    _assert_no_secret(first, tmp_path)
    _assert_no_secret(second, tmp_path)  # replies quoted the key: scrubbed in rows, cache, parquet, summary


def test_publish_with_every_row_failed_exits_4_and_writes_nothing(tmp_path):
    source = _pairs(tmp_path / "pairs.jsonl", 3)
    out = tmp_path / "pub"
    with LLMServer(reply=lambda m: f"I refuse to use tags. {KEY}") as server:
        proc = subprocess.run(
            [sys.executable, "-m", "bmc_data.publish", "--no-push", "--source", str(source), "--provider", "openai",
             "--model", "editor", "--base-url", server.openai_base_url, "--out", str(out), "--quiet"],
            cwd=REPO_ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert "every one of the 3 pair(s) failed" in _one_error_line(proc)
    assert not (out / "data").exists() and not (out / "README.md").exists()
    _assert_no_secret(proc, tmp_path)


def test_bmc_train_names_the_row_and_field_before_loading_a_model(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": 5, "rejected": "b"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "bmc_train", "--model_name_or_path", str(tmp_path / "no-model"),
                           "--dataset_name", str(data), "--output_dir", str(tmp_path / "o"), "--report_to", "none"],
                          cwd=REPO_ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2
    assert "row 1: field 'chosen': expected a string, got int" in _one_error_line(proc)


# --- input and option mistakes: the same main(argv), in-process -------------------------------------------------


def _bridge_args(source, out, *extra):
    return ["bridge", "--source", str(source), "--task", "instruction", "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("content,needle", [
    ('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p"\n', "bad.jsonl:2: not valid JSON"),
    ("", "bad.jsonl: the file is empty"),
    ('{"prompt": "p", "chosen": ["x"], "rejected": "r"}\n', "row 0: field 'chosen'"),
    ('{"prompt": "p", "rejected": "r"}\n{"prompt": "p", "chosen": "c", "rejected": "r"}\n',
     "cannot tell the layout"),
])
def test_bridge_bad_input_is_one_line_exit_2(tmp_path, capsys, content, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert bridge_main(_bridge_args(bad, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_bridge_missing_relative_path_is_no_such_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bridge_main(_bridge_args("data/pairs.jsonl", tmp_path / "out")) == 2
    assert "data/pairs.jsonl: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [
    (["--limit", "-1"], "--limit"), (["--timeout", "-5"], "--timeout"), (["--concurrency", "0"], "--concurrency"),
    (["--max-input-tokens", "0"], "--max-input-tokens"),
])
def test_bridge_bad_numbers_exit_2(tmp_path, capsys, extra, needle):
    with pytest.raises(SystemExit) as info:
        bridge_main(_bridge_args(_pairs(tmp_path / "p.jsonl", 1), tmp_path / "out", *extra))
    assert info.value.code == 2 and needle in capsys.readouterr().err


def test_bridge_missing_key_and_model_exit_2_before_reading_data(tmp_path, capsys, monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    missing = tmp_path / "missing.jsonl"  # not read: the credential is checked first
    assert bridge_main(_bridge_args(missing, tmp_path / "out", "--provider", "openai", "--model", "gpt-4o")) == 2
    assert "no OpenAI API key" in capsys.readouterr().err
    assert bridge_main(_bridge_args(missing, tmp_path / "out", "--provider", "openai")) == 2
    assert "--provider openai needs --model" in capsys.readouterr().err


def test_bridge_skip_invalid_and_all_failed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "p0", "chosen": "a", "rejected": "b"}, {"prompt": "p1", "chosen": 1, "rejected": "b"},
            {"prompt": "p2", "chosen": "a", "rejected": None}, {"prompt": "p3", "chosen": "same", "rejected": "same"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with LLMServer(reply=lambda m: "no tags here") as server:
        code = bridge_main(_bridge_args(source, tmp_path / "out", "--skip-invalid", "--provider", "openai",
                                        "--model", "editor", "--base-url", server.openai_base_url))
        assert server.call_count == 2  # row 0 and its repair turn; row 3 (chosen == rejected) was never sent
    err = capsys.readouterr().err
    assert code == 0, err  # row 3 was filtered: not every row failed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["index"], r["field"]) for r in summary["skipped_rows"]] == [(1, "chosen"), (2, "rejected")]
    assert summary["counts"] == {"failed": 1, "filtered": 1}
    source.write_text(json.dumps(rows[0]) + "\n")
    with LLMServer(reply=lambda m: "no tags here") as server:
        code = bridge_main(_bridge_args(source, tmp_path / "out2", "--provider", "openai", "--model", "editor",
                                        "--base-url", server.openai_base_url))
    out = capsys.readouterr()
    assert code == 4 and "every one of the 1 pair(s) failed" in out.err
    assert "processed 1 pair: 0 bridged, 0 filtered, 1 failed" in out.out
    assert (tmp_path / "out2" / "summary.json").exists()  # the failed rows and their reasons are kept


def test_publish_test_size_is_checked_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs(tmp_path / "pairs.jsonl", 6)
    with LLMServer(reply=bridge_reply) as server:
        code = publish_main(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor",
                             "--base-url", server.openai_base_url, "--test-size", "10", "--out",
                             str(tmp_path / "pub"), "--quiet"])
        assert server.call_count == 0
    assert code == 2 and "--test-size 10 leaves no training row: the source has 6 pair(s)" in capsys.readouterr().err


def test_publish_missing_tokenizer_path_exit_2_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs(tmp_path / "pairs.jsonl", 2)
    with LLMServer(reply=bridge_reply) as server:
        code = publish_main(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor",
                             "--base-url", server.openai_base_url, "--tokenizer", "./no/such/tokenizer",
                             "--out", str(tmp_path / "pub"), "--quiet"])
        assert server.call_count == 0
    assert code == 2 and "--tokenizer ./no/such/tokenizer: no such folder" in capsys.readouterr().err


def test_publish_systemic_failure_exits_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs(tmp_path / "pairs.jsonl", 3)
    with LLMServer(fault_fn=lambda i, body: Fault.error(404, "model not found")) as server:
        code = publish_main(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor",
                             "--base-url", server.openai_base_url, "--out", str(tmp_path / "pub"), "--quiet"])
    assert code == 3 and "model 'editor' was not found" in capsys.readouterr().err
    assert not (tmp_path / "pub" / "data").exists()


def test_make_pairs_sampling_is_reported_apart_and_a_systemic_failure_stops_it(tmp_path, capsys, monkeypatch,
                                                                               shared_data):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = shared_data / "qa" / "ecqa-train.jsonl"

    def reply(messages):  # y_l sampling gets a wrong answer; the editor revises to the reference solution
        return bridge_reply(messages) if "### Student solution" in messages[-1]["content"] else "The answer is cake"

    args = ["bridge", "--source", str(source), "--task", "qa", "--make-pairs", "--limit", "3", "--quiet",
            "--provider", "openai", "--model", "editor"]
    with LLMServer(reply=reply) as server:
        code = bridge_main([*args, "--base-url", server.openai_base_url, "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["sampling_usage"]["calls"] == 3 and summary["usage"]["calls"] == 3  # not 6
    assert "y_l sampling calls: 3 made" in (tmp_path / "out" / "summary.md").read_text()
    code = bridge_main([*args, "--base-url", f"http://127.0.0.1:{_free_port()}/v1", "--out", str(tmp_path / "o2")])
    assert code == 3 and "refused the connection" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    code = bridge_main([*args, "--base-url", "http://127.0.0.1:1/v1", "--out", str(tmp_path / "file")])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "is a file, expected a folder" in err


def test_publish_with_a_rejected_hub_token_exits_3_before_any_call(tmp_path):
    from hub_server import HubServer

    source = _pairs(tmp_path / "pairs.jsonl", 2)
    out = tmp_path / "pub"
    wrong = "hf_wrongTOKEN-Distinct-77665544"
    with LLMServer(reply=bridge_reply) as server, HubServer(valid_tokens={"hf_theRIGHTtoken-0011223344"}) as hub:
        env = {**_env(tmp_path), "HF_TOKEN": wrong, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_XET": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "bmc_data.publish", "--repo", "org/pairs-bmc", "--source", str(source),
             "--provider", "openai", "--model", "editor", "--base-url", server.openai_base_url, "--out", str(out),
             "--quiet", "--no-stats"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert server.call_count == 0  # the token is checked before the first paid call
    assert proc.returncode == 3, proc.stderr
    assert "the Hub rejected the token (HTTP 401)" in _one_error_line(proc)
    assert not out.exists()
    _assert_no_secret(proc, tmp_path, key=wrong)
    _assert_no_secret(proc, tmp_path)


def test_publish_conversational_pairs_with_a_tokenizer_without_chat_template_exit_2_before_any_call(
        tmp_path, capsys, monkeypatch):
    # before: every pair was bridged (paid calls), then the diff masks failed as a bug (exit 1, "please report it")
    from test_hub import tiny_tokenizer

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "tok")
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Question {i}?"}],
                                          "chosen": [{"role": "assistant", "content": f"A good answer {i}."}],
                                          "rejected": [{"role": "assistant", "content": f"A bad answer {i}."}]})
                              + "\n" for i in range(2)))
    with LLMServer(reply=bridge_reply) as server:
        code = publish_main(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor",
                             "--base-url", server.openai_base_url, "--tokenizer", str(tmp_path / "tok"),
                             "--out", str(tmp_path / "pub"), "--quiet"])
        assert server.call_count == 0
    err = capsys.readouterr().err
    assert code == 2 and f"--tokenizer {tmp_path / 'tok'}: it has no chat template" in err, err


def test_publish_test_size_above_the_bridged_rows_is_one_usage_line(tmp_path, capsys, monkeypatch):
    # 6 pairs pass the check before the calls, but only 3 bridge: before, datasets' ValueError ended the run as a
    # bug (exit 1, "please report it") with nothing written
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs(tmp_path / "pairs.jsonl", 6)

    def reply(messages):
        text = " ".join(m["content"] for m in messages)  # the repair turn too
        return "no tags here" if any(f"Maybe {i}." in text for i in (0, 1, 2)) else bridge_reply(messages)

    with LLMServer(reply=reply) as server:
        code = publish_main(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor",
                             "--base-url", server.openai_base_url, "--test-size", "4", "--no-stats", "--no-report",
                             "--out", str(tmp_path / "pub"), "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err
    assert "test_size 4 (--test-size) leaves no training row: only 3 pair(s) were bridged" in lines[0]


def test_bridge_keep_wrong_without_make_pairs_is_refused_before_any_call(tmp_path, capsys, monkeypatch):
    # before: --keep was silently ignored without --make-pairs (every pair bridged, the "wrong only" asked for lost)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs(tmp_path / "pairs.jsonl", 2)
    with LLMServer(reply=bridge_reply) as server:
        code = bridge_main(["bridge", "--source", str(source), "--task", "instruction", "--provider", "openai",
                            "--model", "editor", "--base-url", server.openai_base_url, "--keep", "wrong",
                            "--out", str(tmp_path / "out"), "--quiet"])
        assert server.call_count == 0
    assert code == 2 and "--keep wrong chooses which sampled pairs to keep: it needs --make-pairs" in \
        capsys.readouterr().err


def test_structured_output_without_the_structured_reply_format_is_refused(tmp_path, capsys, monkeypatch):
    # before: silently ignored (no schema is sent with --reply-format full, and publish has no structured format)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs(tmp_path / "pairs.jsonl", 2)
    with LLMServer(reply=bridge_reply) as server:
        code = bridge_main(["bridge", "--source", str(source), "--task", "instruction", "--provider", "openai",
                            "--model", "editor", "--base-url", server.openai_base_url, "--structured-output",
                            "guided_json", "--out", str(tmp_path / "out"), "--quiet"])
        assert code == 2 and "--structured-output carries the reply schema of --reply-format structured" in \
            capsys.readouterr().err
        code = publish_main(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor",
                             "--base-url", server.openai_base_url, "--structured-output", "guided_json",
                             "--out", str(tmp_path / "pub"), "--quiet"])
        assert code == 2 and "--structured-output" in capsys.readouterr().err
        assert server.call_count == 0


@pytest.mark.parametrize("cli,argv", [
    ("bridge", ["bridge", "--source", "x.jsonl", "--task", "qa", "--out", "o", "--api-key", "sk-typedKEY-Distinct-00aa11bb22cc"]),
    ("bridge", ["bridge", "--source", "x.jsonl", "--task", "qa", "--out", "o", "--openai_api_key=not-shaped-but-named-99"]),
    ("bridge", ["bridge", "--source", "x.jsonl", "--task", "qa", "--out", "o", "hf_StrayTokenPastedHereAbCdEf0123456789"]),
    ("train", ["--model_name_or_path", "m", "--dataset_name", "d", "--hubtoken", "hf_MistypedOptionTokenXyZ0123456789abcd"]),
])
def test_a_secret_typed_on_the_command_line_is_masked_in_the_usage_error(cli, argv, capsys):
    from bmc_train.cli import main as train_main

    secret = argv[-1].partition("=")[2] or argv[-1]
    try:
        code = (bridge_main if cli == "bridge" else train_main)(argv)
    except SystemExit as stop:  # argparse's own exit
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "***" in err, err
    assert not any(form in err for form in secret_forms(secret)), err


def test_poll_interval_with_a_provider_that_does_not_poll_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs(tmp_path / "pairs.jsonl", 2)
    with LLMServer(reply=bridge_reply) as server:
        code = bridge_main(["bridge", "--source", str(source), "--task", "qa", "--provider", "openai", "--model", "m",
                            "--base-url", server.openai_base_url, "--poll-interval", "5", "--out", str(tmp_path / "o")])
        assert server.call_count == 0
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --poll-interval is for the batch providers") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
