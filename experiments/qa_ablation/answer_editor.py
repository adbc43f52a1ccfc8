"""`AnswerEditProvider`: a deterministic stand-in editor for QA targeted modification, used where no capable LLM
is reachable (the embedded SmolLM2-135M bridges none of these pairs; docs/qa-ablation.md has the measurement).

It answers the bundled QA/math template exactly as an editor LLM would (verdict + revised solution), so the pairs
go through `bridge_dataset` unchanged: reply parsing, the ground-truth check, the call cache and the provenance
columns. Its edit is the smallest one that passes the ground-truth check: the student's final answer is replaced
by the reference's (text after the last "The answer is"; a final line is appended when there is none). It never
repairs the reasoning, so it is the minimal-edit limit of the paper's Bridging Phase, not a substitute for
GPT-4: ỹ_w differs from y_l only in its final answer.
"""

from __future__ import annotations

import re

from bmc_data.pairs.answers import answers_match, extract_answer
from bmc_data.providers.base import ChatRequest, ChatResponse, Provider, ProviderError

_SECTION = r"### {title}\n(.*?)(?=\n### |\Z)"
_ANSWER_IS = re.compile(r"the (?:final )?answer is[: \t]*", flags=re.I)


def _section(text: str, title: str) -> str:
    match = re.search(_SECTION.format(title=re.escape(title)), text, flags=re.S)
    if match is None:
        raise ProviderError(f"answer-edit: the prompt has no '### {title}' section; it follows the bundled "
                            "QA/math template (prompts/targeted_modification_qa_math.v1.yaml) only")
    return match.group(1).strip()


def minimal_answer_edit(student: str, gold_answer: str) -> str:
    """`student` with its final answer (the rest of the line after the last "The answer is", which is what
    `extract_answer` reads) replaced by `gold_answer`; appended as a last line when it states none."""
    last = None
    for last in _ANSWER_IS.finditer(student):
        pass
    if last is None:
        return f"{student.rstrip()}\nThe answer is {gold_answer}"
    line_end = student.find("\n", last.end())
    rest = "" if line_end < 0 else student[line_end:]
    return f"{student[:last.end()]}{gold_answer}{rest}"


class AnswerEditProvider(Provider):
    """Replies GOOD when the student's final answer matches the reference's, else REVISE with the minimal edit."""

    name = "answer-edit"

    def __init__(self) -> None:
        super().__init__("minimal-answer-edit-v1")

    async def complete(self, request: ChatRequest) -> ChatResponse:
        text = request.messages[-1]["content"]
        reference = _section(text, "Reference solution (correct)")
        student = _section(text, "Student solution")
        gold = extract_answer(reference)
        if gold is None:
            raise ProviderError("answer-edit: the reference solution states no final answer")
        if answers_match(extract_answer(student), gold):
            reply = "<verdict>GOOD</verdict>\n<revised>\n</revised>"
        else:
            reply = f"<verdict>REVISE</verdict>\n<revised>\n{minimal_answer_edit(student, gold)}\n</revised>"
        response = ChatResponse(text=reply, finish_reason="stop", model=self.model)
        self.record(response)
        return response
