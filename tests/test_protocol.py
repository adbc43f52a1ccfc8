"""The structured reply protocol: segmentation, the per-pair schema (anchoring, answer constraint), the parser."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_servers import conformance_problems, strict_schema_problems

from bmc_data.bridging.edits import EditError
from bmc_data.bridging.parsing import ReplyFormatError, Verdict
from bmc_data.bridging.protocol import (
    SCHEMA_NAME,
    apply_segment_edits,
    parse_structured_reply,
    reply_schema,
    segment,
    with_final_answer,
)
from bmc_data.pairs.answers import extract_answer

PIECES = st.sampled_from(["The cat sat.", " ", "  ", "\n", "\n\n", "e.g. this", "Is it?", "Yes!", "x = 1.5",
                          "\t", "(see above).", " 42", "The answer is 7", "é", "\"Quoted.\"", "a"])
TEXT = st.lists(PIECES, max_size=25).map("".join)
SOLUTION = "Step 1: 2+2=5. So we add 3.\nThen e.g. this stays whole! Next one?  Yes.\n\nThe answer is 8."


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_segments_cover_the_text_and_leave_only_whitespace_between(text):
    segments = segment(text)
    cursor = 0
    for seg in segments:
        assert seg.start >= cursor and text[seg.start:seg.end] == seg.text
        assert seg.text == seg.text.strip() and seg.text and "\n" not in seg.text
        assert text[cursor:seg.start].strip() == ""
        cursor = seg.end
    assert text[cursor:].strip() == ""


def test_segmentation_rule():
    assert [s.text for s in segment(SOLUTION)] == [
        "Step 1: 2+2=5.", "So we add 3.", "Then e.g. this stays whole!", "Next one?", "Yes.", "The answer is 8."]
    assert [s.text for s in segment('He said "Stop." Then left. x = 3.5 m.\n  - item one\n```\ncode();\n```')] == [
        'He said "Stop."', "Then left. x = 3.5 m.", "- item one", "```", "code();", "```"]  # lowercase: no split


def test_the_schema_names_the_segments_and_fixes_the_answer():
    schema = reply_schema(SOLUTION + "\nYes.", requires_verdict=True, answer="7")
    assert list(schema["properties"]) == ["verdict", "edits", "final_answer"] == schema["required"]
    segment_enum = schema["properties"]["edits"]["items"]["properties"]["segment"]["enum"]
    assert segment_enum == ["Step 1: 2+2=5.", "So we add 3.", "Then e.g. this stays whole!", "Next one?", "Yes.",
                            "The answer is 8."]  # each text once, in order
    assert schema["properties"]["final_answer"] == {"type": "string", "enum": ["7"]}
    assert schema["properties"]["verdict"]["enum"] == ["REVISE"]  # y_l says 8, not 7: "GOOD" would be refused
    assert reply_schema(SOLUTION, requires_verdict=True, answer="8")["properties"]["verdict"]["enum"] == ["GOOD", "REVISE"]
    assert reply_schema(SOLUTION, requires_verdict=True)["properties"]["verdict"]["enum"] == ["GOOD", "REVISE"]
    assert reply_schema(SOLUTION, requires_verdict=True, answer="8.0", task="math")["properties"]["verdict"]["enum"] \
        == ["GOOD", "REVISE"]  # math answers compare by value
    instruction = reply_schema("Hi there. Bye.", requires_verdict=False)
    assert list(instruction["properties"]) == ["edits"]
    with pytest.raises(ValueError, match="no text an edit could name"):
        reply_schema(" \n ", requires_verdict=False)


@pytest.mark.parametrize("kwargs", [dict(requires_verdict=True, answer="7"), dict(requires_verdict=False)])
def test_the_schema_stays_in_the_subset_every_backend_accepts(kwargs):
    schema = reply_schema(SOLUTION, **kwargs)
    assert strict_schema_problems(schema) == []  # OpenAI strict: every property required, no extra ones
    text = json.dumps(schema)
    for keyword in ('"const"', '"minItems"', '"maxLength"', '"pattern"', '"anyOf"', '"$ref"', '"default"'):
        assert keyword not in text
    assert len(SCHEMA_NAME) <= 64 and SCHEMA_NAME.replace("_", "").isalnum()


def test_the_schema_refuses_an_edit_of_text_that_is_not_in_y_l():
    schema = reply_schema(SOLUTION, requires_verdict=True, answer="7")
    good = {"verdict": "REVISE", "edits": [{"segment": "So we add 3.", "replacement": "So we add 2."}], "final_answer": "7"}
    assert conformance_problems(good, schema) == []
    for bad in ({**good, "edits": [{"segment": "So we add", "replacement": "x"}]},  # part of a segment
                {**good, "edits": [{"segment": "So we add 4.", "replacement": "x"}]},
                {**good, "final_answer": "8"}, {**good, "verdict": "MAYBE"}, {**good, "extra": 1}):
        assert conformance_problems(bad, schema)


def test_llama_cpp_converts_the_schema_to_a_grammar():
    grammar = pytest.importorskip("llama_cpp.llama_grammar", reason="llama-cpp-python is not installed")
    gbnf = grammar.json_schema_to_gbnf(json.dumps(reply_schema(SOLUTION, requires_verdict=True, answer="7")))
    assert '\\"So we add 3.\\"' in gbnf and '\\"7\\"' in gbnf


@settings(max_examples=300, deadline=None)
@given(TEXT, st.data())
def test_applied_edits_change_only_the_named_segments(text, data):
    segments = segment(text)
    if not segments:
        return
    picked = data.draw(st.lists(st.integers(0, len(segments) - 1), unique=True, max_size=len(segments)))
    replacement = data.draw(st.sampled_from(["NEW", "", "two\nlines"]))
    edits = [(segments[i].text, replacement) for i in data.draw(st.permutations(picked))]
    # the k-th edit naming a text takes that text's k-th segment, whatever the order of the edits
    wanted = {}
    for text_of, _ in edits:
        wanted[text_of] = wanted.get(text_of, 0) + 1
    occurrence = set()
    for i, seg in enumerate(segments):
        if wanted.get(seg.text, 0) > 0:
            occurrence.add(i)
            wanted[seg.text] -= 1
    revised = apply_segment_edits(text, edits)
    if not edits:
        assert revised == text
        return
    expected, cursor = [], 0
    for i, seg in enumerate(segments):
        if i in occurrence:
            start, end = seg.start, seg.end
            if replacement == "":
                if i + 1 < len(segments):
                    end = segments[i + 1].start
                elif i > 0:
                    start = max(cursor, segments[i - 1].end)
            expected += [text[cursor:start], replacement]
            cursor = end
    expected.append(text[cursor:])
    assert revised == "".join(expected)


def test_edit_rules_and_reasons():
    text = "Yes. No. Yes. Maybe."
    assert apply_segment_edits(text, [("Yes.", "A."), ("Yes.", "B.")]) == "A. No. B. Maybe."
    assert apply_segment_edits(text, [("Maybe.", "C."), ("No.", "")]) == "Yes. Yes. C."  # any order; deletion
    assert apply_segment_edits(text, [("Maybe.", "")]) == "Yes. No. Yes."  # the last one takes the space before it
    assert apply_segment_edits("A  b.\nC.", [("A b.", "X.")]) == "X.\nC."  # whitespace runs collapsed: a fallback
    with pytest.raises(EditError, match=r"edit 1: 'Ye' is not a sentence or line of the response"):
        apply_segment_edits(text, [("Ye", "x")])
    assert apply_segment_edits(text, [("Maybe.", "Maybe.")]) == text  # a replacement equal to its segment: no-op


def test_repeated_edits_of_a_segment_collapse_and_the_last_word_wins():
    text = "Yes. No. Yes. Maybe."
    assert apply_segment_edits(text, [("No.", "x"), ("No.", "x")]) == "Yes. x Yes. Maybe."  # identical: dropped
    assert apply_segment_edits(text, [("No.", "x"), ("No.", "y")]) == "Yes. y Yes. Maybe."  # another: the last wins
    # a text occurring twice: two edits take both occurrences; a third overrides the latest of them
    assert apply_segment_edits(text, [("Yes.", "A."), ("Yes.", "B."), ("Yes.", "C.")]) == "A. No. C. Maybe."
    assert apply_segment_edits(text, [("Yes.", "A."), ("No.", ""), ("Yes.", "B."), ("Yes.", "")]) == "A. Maybe."


def test_with_final_answer_sets_the_answer_statement():
    assert with_final_answer("2+2=4.\nThe answer is 5.", "4", "math") == "2+2=4.\nThe answer is 4."
    assert with_final_answer("so #### 5\n", "4", "math") == "so #### 4\n"
    assert with_final_answer("we get \\boxed{5} here", "4", "math") == "we get \\boxed{4} here"
    assert with_final_answer("2+2=4.\n", "4", "math") == "2+2=4.\nThe answer is 4.\n"
    assert with_final_answer("It is 4.0.\nThe answer is 4.0", "4", "math") == "It is 4.0.\nThe answer is 4.0"  # equal value
    assert extract_answer(with_final_answer("No statement", "bank", "qa")) == "bank"


def _reply(**fields):
    return json.dumps({"verdict": "REVISE", "edits": [], "final_answer": "7", **fields})


def test_parse_applies_the_edits_and_sets_the_final_answer():
    edits = [{"segment": "Step 1: 2+2=5.", "replacement": "Step 1: 2+2=4."}, {"segment": "Next one?", "replacement": ""}]
    parsed = parse_structured_reply(_reply(edits=edits), SOLUTION, requires_verdict=True, answer="7", task="math")
    assert parsed.verdict is Verdict.REVISE
    assert parsed.revised == "Step 1: 2+2=4. So we add 3.\nThen e.g. this stays whole! Yes.\n\nThe answer is 7."
    # only the answer line: the library writes it, the row will count among "only the final answer changed"
    only = parse_structured_reply(_reply(), SOLUTION, requires_verdict=True, answer="7", task="math")
    assert only.revised == SOLUTION.replace("is 8.", "is 7.")
    good = parse_structured_reply(_reply(verdict="GOOD"), SOLUTION, requires_verdict=True, answer="7")
    assert good.verdict is Verdict.GOOD and good.revised is None
    fenced = "Here it is:\n```json\n" + _reply(verdict="revise") + "\n```"
    assert parse_structured_reply(fenced, SOLUTION, requires_verdict=True, answer="7").verdict is Verdict.REVISE
    plain = parse_structured_reply(json.dumps({"edits": [{"segment": "Yes.", "replacement": "Yes!"}]}), SOLUTION,
                                   requires_verdict=False)
    assert plain.verdict is Verdict.REVISE and plain.revised == SOLUTION.replace("Yes.", "Yes!")


@pytest.mark.parametrize("reply,reason", [
    ("", "the reply is empty"),
    ("<verdict>REVISE</verdict>", "not a JSON object"),
    ('{"verdict": "REVISE", "edits": [}', "not valid JSON"),
    (_reply(verdict="MAYBE"), '"verdict" must be "GOOD" or "REVISE"'),
    (json.dumps({"edits": []}), '"verdict" field is missing'),
    (_reply(edits={"segment": "x"}), '"edits" must be a list'),
    (_reply(edits=[{"segment": "Yes."}]), 'edit 1 must be an object with the strings "segment" and "replacement"'),
    (_reply(edits=[{"segment": "Step 1", "replacement": "x"}]), "edit 1: 'Step 1' is not a sentence or line"),
    (_reply(final_answer="8"), "\"final_answer\" must be '7', got '8'"),
    (_reply(final_answer=None), "\"final_answer\" must be '7'"),
])
def test_unusable_structured_replies_say_why(reply, reason):
    with pytest.raises(ReplyFormatError, match=reason.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_structured_reply(reply, SOLUTION, requires_verdict=True, answer="7", task="math")


@settings(max_examples=200, deadline=None)
@given(TEXT, st.data())
def test_a_reply_the_schema_allows_parses_to_the_edits_it_names(text, data):
    schema = reply_schema(text, requires_verdict=False) if segment(text) else None
    if schema is None:
        return
    names = schema["properties"]["edits"]["items"]["properties"]["segment"]["enum"]
    edits = data.draw(st.lists(st.tuples(st.sampled_from(names), st.text(max_size=8)), max_size=3, unique_by=lambda e: e[0]))
    reply = {"edits": [{"segment": s, "replacement": r} for s, r in edits]}
    assert conformance_problems(reply, schema) == []
    parsed = parse_structured_reply(json.dumps(reply), text, requires_verdict=False)
    assert parsed.revised == apply_segment_edits(text, edits)


def test_structured_templates_are_versioned_and_selected_by_reply_format():
    from bmc_data.bridging.templates import load_template

    for task, version in (("instruction", "instruction-structured-v2"), ("qa", "qa-math-structured-v2"),
                          ("math", "qa-math-structured-v2")):
        template = load_template(task, reply_format="structured")
        assert template.version == version and template.reply_format == "structured"
        assert template.requires_verdict is (task != "instruction")
        user = template.render(prompt="Q?", chosen="C.", rejected="R.")[-1]["content"]
        assert "Q?" in user and "C." in user and "R." in user and '"edits": [{"segment":' in user
        assert '"segment"' in template.render_repair("the reply is not a JSON object")
