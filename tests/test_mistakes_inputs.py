"""Issue 19's input rows of docs/errors.md: rows that are read as what the user wrote (text stays text, NaN is a
missing value), conversations whose prompts disagree, rows that cannot be encoded, answers that cannot be
checked, and every option or file that can be told wrong before the first paid call (URLs, folders, the Hub,
the cache). Real files, real datasets, a loopback LLM server that counts the calls."""

from __future__ import annotations

import json
import sqlite3

import datasets
import numpy as np
import pandas as pd
import pytest
from llm_servers import LLMServer, bridge_reply

from bmc_data import bridge_dataset, load_pairs
from bmc_data.errors import AllRowsFailed, InputError, UsageError
from bmc_data.pairs.loading import InvalidRowError
from bmc_data.providers.limits import ProviderLimits
from bmc_data.providers.openai_chat import OpenAIProvider

FAST = ProviderLimits(max_concurrency=4, timeout_s=5.0, max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02)
KEY = "sk-inputsTEST-0a1b2c3d4e5f"


def _openai(server: LLMServer) -> OpenAIProvider:
    return OpenAIProvider("editor", base_url=server.openai_base_url, api_key=KEY, limits=FAST)


def _conversation(user: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


# --- 4. parsing and typing ---------------------------------------------------------------------------------------


def test_conversations_with_different_prompts_are_an_invalid_row():
    rows = [{"chosen": _conversation("Say hi", "Hi!"), "rejected": _conversation("Say hi", "No.")},
            {"chosen": _conversation("Say hi", "Hi!"), "rejected": _conversation("Say bye", "Bye.")}]
    with pytest.raises(InvalidRowError, match=r"row 1: field 'rejected': .*prompt.* differs") as caught:
        load_pairs(rows)
    assert caught.value.index == 1 and caught.value.field == "rejected"
    loaded = load_pairs(rows, on_invalid="skip")
    assert len(loaded) == 1 and [(r.index, r.field) for r in loaded.skipped] == [(1, "rejected")]
    # an explicit prompt column: a context inside chosen/rejected must agree with it
    explicit = [{"prompt": [{"role": "user", "content": "Say hi"}], "chosen": _conversation("Say hi", "Hi!"),
                 "rejected": _conversation("Say bye", "Bye.")}]
    with pytest.raises(InvalidRowError, match="row 0: field 'rejected'"):
        load_pairs(explicit)
    # UltraFeedback-binarized: the rejected conversation must answer the same prompt
    uf = [{"prompt": "Say hi", "chosen": _conversation("Say hi", "Hi!"), "rejected": _conversation("Say bye", "Bye.")}]
    with pytest.raises(InvalidRowError, match="row 0: field 'rejected'"):
        load_pairs(uf)


def test_dataframe_nan_is_a_missing_answer_and_numbers_keep_their_text():
    frame = pd.DataFrame({"problem": ["1+5?", "2+2?", "3+4?"],
                          "solution": ["The answer is 6", "The answer is 4", "The answer is 7"],
                          "answer": [6, np.nan, 7],  # one empty cell makes the column float
                          "model_output": ["The answer is 5", "The answer is 5", "The answer is 8"]})
    pairs = load_pairs(frame, task="math")
    assert [p.answer for p in pairs] == ["6", None, "7"]  # never '6.0', never 'nan'
    frame["solution"] = ["The answer is 6", np.nan, "The answer is 7"]
    with pytest.raises(InvalidRowError, match="row 1: field 'solution': expected a non-empty string, got nothing"):
        load_pairs(frame, task="math")


def test_csv_cells_are_read_as_the_text_the_user_wrote(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected,answer\n'
                    '"Is 7 prime?",true,false,true\n'
                    '"Half of 3?",1.50,1.5e0,1.50\n'
                    '"Six?",6,"6.0",6\n'
                    '"Empty answer?",no,yes,\n')
    pairs = load_pairs(path, task="qa", answer_check=False)
    assert [(p.chosen, p.rejected, p.answer) for p in pairs] == [
        ("true", "false", "true"), ("1.50", "1.5e0", "1.50"), ("6", "6.0", "6"), ("no", "yes", None)]
    qa = tmp_path / "qa.csv"
    qa.write_text("problem,solution,answer,model_output\n1+5?,The answer is 6,6,The answer is 6\n"
                  "2+2?,The answer is 4,,The answer is 5\n")
    assert [p.answer for p in load_pairs(qa, task="math")] == ["6", None]


def test_a_folder_of_csv_files_is_read_as_written_too(tmp_path):
    """A folder (or Hub repo) goes through `datasets`, which inferred types per column: "6" became 6, "1.50" 1.5
    and "NA" a missing value. It is now read as a single CSV file is."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "train.csv").write_text('prompt,chosen,rejected,answer\n"Is 7 prime?",true,false,true\n'
                                      '"Half of 3?",1.50,1.5e0,1.50\n"Six?",6,"6.0",6\n"NA?",NA,007,\n')
    pairs = load_pairs(folder, task="qa", answer_check=False)
    assert [(p.chosen, p.rejected, p.answer) for p in pairs] == [
        ("true", "false", "true"), ("1.50", "1.5e0", "1.50"), ("6", "6.0", "6"), ("NA", "007", None)]


def test_dataset_float_answer_column_reads_as_the_integer_it_holds():
    ds = datasets.Dataset.from_dict({"problem": ["1+5?", "x?"], "solution": ["The answer is 6", "The answer is 0.5"],
                                     "answer": [6.0, 0.5], "model_output": ["The answer is 6", "The answer is 1"]})
    assert [p.answer for p in load_pairs(ds, task="math")] == ["6", "0.5"]


# --- 4. QA/math without a known answer ---------------------------------------------------------------------------


def test_qa_without_a_known_answer_is_an_error_unless_the_check_is_off():
    rows = [{"prompt": "Capital of France?", "chosen": "It is Paris.", "rejected": "It is Lyon."}]
    with pytest.raises(InvalidRowError, match=r"row 0: field 'answer': no known final answer.*answer_check=False"):
        load_pairs(rows, task="qa")
    with LLMServer(reply=bridge_reply) as server:
        with pytest.raises(InvalidRowError, match="no known final answer"):
            bridge_dataset(rows, task="qa", provider=_openai(server), cache_dir=False, progress=False)
        assert server.call_count == 0  # checked before the first paid call
        out, summary = bridge_dataset(rows, task="qa", provider=_openai(server), cache_dir=False, progress=False,
                                      check_answers=False, return_summary=True)
    assert out["bmc_status"] == ["bridged"]
    assert summary.answer_check is False
    assert any("answer check off" in note for note in summary.notes) and "answer check off" in str(summary)
    # a chosen response that states its answer needs no answer column
    stated = [{"prompt": "Capital of France?", "chosen": "The answer is Paris", "rejected": "The answer is Lyon"}]
    assert load_pairs(stated, task="qa")[0].answer is None


# --- 6. one bad row never costs the others -----------------------------------------------------------------------


def test_text_that_cannot_be_encoded_is_an_invalid_row_skipped_with_skip_invalid(tmp_path):
    rows = [{"prompt": "q0", "chosen": "good 0", "rejected": "bad 0"},
            {"prompt": "q\ud800", "chosen": "good 1", "rejected": "bad 1"},
            {"prompt": "q2", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "bad 2"},
            {"prompt": "q3", "chosen": "good 3", "rejected": "bad \udfff 3"}]
    with pytest.raises(InvalidRowError, match=r"row 1: field 'prompt': .*U\+D800.*UTF-8"):
        load_pairs(rows[:2])
    with LLMServer(reply=bridge_reply) as server:
        out, summary = bridge_dataset(rows, task="instruction", provider=_openai(server), cache_dir=tmp_path / "c",
                                      on_invalid="skip", progress=False, return_summary=True)
        assert server.call_count == 1
    assert out["bmc_source_index"] == [0]
    assert [(r["index"], r["field"]) for r in summary.skipped_rows] == [(1, "prompt"), (2, "chosen"), (3, "rejected")]
    out.to_parquet(str(tmp_path / "bridged.parquet"))  # what is kept can be written


def test_a_reply_that_cannot_be_encoded_fails_its_row_and_the_others_are_kept(tmp_path):
    def reply(messages):
        text = bridge_reply(messages)
        return text.replace("Maybe 1.", "Maybe \ud800 1.")  # one editor reply holds a lone surrogate

    rows = [{"prompt": f"Question {i}: name a colour.", "chosen": f"Blue, number {i}.", "rejected": f"Maybe {i}."}
            for i in range(3)]
    with LLMServer(reply=reply) as server:
        out, summary = bridge_dataset(rows, task="instruction", provider=_openai(server), cache_dir=tmp_path / "c",
                                      progress=False, return_summary=True)
    assert out["bmc_status"] == ["bridged", "failed", "bridged"] and summary.counts == {"bridged": 2, "failed": 1}
    assert "cannot be encoded as UTF-8" in out["bmc_reason"][1] and out["chosen"][1] == "Blue, number 1."
    out.to_parquet(str(tmp_path / "bridged.parquet"))
    out.to_json(str(tmp_path / "bridged.jsonl"), lines=True)


def test_a_run_with_no_usable_row_is_an_error():
    bad = [{"prompt": "q", "chosen": 3, "rejected": "r"}]
    with LLMServer(reply=bridge_reply) as server:
        with pytest.raises(InputError, match="no usable row: 1 invalid row"):
            bridge_dataset(bad, task="instruction", provider=_openai(server), cache_dir=False, on_invalid="skip",
                           progress=False)
        assert server.call_count == 0


# --- 5. every check before the first paid call -------------------------------------------------------------------


def _pairs_file(path, n: int = 2):
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour.", "chosen": f"Blue, number {i}.",
                                        "rejected": f"Maybe {i}."}) + "\n" for i in range(n)))
    return path


def _bridge_cli(source, out, *extra):
    from bmc_data.__main__ import main

    return main(["bridge", "--source", str(source), "--task", "instruction", "--out", str(out), "--quiet",
                 "--provider", "openai", "--model", "editor", *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("url,needle", [
    ("http://127.0.0.1:99999/v1", "port 99999 is out of range"),
    ("http://", "has no host"),
    ("http://:8000/v1", "has no host"),
    ("ftp://127.0.0.1/v1", "must start with http:// or https://"),
    ("http://127.0.0.1:port/v1", "port"),
])
def test_base_url_port_scheme_and_host_are_checked_before_any_call(tmp_path, capsys, monkeypatch, url, needle):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs_file(tmp_path / "pairs.jsonl")
    assert _bridge_cli(source, tmp_path / "out", "--base-url", url) == 2
    line = _one_line(capsys)
    assert line.startswith("error: --base-url") and needle in line, line
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match=needle):  # the Python API: the same check
        OpenAIProvider("editor", base_url=url, api_key=KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(UsageError, match=f"OPENAI_BASE_URL.*{needle}"):
        OpenAIProvider("editor", api_key=KEY)


def test_unwritable_out_and_cache_dir_are_refused_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs_file(tmp_path / "pairs.jsonl")
    (tmp_path / "a-file").write_text("x")
    with LLMServer(reply=bridge_reply) as server:
        url = ["--base-url", server.openai_base_url]
        for out, cache, flag in [("/proc/bmc-out", str(tmp_path / "c"), "--out /proc/bmc-out"),
                                 (str(tmp_path / "out"), "/proc/bmc-cache", "--cache-dir /proc/bmc-cache"),
                                 (str(tmp_path / "out"), str(tmp_path / "a-file" / "cache"), "--cache-dir")]:
            assert _bridge_cli(source, out, *url, "--cache-dir", cache) == 2
            line = _one_line(capsys)
            assert flag in line and ("cannot write" in line or "not a folder" in line), line
        monkeypatch.setenv("BMC_CACHE_DIR", "/proc/bmc-cache")  # the default cache folder is checked too
        assert _bridge_cli(source, tmp_path / "out", *url) == 2
        assert "BMC_CACHE_DIR" in _one_line(capsys)
        assert server.call_count == 0
    assert not (tmp_path / "out").exists()


def test_a_corrupt_cache_file_is_named_with_how_to_move_it_aside(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = _pairs_file(tmp_path / "pairs.jsonl")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "calls.sqlite").write_bytes(b"this is not a database" * 100)
    with LLMServer(reply=bridge_reply) as server:
        assert _bridge_cli(source, tmp_path / "out", "--base-url", server.openai_base_url,
                           "--cache-dir", str(cache)) == 2
        assert server.call_count == 0
    line = _one_line(capsys)
    assert str(cache / "calls.sqlite") in line and "move it aside" in line and "please report" not in line
    from bmc_data.providers.cache import CallCache

    with pytest.raises(InputError, match="calls.sqlite: cannot open the call cache"):
        CallCache(cache / "calls.sqlite")


def test_bad_option_values_get_a_short_usage_line(tmp_path, capsys):
    from bmc_data.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["bridge", "--source", "x.jsonl", "--task", "qa", "--out", "o", "--limit", "-1"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) <= 2 and "--limit" in lines[-1] and "--help" in err, err


def _publish(tmp_path, llm, *extra):
    from bmc_data.publish import main

    source = _pairs_file(tmp_path / "pairs.jsonl")
    return main(["--source", str(source), "--provider", "openai", "--model", "editor", "--base-url",
                 llm.openai_base_url, "--out", str(tmp_path / "pub"), "--quiet", "--no-report", "--no-stats",
                 *extra])


def test_publish_checks_the_repo_id_offline_mode_and_hub_token_before_any_call(tmp_path, capsys, monkeypatch):
    from hub_server import HubServer

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login
    with LLMServer(reply=bridge_reply) as llm, HubServer(valid_tokens={"hf_rightTOKEN-0011223344"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        import huggingface_hub.constants as hub_constants

        monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
        for repo in ("org/", "/name", "org/na me", "a/b/c", "org/-bad-"):
            assert _publish(tmp_path, llm, "--repo", repo) == 2
            assert f"--repo must look like 'org/name'" in _one_line(capsys)
        assert _publish(tmp_path, llm, "--repo", "org/pairs") == 2
        assert "no Hub token" in _one_line(capsys)
        monkeypatch.setenv("HF_TOKEN", "hf_wrongTOKEN-99887766")
        assert _publish(tmp_path, llm, "--repo", "org/pairs") == 3
        line = _one_line(capsys)
        assert "the Hub rejected the token (HTTP 401)" in line and "hf_wrongTOKEN" not in line
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        assert _publish(tmp_path, llm, "--repo", "org/pairs") == 2
        assert "HF_HUB_OFFLINE" in _one_line(capsys)
        assert llm.call_count == 0
    assert not (tmp_path / "pub").exists()


def test_bridge_cli_skips_a_lone_surrogate_row_and_refuses_a_run_with_no_usable_row(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = tmp_path / "pairs.jsonl"
    source.write_text('{"prompt": "q0", "chosen": "good 0", "rejected": "bad 0"}\n'
                      '{"prompt": "q\\ud800", "chosen": "good 1", "rejected": "bad 1"}\n')
    with LLMServer(reply=bridge_reply) as server:
        url = ["--base-url", server.openai_base_url, "--cache-dir", str(tmp_path / "c")]
        assert _bridge_cli(source, tmp_path / "out", *url) == 2
        assert "row 1: field 'prompt'" in _one_line(capsys)
        assert server.call_count == 0
        assert _bridge_cli(source, tmp_path / "out", *url, "--skip-invalid") == 0
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["counts"] == {"bridged": 1} and summary["skipped_rows"][0]["field"] == "prompt"
        capsys.readouterr()
        source.write_text('{"prompt": "q\\ud800", "chosen": "good 1", "rejected": "bad 1"}\n')
        calls = server.call_count
        assert _bridge_cli(source, tmp_path / "out2", *url, "--skip-invalid") == 2
        assert "no usable row: 1 invalid row(s) skipped" in _one_line(capsys)
        assert server.call_count == calls


def test_make_pairs_reads_csv_answers_as_text_and_needs_them_before_sampling(tmp_path):
    from bmc_data import make_pairs

    path = tmp_path / "problems.csv"
    path.write_text("problem,solution,answer\n1+5?,It is six.,6\n2+2?,It is four.,\n")
    with LLMServer(reply=lambda messages: "The answer is 6") as server:
        with pytest.raises(InputError, match="row 1: no known final answer"):
            make_pairs(str(path), model=_openai(server), task="math", cache_dir=False, progress=False)
        assert server.call_count == 0
        pairs = make_pairs(str(path), model=_openai(server), task="math", cache_dir=False, progress=False,
                           answer_check=False)
    assert pairs["answer"] == ["6", None] and pairs["rejected_correct"] == [True, False]
    with LLMServer(reply=lambda m: "The answer is \ud800 4" if "2+2" in m[-1]["content"] else "The answer is 6") as server:
        pairs = make_pairs(str(path), model=_openai(server), task="math", cache_dir=False, progress=False,
                           answer_check=False)
    assert pairs["prompt"] == ["1+5?"]  # the sample that cannot be written is left out like a failed one
    pairs.to_json(str(tmp_path / "pairs.jsonl"))


def test_a_dataframe_read_from_parquet_keeps_its_conversations(tmp_path):
    rows = [{"chosen": _conversation("Say hi", "Hi!"), "rejected": _conversation("Say hi", "No."), "score": np.nan}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    frame = pd.read_parquet(tmp_path / "p.parquet")  # list columns come back as numpy arrays
    pairs = load_pairs(frame)
    assert pairs.layout == "conversational" and pairs[0].rejected == "No."
