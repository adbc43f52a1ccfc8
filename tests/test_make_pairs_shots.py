"""`make_pairs(shots=N)` / `bridge --make-pairs --shots N`: the source's first N problems are shown to the model as
worked examples (earlier chat turns) and are not paired; against a real HTTP server on loopback that records what
the model was sent."""

from __future__ import annotations

import json

import pytest
from llm_servers import LLMServer, bridge_reply

from bmc_data import make_pairs
from bmc_data.__main__ import main as bridge_main
from bmc_data.errors import InputError, UsageError
from bmc_data.providers.openai_chat import OpenAIProvider

KEY = "sk-shotsSECRET-Distinct-5e6f7a8b9c0d"


def _sent(server: LLMServer) -> list[list[dict]]:
    return [r.body["messages"] for r in server.requests]


def test_shots_are_earlier_turns_and_are_not_paired(shared_data, tmp_path):
    source = shared_data / "qa" / "ecqa-train.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()[:5]]
    with LLMServer(reply=lambda messages: "I thought about it.\nThe answer is cake") as server:
        provider = OpenAIProvider("sft", base_url=server.openai_base_url, api_key=KEY)
        pairs = make_pairs(source, model=provider, task="qa", shots=2, limit=3, cache_dir=tmp_path, progress=False)
        sent = _sent(server)
    # limit counts the problems after the shots; ids are the rows' places in the source
    assert pairs["prompt"] == [r["problem"] for r in rows[2:5]] and pairs["id"] == ["2", "3", "4"]
    assert pairs["chosen"] == [r["solution"] for r in rows[2:5]]
    assert len(sent) == 3
    for messages in sent:
        worked = [m for m in messages if m["role"] != "system"][:4]
        assert worked == [{"role": "user", "content": rows[0]["problem"]},
                          {"role": "assistant", "content": rows[0]["solution"]},
                          {"role": "user", "content": rows[1]["problem"]},
                          {"role": "assistant", "content": rows[1]["solution"]}]
        assert messages[-1]["role"] == "user" and messages[-1]["content"] in [r["problem"] for r in rows[2:5]]


def test_without_shots_the_request_is_the_problem_and_the_instruction(shared_data, tmp_path):
    from bmc_data.bridging.sampling import ANSWER_INSTRUCTION

    source = shared_data / "qa" / "ecqa-train.jsonl"
    first = json.loads(source.read_text().splitlines()[0])
    with LLMServer(reply=lambda messages: "The answer is cake") as server:
        provider = OpenAIProvider("sft", base_url=server.openai_base_url, api_key=KEY)
        pairs = make_pairs(source, model=provider, task="qa", limit=1, cache_dir=tmp_path, progress=False)
        (messages,) = _sent(server)
    assert pairs["id"] == ["0"]
    assert messages == [{"role": "user", "content": f"{first['problem']}\n\n{ANSWER_INSTRUCTION}"}]


@pytest.mark.parametrize("shots,error", [(-1, UsageError), (1.5, UsageError), (3, InputError), (7, InputError)])
def test_shots_that_are_not_a_count_or_leave_no_problem_fail_before_any_call(tmp_path, shots, error):
    rows = [{"problem": f"p{i}", "solution": f"s{i}\nThe answer is a{i}", "answer": f"a{i}"} for i in range(3)]
    with LLMServer() as server:
        provider = OpenAIProvider("sft", base_url=server.openai_base_url, api_key=KEY)
        with pytest.raises(error, match="shots"):
            make_pairs(rows, model=provider, task="qa", shots=shots, cache_dir=tmp_path, progress=False)
        assert server.call_count == 0


def test_cli_shots_reach_sampling_and_need_make_pairs(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = shared_data / "qa" / "ecqa-train.jsonl"
    first = json.loads(source.read_text().splitlines()[0])

    def reply(messages):
        return bridge_reply(messages) if "### Student solution" in messages[-1]["content"] else "The answer is cake"

    args = ["bridge", "--source", str(source), "--task", "qa", "--limit", "2", "--quiet", "--provider", "openai",
            "--model", "editor", "--cache-dir", str(tmp_path / "cache")]
    with LLMServer(reply=reply) as server:
        code = bridge_main([*args, "--shots", "1", "--base-url", server.openai_base_url, "--out", str(tmp_path / "x")])
        assert code == 2 and server.call_count == 0
        assert "--shots" in capsys.readouterr().err and not (tmp_path / "x").exists()
        code = bridge_main([*args, "--make-pairs", "--shots", "1", "--base-url", server.openai_base_url,
                            "--out", str(tmp_path / "out")])
        sampling = [m for m in _sent(server) if "### Student solution" not in m[-1]["content"]]
    assert code == 0, capsys.readouterr().err
    assert len(sampling) == 2 and all(m[0] == {"role": "user", "content": first["problem"]} for m in sampling)
    pairs = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert [p["id"] for p in pairs] == ["1", "2"]
