"""Final-answer extraction and comparison for QA and math (the ground-truth check of the Bridging Phase).

Recognised forms, last occurrence wins: `\\boxed{X}`, `#### X` (GSM8K) and `The answer is X` (the QA data and
our prompts). Math answers compare numerically; QA answers compare after normalisation.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable

from .schema import Task

_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*", flags=re.I)
_HASHES = re.compile(r"####\s*")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...}, with nested braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def final_answer_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the final answer stated in `text` (what `extract_answer` returns), or None."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed is not None:
        begin = text.rfind("\\boxed{") + len("\\boxed{")
        return _strip_span(text, begin, begin + len(boxed), str.isspace)
    for pattern in (_HASHES, _ANSWER_IS):
        last = None
        for last in pattern.finditer(text):
            pass
        if last is not None:
            begin, _ = _strip_span(text, last.end(), len(text), str.isspace)
            line_break = _LINE_BREAK.search(text, begin)
            span = (begin, line_break.start() if line_break else len(text))
            # the line without surrounding space, a trailing period and `*` emphasis
            span = _strip_span(text, *span, str.isspace)
            span = _strip_span(text, *span, ".".__eq__, left=False)
            span = _strip_span(text, *span, str.isspace)
            span = _strip_span(text, *span, "*".__eq__)
            span = _strip_span(text, *span, str.isspace)
            return span if span[1] > span[0] else None
    return None


_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")  # where str.splitlines splits


def _strip_span(text: str, begin: int, end: int, strip: Callable[[str], bool], *, left: bool = True
                ) -> tuple[int, int]:
    while end > begin and strip(text[end - 1]):
        end -= 1
    while left and begin < end and strip(text[begin]):
        begin += 1
    return begin, end


def extract_answer(text: str) -> str | None:
    """The final answer stated in `text`, or None when it states none.

    Recognised forms, last occurrence wins: `\\boxed{X}`, else `#### X`, else `The answer is X` (its line, without
    a trailing period or `*` emphasis)."""
    span = final_answer_span(text)
    return text[span[0]:span[1]] if span is not None else None


def normalize_answer(answer: str) -> str:
    answer = answer.lower().strip()
    answer = re.sub(r"\\text\{([^}]*)\}", r"\1", answer)
    answer = answer.strip(string.punctuation + " ")
    answer = re.sub(r"\b(a|an|the)\b", " ", answer)
    answer = answer.translate(str.maketrans("", "", string.punctuation.replace("-", "").replace(".", "")))
    return " ".join(answer.split())


def _as_number(answer: str) -> float | None:
    numbers = _NUMBER.findall(answer.replace("$", ""))
    if len(numbers) != 1:
        return None
    try:
        return float(numbers[0].replace(",", ""))
    except ValueError:
        return None


def answers_match(predicted: str | None, gold: str, task: Task | str = Task.QA) -> bool:
    if predicted is None:
        return False
    if Task(task) is Task.MATH:
        a, b = _as_number(predicted), _as_number(gold)
        if a is not None and b is not None:
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return normalize_answer(predicted) == normalize_answer(gold)


def check_answer(response: str, gold: str, task: Task | str) -> tuple[bool, str]:
    """(ok, reason): does `response` reach the known answer `gold`?"""
    predicted = extract_answer(response)
    if predicted is None:
        return False, "states no final answer (expected 'The answer is X', '#### X' or \\boxed{X})"
    if not answers_match(predicted, gold, task):
        return False, f"final answer {predicted!r} does not match the ground truth {gold!r}"
    return True, ""
