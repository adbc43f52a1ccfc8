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
