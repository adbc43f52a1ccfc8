"""bridge_dataset end to end: real OpenAI/Anthropic wire formats on a loopback server, real datasets."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_servers import Fault, LLMServer, _section, bridge_reply

from bmc_data import bridge_dataset
from bmc_data.bridging.templates import load_template
from bmc_data.providers.anthropic_messages import AnthropicProvider
from bmc_data.providers.limits import ProviderLimits
from bmc_data.providers.openai_chat import OpenAIProvider

FAST = ProviderLimits(max_concurrency=8, timeout_s=2.0, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05)
SECRET = "sk-test-SECRET-0123456789"


def _qa_rows(shared_data: Path, n: int, wrong: str = "The answer is banana") -> list[dict]:
    rows = [json.loads(l) for l in (shared_data / "qa" / "ecqa-train.jsonl").read_text().splitlines()[:n]]
    for row in rows:
        row["model_output"] = f"I think about it briefly.\n{wrong}"
    return rows


def _provider(server: LLMServer, limits: ProviderLimits = FAST) -> OpenAIProvider:
    return OpenAIProvider("editor-model", base_url=server.openai_base_url, api_key=SECRET, limits=limits)


def test_qa_rows_bridge_in_order_with_provenance(shared_data):
    rows = _qa_rows(shared_data, 6)
    with LLMServer(reply=bridge_reply) as server:
        out, summary = bridge_dataset(rows, task="qa", provider=_provider(server), progress=False, return_summary=True)
    assert len(out) == 6 and server.call_count == 6
    assert out["bmc_status"] == ["bridged"] * 6
    assert out["chosen"] == [r["solution"] for r in rows]  # the scripted editor returns the reference
    assert out["rejected"] == [r["model_output"] for r in rows]
    assert out["original_chosen"] == [r["solution"] for r in rows]
    assert out["answer"] == [r["answer"] for r in rows]
    assert set(out["bmc_prompt_version"]) == {load_template("qa").version_id}
    assert set(out["bmc_provider"]) == {"openai"} and set(out["bmc_model"]) == {"editor-model"}
    assert summary.counts == {"bridged": 6} and summary.usage["calls"] == 6


def _verdict_reply(messages):
    """GOOD when the student's answer is right, otherwise a revision that keeps the student's text."""
    text = messages[-1]["content"]
    student = _section(text, "Student solution")
    reference = _section(text, "Reference solution (correct)")
    ref_answer = reference.rsplit("The answer is", 1)[1].strip()
    if student.endswith(ref_answer):
        return "<verdict>GOOD</verdict>\n<revised></revised>"
    if "WRONG-EDIT" in student:
        return "<verdict>REVISE</verdict>\n<revised>\nStill wrong.\nThe answer is nothing\n</revised>"
    if "LIES" in student:
        return "<verdict>GOOD</verdict>"
    return f"<verdict>REVISE</verdict>\n<revised>\n{student.rsplit(chr(10), 1)[0]}\nThe answer is {ref_answer}\n</revised>"


def test_filtering_and_ground_truth_check(shared_data):
    rows = _qa_rows(shared_data, 4)
    rows[0]["model_output"] = f"Easy.\nThe answer is {rows[0]['answer']}"  # already right -> filtered
    rows[1]["model_output"] = "WRONG-EDIT\nThe answer is banana"  # editor's revision misses the answer -> failed
    rows[2]["model_output"] = "LIES\nThe answer is banana"  # editor says GOOD but y_l is wrong -> failed
    with LLMServer(reply=_verdict_reply) as server:
        out = bridge_dataset(rows, task="qa", provider=_provider(server), progress=False)
    assert out["bmc_status"] == ["filtered", "failed", "failed", "bridged"]
    assert "already good enough" in out[0]["bmc_reason"]
    assert out[1]["bmc_reason"] == f"pseudo-winning response final answer 'nothing' does not match the ground truth {rows[1]['answer']!r}"
    assert out[2]["bmc_reason"].startswith("editor judged the rejected response good enough, but it final answer 'banana'")
    # the bridged row keeps y_l's wording and fixes only the final answer
    assert out[3]["chosen"] == f"I think about it briefly.\nThe answer is {rows[3]['answer']}"
    # filtered/failed rows keep y_w as chosen
    assert out[0]["chosen"] == rows[0]["solution"] and out[1]["chosen"] == rows[1]["solution"]


def test_one_repair_turn_then_failure(shared_data):
    rows = _qa_rows(shared_data, 2)
    # the repair turn ends with our repair request; answer it from the original request before it
    replies = iter(["I refuse to use tags.", lambda m: bridge_reply(m[:-2]), "still no tags", "nope, no tags"])

    def reply(messages):
        nxt = next(replies)
        return nxt(messages) if callable(nxt) else nxt

    with LLMServer(reply=reply) as server:
        out = bridge_dataset(rows, task="qa", provider=_provider(server), concurrency=1, progress=False)
    assert out["bmc_status"] == ["bridged", "failed"]
    assert out[1]["bmc_reason"] == "unparsable reply after one repair: it has neither a <verdict> nor a <revised> block"
    repair_turn = server.bodies[1]["messages"]
    assert repair_turn[-2] == {"role": "assistant", "content": "I refuse to use tags."}
    assert "could not use your reply" in repair_turn[-1]["content"]
    assert server.call_count == 4


@pytest.mark.parametrize("fault,expect_status,reason_part", [
    (Fault.rate_limited(retry_after=0.2), "bridged", ""),
    (Fault.server_error(), "bridged", ""),
    (Fault.overloaded(), "bridged", ""),
    (Fault.hang(5), "bridged", ""),
    (Fault.drop(), "bridged", ""),
    (Fault.malformed(), "bridged", ""),
    (Fault.truncated(), "failed", "reply truncated at max_tokens=2048 (finish_reason=length)"),
])
def test_each_fault_ends_as_retry_or_failed_row(shared_data, fault, expect_status, reason_part):
    rows = _qa_rows(shared_data, 3)
    with LLMServer(reply=bridge_reply, faults=[fault]) as server:
        out = bridge_dataset(rows, task="qa", provider=_provider(server), concurrency=1, progress=False)
    assert len(out) == 3  # no lost rows
    assert out[0]["bmc_status"] == expect_status and reason_part in out[0]["bmc_reason"]
    assert out["bmc_status"][1:] == ["bridged", "bridged"]


def test_persistent_failure_marks_rows_failed_not_crash(shared_data):
    rows = _qa_rows(shared_data, 2)
    with LLMServer(reply=bridge_reply, fault_fn=lambda i, body: Fault.server_error()) as server:
        out = bridge_dataset(rows, task="qa", provider=_provider(server), progress=False)
    assert out["bmc_status"] == ["failed", "failed"]
    assert all(r.startswith("provider error:") and "500" in r for r in out["bmc_reason"])
    assert server.call_count == 2 * (FAST.max_retries + 1)


def test_rerun_is_served_from_cache(shared_data, tmp_path):
    rows = _qa_rows(shared_data, 5)
    with LLMServer(reply=bridge_reply) as server:
        first = bridge_dataset(rows, task="qa", provider=_provider(server), cache_dir=tmp_path, progress=False)
        calls = server.call_count
        second, summary = bridge_dataset(rows, task="qa", provider=_provider(server), cache_dir=tmp_path,
                                         progress=False, return_summary=True)
    assert calls == 5 and server.call_count == 5
    assert summary.usage["cached_calls"] == 5
    assert first.to_list() == second.to_list()


def test_instruction_conversational_layout_round_trips_and_anthropic_works():
    rows = [{
        "prompt": f"Question {i}?",
        "chosen": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Good answer {i}."}],
        "rejected": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Meh {i}."}],
        "score_chosen": 9.0, "score_rejected": 2.0,
    } for i in range(3)]
    with LLMServer(reply=bridge_reply) as server:
        provider = AnthropicProvider("claude-test", base_url=server.anthropic_base_url, api_key=SECRET, limits=FAST)
        out = bridge_dataset(rows, task="instruction", provider=provider, progress=False)
        assert server.requests[0].path == "/v1/messages"
    assert out["bmc_status"] == ["bridged"] * 3
    assert out[1]["prompt"] == [{"role": "user", "content": "Question 1?"}]
    assert out[1]["chosen"] == [{"role": "assistant", "content": "Meh 1. (revised)"}]
    assert out[1]["rejected"] == [{"role": "assistant", "content": "Meh 1."}]
    assert out[1]["original_chosen"] == [{"role": "assistant", "content": "Good answer 1."}]


def test_secrets_never_reach_outputs_or_logs(shared_data, tmp_path, caplog):
    """A 401 whose body echoes the key stops the run (systemic), and the key is in no log, error or summary."""
    from bmc_data.errors import SystemicFailure

    rows = _qa_rows(shared_data, 2)
    caplog.set_level(logging.DEBUG)
    with LLMServer(reply=bridge_reply, faults=[Fault.error(500, f"boom {SECRET}"),
                                               Fault.error(401, f"bad key {SECRET}")]) as server:
        with pytest.raises(SystemicFailure) as info:
            bridge_dataset(rows, task="qa", provider=_provider(server), progress=False, concurrency=1,
                           summary_path=tmp_path / "summary.json")
    assert "401" in str(info.value) and "rejected the key" in str(info.value)
    assert SECRET not in str(info.value) + caplog.text
    assert "boom ***" in caplog.text  # the retried 500 was logged, scrubbed
    assert not (tmp_path / "summary.json").exists()  # no output that pretends to be complete


def test_killed_run_resumes_without_lost_rows_or_repeated_calls(shared_data, tmp_path):
    """SIGKILL a real bridging subprocess midway; the rerun finishes with every row and no repeated call."""
    rows = _qa_rows(shared_data, 40)
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows))
    repo = Path(__file__).resolve().parents[1]
    with LLMServer(reply=bridge_reply, latency_s=0.05) as server:
        cmd = [sys.executable, "-m", "bmc_data", "bridge", "--source", str(source), "--task", "qa",
               "--provider", "openai", "--model", "editor-model", "--base-url", server.openai_base_url,
               "--concurrency", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet"]
        env = {**os.environ, "OPENAI_API_KEY": SECRET}
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while server.call_count < 15 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = server.call_count
        assert 15 <= killed_at < 40, "the run must be killed midway"
        assert not (tmp_path / "out" / "bridged.parquet").exists()
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        # a request cut by the SIGKILL between its headers and its body is recorded without a body: not a call
        prompts = [json.dumps(b["messages"], sort_keys=True) for b in server.bodies if isinstance(b, dict) and "messages" in b]
    # calls in flight at the kill had no reply stored: at most `concurrency` of them are made again
    assert len(prompts) - len(set(prompts)) <= 2
    assert len(set(prompts)) == 40
    import datasets

    out = datasets.Dataset.from_parquet(str(tmp_path / "out" / "bridged.parquet"))
    assert out["bmc_status"] == ["bridged"] * 40
    assert out["rejected"] == [r["model_output"] for r in rows]
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.slow
def test_embedded_smollm2_bridges_real_qa_pairs_end_to_end(shared_data, tmp_path):
    """The embedded default for real: make_pairs samples y_l from SmolLM2-135M for real ECQA problems, then
    bridge_dataset (no provider given) runs targeted modification with the same model. The model is weak, so the
    test asserts the contract — one row per pair, a status and a reason for each, provenance, cache reuse — and
    not the quality of its edits."""
    from bmc_data import make_pairs
    from bmc_data.pairs.schema import Status

    pairs = make_pairs(shared_data / "qa" / "ecqa-train.jsonl", task="qa", limit=2, max_tokens=32,
                       cache_dir=tmp_path, progress=False)
    assert len(pairs) == 2 and all(r.strip() for r in pairs["rejected"])
    assert pairs["answer"] == [json.loads(l)["answer"] for l in (shared_data / "qa" / "ecqa-train.jsonl").read_text().splitlines()[:2]]
    out, summary = bridge_dataset(pairs, task="qa", max_tokens=64, cache_dir=tmp_path, progress=False, return_summary=True)
    assert len(out) == 2 and out["rejected"] == pairs["rejected"]
    assert set(out["bmc_provider"]) == {"embedded"} and "SmolLM2-135M-Instruct" in out[0]["bmc_model"]
    for row in out:
        assert row["bmc_status"] in {s.value for s in Status}
        assert (row["bmc_status"] == "bridged") == (row["bmc_reason"] == "")
    assert sum(summary.counts.values()) == 2 and summary.usage["calls"] >= 2
    # a rerun is served entirely from the cache
    again, summary2 = bridge_dataset(pairs, task="qa", max_tokens=64, cache_dir=tmp_path, progress=False,
                                     return_summary=True)
    assert again.to_list() == out.to_list()
    assert summary2.usage["calls"] == 0 and summary2.usage["cached_calls"] == summary.usage["calls"]


def test_summary_groups_reasons_that_differ_only_in_quoted_values(shared_data):
    rows = _qa_rows(shared_data, 4)
    wrong = lambda messages: "<verdict>REVISE</verdict>\n<revised>\nHmm.\nThe answer is nothing\n</revised>"
    with LLMServer(reply=wrong) as server:
        out, summary = bridge_dataset(rows, task="qa", provider=_provider(server), progress=False, return_summary=True)
    assert len(set(out["bmc_reason"])) == 4  # each row names its own ground truth
    assert summary.reasons == {"failed": {"pseudo-winning response final answer '…' does not match the ground truth '…'": 4}}
