"""Final-answer extraction and comparison for QA and math (the ground-truth check of the Bridging Phase).

Recognised forms, last occurrence wins: `\\boxed{X}`, `#### X` (GSM8K) and `The answer is X` (the QA data and
our prompts). Math answers compare numerically; QA answers compare after normalisation.
"""

from __future__ import annotations

import math
import re
import string

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


def extract_answer(text: str) -> str | None:
    """The final answer stated in `text`, or None when it states none."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    for pattern in (_HASHES, _ANSWER_IS):
        last = None
        for last in pattern.finditer(text):
            pass
        if last is not None:
            rest = text[last.end():].strip()
            answer = rest.splitlines()[0].strip() if rest else ""
            return answer.rstrip(".").strip().strip("*").strip() or None
    return None


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
