import pytest

from bmc_data.bridging.parsing import ReplyFormatError, Verdict, parse_reply


def test_tagged_reply_with_revision():
    reply = "<verdict>REVISE</verdict>\n<revised>\nStep 1: 2+2=4.\nThe answer is 4\n</revised>"
    parsed = parse_reply(reply, requires_verdict=True)
    assert parsed.verdict is Verdict.REVISE
    assert parsed.revised == "Step 1: 2+2=4.\nThe answer is 4"


def test_good_verdict_needs_no_revision():
    parsed = parse_reply("<verdict> Good </verdict>\n<revised></revised>", requires_verdict=True)
    assert parsed.verdict is Verdict.GOOD and parsed.revised is None


@pytest.mark.parametrize("word,expected", [("CORRECT", Verdict.GOOD), ("incorrect", Verdict.REVISE), ("Revise.", Verdict.REVISE)])
def test_verdict_synonyms(word, expected):
    parsed = parse_reply(f"<verdict>{word}</verdict><revised>fixed text</revised>", requires_verdict=True)
    assert parsed.verdict is expected


def test_code_fences_and_missing_closing_tag():
    reply = "```\n<verdict>REVISE</verdict>\n<revised>\nThe answer is 7\n```"
    assert parse_reply(reply, requires_verdict=True).revised == "The answer is 7"


def test_json_fallback_keeps_quotes_and_newlines():
    reply = 'Sure! {"verdict": "revise", "revised_response": "He said \\"hi\\".\\nThe answer is hi"}'
    parsed = parse_reply(reply, requires_verdict=True)
    assert parsed.revised == 'He said "hi".\nThe answer is hi'


@pytest.mark.parametrize("reply,reason", [
    ("", "empty"),
    ("I think the student is wrong.", "neither"),
    ("<verdict>maybe</verdict><revised>x</revised>", "GOOD or REVISE"),
    ("<verdict>REVISE</verdict><revised>   </revised>", "missing or empty"),
    ("<revised>text</revised>", "verdict> block is missing"),
])
def test_unusable_replies_say_why(reply, reason):
    with pytest.raises(ReplyFormatError, match=reason):
        parse_reply(reply, requires_verdict=True)


def test_instruction_template_needs_only_revised():
    parsed = parse_reply("<revised>A better answer.</revised>", requires_verdict=False)
    assert parsed.verdict is Verdict.REVISE and parsed.revised == "A better answer."


# --- issue 19: what the tag format must keep ---------------------------------------------------------------------
FENCED = "```python\ndef f(x):\n    return x + 1\n```"


def test_a_revised_body_that_is_one_fenced_code_block_keeps_its_fences():
    reply = f"<verdict>REVISE</verdict>\n<revised>\n{FENCED}\n</revised>"
    assert parse_reply(reply, requires_verdict=True).revised == FENCED
    assert parse_reply(reply, requires_verdict=True, rejected="```python\ndef f(x): pass\n```").revised == FENCED
    # fences the editor wrapped around a response that has none are its own wrapping, not content
    wrapped = "<revised>\n```\nThe answer is 7\n```\n</revised>"
    assert parse_reply(wrapped, requires_verdict=False, rejected="The answer is 6").revised == "The answer is 7"


def test_a_literal_closing_tag_inside_the_revised_text_does_not_truncate_it():
    body = "Close the block with </revised> on its own line.\nThe answer is 7"
    reply = f"<verdict>REVISE</verdict>\n<revised>\n{body}\n</revised>\nHope this helps."
    assert parse_reply(reply, requires_verdict=True).revised == body


# --- issue 17: the tag and edit-list formats share their first steps (pinned before they were merged) ------------
@pytest.mark.parametrize("reply,verdict", [
    ("```\n<verdict>REVISE</verdict>\n<revised>\nx\n```", Verdict.REVISE),     # fenced whole reply, unclosed tag
    ("<verdict>GOOD\n<revised></revised>", Verdict.GOOD),                          # unclosed <verdict>
    ("<VERDICT> correct </VERDICT>", Verdict.GOOD),
])
def test_both_formats_read_the_verdict_alike(reply, verdict):
    from bmc_data.bridging.edits import parse_edit_reply

    assert parse_reply(reply, requires_verdict=True).verdict is verdict
    edits_reply = reply.replace("<revised>\nx\n", "<edits><edit><find>a</find><replace>b</replace></edit></edits>\n")
    assert parse_edit_reply(edits_reply, "a", requires_verdict=True).verdict is verdict


@pytest.mark.parametrize("reply,reason,edit_error", [
    ("", "the reply is empty", True), ("  \n", "the reply is empty", True),
    ("<verdict>maybe</verdict>", "the verdict must be GOOD or REVISE, got 'maybe'", False),
    ("<edits></edits>", "the <verdict> block is missing", True)])
def test_both_formats_refuse_alike(reply, reason, edit_error):
    from bmc_data.bridging.edits import EditError, parse_edit_reply

    with pytest.raises(ReplyFormatError, match=reason) as raised:
        parse_edit_reply(reply, "a", requires_verdict=True)
    assert isinstance(raised.value, EditError) is edit_error
    if "<edits>" not in reply:
        with pytest.raises(ReplyFormatError, match=reason) as raised:
            parse_reply(reply, requires_verdict=True)
        assert not isinstance(raised.value, EditError)


def test_bridged_rows_keep_fenced_code_and_literal_closing_tags(tmp_path):
    from llm_servers import LLMServer, _section

    from bmc_data import bridge_dataset
    from bmc_data.providers import get_provider

    literal = "Write </revised> to close the block.\nThen stop."

    def reply(messages):
        rejected = _section(messages[-1]["content"], "Dispreferred response")
        return f"<revised>\n{FENCED if rejected.startswith('```') else literal}\n</revised>"

    data = [{"prompt": "code", "chosen": "good", "rejected": "```python\ndef f(x): pass\n```"},
            {"prompt": "tags", "chosen": "good", "rejected": "Write a tag."}]
    with LLMServer(reply=reply) as server:
        provider = get_provider("openai", "editor", base_url=server.openai_base_url, api_key="sk-test")
        ds = bridge_dataset(data, task="instruction", provider=provider, cache_dir=tmp_path, progress=False)
    assert ds["bmc_status"] == ["bridged", "bridged"]
    assert ds["chosen"] == [FENCED, literal]
