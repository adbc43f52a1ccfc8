"""The rules a pseudo-winning response must meet before its row counts (bmc_data.bridging.checks), unit-level and
through bridge_dataset against a loopback OpenAI server."""

from __future__ import annotations

import json

import pytest
from llm_servers import LLMServer

from bmc_data import bridge_dataset
from bmc_data.bridging.checks import looping_segment, revision_problem
from bmc_data.providers.openai_chat import OpenAIProvider

# a held-out GSM8K row of the embedded editor (bench/embedded_editor_heldout.py): the replacement loops
_Y_L = "James runs 60 meters each sprint, so he runs 3 times that.\n#### 3"
_LOOPED = "He runs 3 times that. " * 10 + "\n#### 540"


def test_a_replacement_that_loops_fails_its_row():
    assert looping_segment(_LOOPED, _Y_L) == ("He runs 3 times that.", 10)
    why = revision_problem(_LOOPED, _Y_L, gold="540", task="math")
    assert why == "pseudo-winning response repeats 'He runs 3 times that.' 10 times (a looping edit; y_l has it fewer times)"


@pytest.mark.parametrize("revised,rejected", [
    ("Twice. Twice.\nThe answer is 5", "Once.\nThe answer is 4"),                       # two is not a loop
    ("La la la.\nLa la la.\nLa la la.\nThe answer is 5", "La la la.\nLa la la.\nLa la la.\nThe answer is 4"),  # y_l's own
])
def test_repeats_below_the_bar_or_from_y_l_are_fine(revised, rejected):
    assert looping_segment(revised, rejected) is None
    assert revision_problem(revised, rejected, gold="5", task="math") is None


def test_order_of_reasons_answer_first_then_identical():
    assert revision_problem("The answer is 4", "The answer is 4", gold="5", task="math").startswith(
        "pseudo-winning response final answer '4' does not match")
    assert revision_problem("The answer is 5", "The answer is 5", gold=None, task="math") == \
        "pseudo-winning response is identical to the rejected response"


def test_bridge_fails_a_looping_revision_and_keeps_the_others(shared_data):
    rows = [json.loads(line) for line in (shared_data / "qa" / "ecqa-train.jsonl").read_text().splitlines()[:2]]
    for row in rows:
        row["model_output"] = "Candles are nice.\nThe answer is cake"

    def reply(messages):
        first = rows[0]["problem"] in messages[-1]["content"]
        body = ("Candles are nice. " * 4 if first else "Candles belong here.") + f"\nThe answer is {rows[0 if first else 1]['answer']}"
        return f"<verdict>REVISE</verdict>\n<revised>\n{body}\n</revised>"

    with LLMServer(reply=reply) as server:
        provider = OpenAIProvider("editor", base_url=server.openai_base_url, api_key="sk-checksSECRET-0a1b2c3d4e")
        out = bridge_dataset(rows, task="qa", provider=provider, progress=False)
    assert out["bmc_status"] == ["failed", "bridged"]
    assert out[0]["bmc_reason"].startswith("pseudo-winning response repeats 'Candles are nice.' 4 times")
