"""The structured reply format: a JSON object whose edits are anchored to the sentences and lines of y_l.

For each pair the editor's reply is constrained by a JSON Schema built from that pair (`reply_schema`), which
grammar-constrained decoders (llama.cpp, vLLM, OpenAI structured outputs, Anthropic tool input) enforce while
the model writes:

    {"verdict": "REVISE",                                   (QA/math templates only: "GOOD" or "REVISE")
     "edits": [{"segment": "<one sentence or line of y_l, copied exactly>", "replacement": "<its new text>"}],
     "final_answer": "<the reference answer>"}              (QA/math with a known answer only)

* `segment` is an `enum` of the texts of y_l's segments (`segment`), so an edit can only replace text that
  exists in y_l; ỹ_w is y_l with the named segments replaced and every other byte kept: minimal by construction.
* `final_answer` is an `enum` of one value, the reference answer (which the editor already sees in y_w). After
  the edits, ỹ_w's final-answer statement is made to say it (`with_final_answer`).

Segmentation (stable, documented; `segment`): y_l is split into lines at "\\n"; a line is split further after
`.`, `!` or `?` (and any closing quotes or brackets) followed by spaces and a character that is not a lowercase
letter ("e.g. this" stays whole). A segment is the text between those boundaries without its surrounding
whitespace; blank lines make no segment; the whitespace between segments always stays as it is.

Rules of `apply_segment_edits`: edits may come in any order; an edit names a segment by its exact text (or, as
a fallback, the same text with whitespace runs collapsed); when several segments have that text, the k-th edit
naming it takes the k-th of them in y_l's order. An empty replacement deletes the segment and the whitespace
after it (before it, for the last segment). Duplicates: an edit naming a segment whose every occurrence is
already edited is a repeat, not a new edit (small models often write the same edit twice): an identical repeat
is dropped; a repeat with another replacement overrides the latest edit of that text (the last word wins, as
when a person corrects themselves). A replacement equal to its segment is a no-op and changes nothing. The
schema cannot forbid either (JSON Schema has no "unique by key" or "not equal to" that every backend accepts),
so they are resolved here. The reason an edit is refused (`EditError`, shown to the model in the repair turn,
then the row's reason):

* "edit K: 'TEXT' is not a sentence or line of the response"

Schema features, chosen so that every backend accepts them: `type` (object, array, string), `properties`,
`required` listing every property, `additionalProperties: false`, `items` and `enum`. Nothing else: no
`const`, `minItems`, `maxLength`, `pattern`, `anyOf`, `$ref` or `default`. What was checked:
* OpenAI structured outputs, `strict: true`: every property required, `additionalProperties: false`, `enum`
  supported (the loopback server of the test suite refuses anything outside this subset, as the API does);
* vLLM (xgrammar, guidance; `response_format`, `guided_json` before 0.12, `structured_outputs` from 0.10.2):
  JSON Schema with `enum`, objects and arrays;
* llama.cpp's `examples/json_schema_to_grammar.py` (which llama-cpp-python's `LlamaGrammar.from_json_schema`
  mirrors): `enum` becomes an alternation of JSON literals, an object's required properties are written in
  `properties` order (so the verdict comes first, the final answer last), arrays follow `items`;
* Anthropic tool use: `input_schema` is a JSON Schema with an object at its root.
OpenAI caps a schema at 1,000 enum values and 120,000 characters of enum text: a y_l with more segments
than that is refused by the API (the row fails with its error).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bmc_data.pairs.answers import answers_match, check_answer, final_answer_span
from bmc_data.pairs.schema import Task

from .edits import EditError, quoted
from .parsing import ParsedReply, ReplyFormatError, Verdict, strip_fences

#: the `name` of the schema (OpenAI `json_schema.name`, the Anthropic tool name): [a-zA-Z0-9_-]{1,64}
SCHEMA_NAME = "bmc_edit_reply"
VERDICTS = ("GOOD", "REVISE")

# a sentence ends at . ! ? (with closing quotes/brackets), before spaces and a character that is not lowercase
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*([ \t]+)(?=[^\sa-z])")


@dataclass(frozen=True)
class Segment:
    """One sentence or line of a response: `text == response[start:end]`, without surrounding whitespace."""

    start: int
    end: int
    text: str


def segment(text: str) -> list[Segment]:
    """The segments of `text`, in order (see the module docstring for the rule)."""
    segments: list[Segment] = []

    def add(start: int, end: int) -> None:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            segments.append(Segment(start, end, text[start:end]))

    for line in re.finditer(r"[^\n]+", text):
        start = line.start()
        for boundary in _BOUNDARY.finditer(text, line.start(), line.end()):
            add(start, boundary.start(1))
            start = boundary.end(1)
        add(start, line.end())
    return segments


def reply_schema(rejected: str, *, requires_verdict: bool, answer: str | None = None,
                 task: Task | str = Task.QA) -> dict[str, Any]:
    """The JSON Schema of the editor's reply for a pair whose rejected response is `rejected`.

    Args:
        rejected: y_l; its segments are the only texts an edit may name.
        requires_verdict: QA/math templates: a `verdict` ("GOOD" or "REVISE") comes first. When y_l does not
            state `answer`, only "REVISE" is offered: the bridge refuses "GOOD" for a wrong y_l anyway (the row
            would fail), and small models answered "GOOD" on all 20 wrong GSM8K y_l of a held-out run.
        answer: the reference final answer: `final_answer` must be exactly it (None: no such field).
        task: how answers compare ("math": by value).

    Raises ValueError when `rejected` has no text to anchor an edit to.
    """
    texts = list(dict.fromkeys(s.text for s in segment(rejected)))
    if not texts:
        raise ValueError("the rejected response has no text an edit could name")
    edit = {
        "type": "object",
        "properties": {"segment": {"type": "string", "enum": texts}, "replacement": {"type": "string"}},
        "required": ["segment", "replacement"],
        "additionalProperties": False,
    }
    properties: dict[str, Any] = {}
    if requires_verdict:
        wrong = answer is not None and not check_answer(rejected, answer, task)[0]
        properties["verdict"] = {"type": "string", "enum": ["REVISE"] if wrong else list(VERDICTS)}
    properties["edits"] = {"type": "array", "items": edit}
    if answer is not None:
        properties["final_answer"] = {"type": "string", "enum": [answer]}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _collapsed(text: str) -> str:
    return " ".join(text.split())


def apply_segment_edits(rejected: str, edits: list[tuple[str, str]]) -> str:
    """`rejected` with each (segment text, replacement) applied (rules in the module docstring)."""
    segments = segment(rejected)
    exact: dict[str, list[int]] = {}
    loose: dict[str, list[int]] = {}
    for index, seg in enumerate(segments):
        exact.setdefault(seg.text, []).append(index)
        loose.setdefault(_collapsed(seg.text), []).append(index)
    chosen: dict[int, str] = {}
    order: dict[int, int] = {}  # segment index -> number of the edit that set it last
    for number, (text, replacement) in enumerate(edits, 1):
        indices = exact.get(text) or loose.get(_collapsed(text))
        if not indices:
            raise EditError(f"edit {number}: {quoted(text)} is not a sentence or line of the response")
        free = [i for i in indices if i not in chosen]
        # a repeat (every occurrence already edited) overrides the latest edit of that text; identical: no change
        target = free[0] if free else max(indices, key=order.__getitem__)
        chosen[target], order[target] = replacement, number
    out: list[str] = []
    cursor = 0
    for index in sorted(chosen):
        seg, replacement = segments[index], chosen[index]
        start, end = seg.start, seg.end
        if not replacement:  # a deletion takes the whitespace that separated the segment from its neighbour
            if index + 1 < len(segments):
                end = segments[index + 1].start
            elif index > 0:
                start = max(cursor, segments[index - 1].end)
        out.append(rejected[cursor:start])
        out.append(replacement)
        cursor = end
    out.append(rejected[cursor:])
    return "".join(out)


def with_final_answer(text: str, answer: str, task: Task | str) -> str:
    """`text` stating `answer` as its final answer: unchanged when it already does; else its final-answer
    statement (`The answer is X`, `#### X`, `\\boxed{X}`) says `answer`; else "The answer is <answer>." is added
    on a line of its own."""
    if check_answer(text, answer, task)[0]:
        return text
    span = final_answer_span(text)
    if span is not None:
        return text[: span[0]] + answer + text[span[1]:]
    body = text.rstrip()
    line = f"The answer is {answer}."
    return (f"{body}\n{line}" if body else line) + text[len(body):]


def _reply_object(text: str) -> dict[str, Any]:
    body = strip_fences(text or "")
    if not body:
        raise ReplyFormatError("the reply is empty")
    start, end = body.find("{"), body.rfind("}")
    if start == -1 or end < start:
        raise ReplyFormatError("the reply is not a JSON object")
    try:
        obj = json.loads(body[start:end + 1])
    except json.JSONDecodeError as error:
        raise ReplyFormatError(f"the reply is not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(obj, dict):
        raise ReplyFormatError("the reply is not a JSON object")
    return obj


def _edits(obj: dict[str, Any]) -> list[tuple[str, str]]:
    raw = obj.get("edits")
    if not isinstance(raw, list):
        raise ReplyFormatError('"edits" must be a list of {"segment": ..., "replacement": ...} objects')
    edits = []
    for number, item in enumerate(raw, 1):
        if not isinstance(item, dict) or not isinstance(item.get("segment"), str) \
                or not isinstance(item.get("replacement"), str):
            raise ReplyFormatError(f'edit {number} must be an object with the strings "segment" and "replacement"')
        edits.append((item["segment"], item["replacement"]))
    return edits


def parse_structured_reply(text: str, rejected: str, *, requires_verdict: bool, answer: str | None = None,
                           task: Task | str = Task.QA) -> ParsedReply:
    """Check a structured reply against its pair and apply it: `ParsedReply.revised` is ỹ_w.

    Args:
        text: the reply (a JSON object; code fences or text around it are tolerated).
        rejected: y_l, which the edits name segments of.
        requires_verdict: the reply must carry a verdict (QA/math templates).
        answer: the reference final answer the schema constrained `final_answer` to (None: none was).
        task: how answers compare ("math": by value).

    Raises `ReplyFormatError` (`EditError` for an edit that names no segment) with a reason for the repair turn.
    """
    obj = _reply_object(text)
    verdict = None
    if "verdict" in obj:
        raw = obj["verdict"]
        if not isinstance(raw, str) or raw.strip().upper() not in VERDICTS:
            raise ReplyFormatError(f'"verdict" must be "GOOD" or "REVISE", got {str(raw)[:40]!r}')
        verdict = Verdict.GOOD if raw.strip().upper() == "GOOD" else Verdict.REVISE
    elif requires_verdict:
        raise ReplyFormatError('the "verdict" field is missing')
    if verdict is Verdict.GOOD:
        return ParsedReply(verdict, None)
    revised = apply_segment_edits(rejected, _edits(obj))
    if answer is not None:
        final = obj.get("final_answer")
        if not isinstance(final, str) or not answers_match(final, answer, task):
            raise ReplyFormatError(f'"final_answer" must be {answer!r}, got {str(final)[:40]!r}')
        revised = with_final_answer(revised, answer, task)
    return ParsedReply(verdict or Verdict.REVISE, revised)
