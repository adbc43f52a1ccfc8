"""The edit-list reply format: applier properties (hypothesis), failure reasons, templates and bridging."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_servers import LLMServer, _section

from bmc_data import bridge_dataset
from bmc_data.bridging.edits import (
    Edit,
    EditError,
    apply_edits,
    edits_between,
    format_edits,
    parse_edit_reply,
    parse_edits,
)
from bmc_data.bridging.parsing import Verdict
from bmc_data.bridging.templates import load_template
from bmc_data.providers import get_provider

# few distinct characters and words: repeated spans (the ambiguous case) are common
WORDS = st.sampled_from(["a", "b", "the", "cat", "sat", "on", "mat", "42", "é", "\n", " ", ".", ",", "  ", "(", "x=1"])
TEXT = st.lists(WORDS, max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(TEXT, TEXT)
def test_edits_between_any_pair_reproduce_the_target_exactly(a, b):
    edits = edits_between(a, b)
    assert apply_edits(a, edits) == b
    assert (edits == []) == (a == b)
    assert all(e.find for e in edits[:-1])  # an empty span only last, where nothing of `a` is left to quote


@settings(max_examples=200, deadline=None)
@given(TEXT.filter(lambda t: "<" not in t), TEXT.filter(lambda t: "<" not in t))
def test_edits_survive_the_reply_text_round_trip(a, b):
    edits = edits_between(a, b)
    if not edits:
        return
    reply = f"<verdict>REVISE</verdict>\n{format_edits(edits)}"
    parsed = parse_edit_reply(reply, a, requires_verdict=True)
    assert parsed.verdict is Verdict.REVISE and parsed.revised == b


@settings(max_examples=200, deadline=None)
@given(TEXT, st.text(alphabet="qz", min_size=1, max_size=5))
def test_a_span_that_does_not_occur_is_reported(a, missing):
    with pytest.raises(EditError, match=r"edit 1: the span .* does not occur in the response"):
        apply_edits(a, [Edit(missing, "x")])


@settings(max_examples=200, deadline=None)
@given(TEXT, st.sampled_from(["cat", "the", "."]), st.integers(2, 4))
def test_an_ambiguous_span_is_reported_with_its_count(a, word, times):
    text = a.replace(word, "") + (" " + word) * times
    with pytest.raises(EditError, match=rf"edit 1: the span '{re.escape(word)}' occurs {times} times in the response; "
                                        "quote more context"):
        apply_edits(text, [Edit(word, "dog")])


def test_documented_failure_reasons():
    text = "The cat sat on the mat. The cat slept."
    with pytest.raises(EditError, match="edit 1: the span to find is empty"):
        apply_edits(text, [Edit("", "x")])
    # a span that occurs only before the previous edit's span
    with pytest.raises(EditError, match="edit 2: the span 'sat' does not occur after the previous edit's span"):
        apply_edits(text, [Edit("on the mat", "on a rug"), Edit("sat", "stood")])
    # repeated in the whole text but unique after the previous edit: fine
    assert apply_edits(text, [Edit("sat", "stood"), Edit("The cat", "A dog")]) == "The cat stood on the mat. A dog slept."
    with pytest.raises(EditError, match="the <edits> block is missing"):
        parse_edit_reply("<verdict>REVISE</verdict>", text, requires_verdict=True)
    with pytest.raises(EditError, match="the <edits> block contains no <edit>"):
        parse_edits("\n")
    with pytest.raises(EditError, match="edit 2 has no <replace> block"):
        parse_edits("<edit><find>a</find><replace>b</replace></edit><edit><find>c</find></edit>")
    with pytest.raises(EditError, match="edit 1 has no <find> block"):
        parse_edits("<edit><replace>b</replace></edit>")
    with pytest.raises(EditError, match="the <verdict> block is missing"):
        parse_edit_reply("<edits><edit><find>cat</find><replace>dog</replace></edit></edits>", text, requires_verdict=True)
    assert parse_edit_reply("<verdict>GOOD</verdict>", text, requires_verdict=True).verdict is Verdict.GOOD


def test_tags_on_lines_of_their_own_are_accepted():
    text = "Step 1: 2+2=5.\nThe answer is 5"
    reply = "<edits>\n<edit>\n<find>\n2+2=5\n</find>\n<replace>\n2+2=4\n</replace>\n</edit>\n<edit><find>is 5</find><replace>is 4</replace></edit>\n</edits>"
    assert parse_edit_reply(reply, text, requires_verdict=False).revised == "Step 1: 2+2=4.\nThe answer is 4"


def test_edit_templates_are_versioned_and_selected_by_reply_format():
    for task, version in (("instruction", "instruction-edits-v1"), ("qa", "qa-math-edits-v1"), ("math", "qa-math-edits-v1")):
        template = load_template(task, reply_format="edits")
        assert template.version == version and template.reply_format == "edits"
        assert load_template(task).reply_format == "full"  # the paper's full rewrite stays the default
    with pytest.raises(ValueError, match="reply_format must be one of"):
        load_template("qa", reply_format="diff")


def _edit_reply(messages):
    """An editor that answers the edit templates correctly: appends ' (revised)' to y_l via one edit."""
    rejected = _section(messages[-1]["content"], "Dispreferred response")
    return format_edits(edits_between(rejected, rejected + " (revised)"))


def test_bridging_with_edits_applies_them_and_repairs_a_missing_span(tmp_path):
    calls = []

    def reply(messages):
        calls.append(len(messages))
        if len(messages) == 2 and "variant 1" in messages[-1]["content"]:
            return "<edits><edit><find>no such words</find><replace>x</replace></edit></edits>"
        if len(messages) > 2:  # the repair turn quotes the reason
            assert "does not occur in the response" in messages[-1]["content"]
            return _edit_reply(messages[:2])
        return _edit_reply(messages)

    data = [{"prompt": f"q (variant {i})", "chosen": "good", "rejected": f"bad answer (variant {i})"} for i in range(3)]
    with LLMServer(reply=reply) as server:
        provider = get_provider("openai", "editor", base_url=server.openai_base_url, api_key="sk-test")
        ds = bridge_dataset(data, task="instruction", provider=provider, cache_dir=tmp_path, reply_format="edits",
                            progress=False)
    assert ds["bmc_status"] == ["bridged"] * 3
    assert ds["chosen"] == [f"bad answer (variant {i}) (revised)" for i in range(3)]
    assert set(ds["bmc_prompt_version"]) == {load_template("instruction", reply_format="edits").version_id}
    assert sorted(calls) == [2, 2, 2, 4]


def test_bridging_with_edits_fails_with_the_reason_after_one_repair(tmp_path):
    data = [{"prompt": "q", "chosen": "good", "rejected": "the cat and the cat"}]
    with LLMServer(reply=lambda m: "<edits><edit><find>cat</find><replace>dog</replace></edit></edits>") as server:
        provider = get_provider("openai", "editor", base_url=server.openai_base_url, api_key="sk-test")
        ds = bridge_dataset(data, task="instruction", provider=provider, cache_dir=tmp_path, reply_format="edits",
                            progress=False)
        assert server.call_count == 2
    assert ds["bmc_status"] == ["failed"]
    assert ds["bmc_reason"][0] == ("unparsable reply after one repair: edit 1: the span 'cat' occurs 2 times in the "
                                   "response; quote more context to make it unique")
