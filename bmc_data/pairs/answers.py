"""Final-answer extraction and comparison for QA and math (the ground-truth check of the Bridging Phase).

Recognised forms, last occurrence wins: `\\boxed{X}`, `#### X` (GSM8K) and `The answer is X` (the QA data and
our prompts). Math answers compare by value with Hugging Face's `math-verify` (SymPy underneath): `1/2`,
`\\frac{1}{2}`, `\\dfrac12` and `0.5` are one answer, so are `1e3` and `1000`, `50\\%` and `0.5`; units and
currency signs are dropped. QA answers compare as text after normalisation. `answers_match` is the one
comparison every stage uses.
"""

from __future__ import annotations

import logging
import re
import string
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .schema import Task

if TYPE_CHECKING:
    from .schema import PreferencePair

_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*", flags=re.I)
_HASHES = re.compile(r"####\s*")
#: 1e3, 1.5E-3: LaTeX parsers read these as 1·e³; rewritten as 1\times10^{3}
_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
#: a number followed by words only: "72 dollars", "5 cm" (the words are units)
_TRAILING_WORDS = re.compile(r"(.*?[\d}])\s*((?:[A-Za-z]+\.?\s*)+)")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
#: longer answers are compared as text: a final answer is short, and SymPy can take unbounded time on big input
_MAX_MATH_CHARS = 200


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the contents of every \\boxed{...}, with nested braces balanced."""
    spans, start = [], text.find("\\boxed{")
    while start >= 0:
        depth, i = 0, start + len("\\boxed{") - 1
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    spans.append((i + 1, j))
                    break
        start = text.find("\\boxed{", start + 1)
    return spans


def final_answer_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the final answer stated in `text` (what `extract_answer` returns), or None."""
    if not text:
        return None
    boxed = _boxed_spans(text)
    if boxed:
        return _strip_span(text, *boxed[-1], str.isspace)
    for pattern in (_HASHES, _ANSWER_IS):
        matches = list(pattern.finditer(text))
        if matches:
            return _statement_span(text, matches[-1].end(), len(text))
    return None


def _statement_span(text: str, begin: int, limit: int) -> tuple[int, int] | None:
    """The answer a statement starting at `begin` gives: up to `limit` or its line's end, without surrounding
    space, a trailing period and `*` emphasis."""
    begin, _ = _strip_span(text, begin, limit, str.isspace)
    line_break = _LINE_BREAK.search(text, begin, limit)
    span = (begin, line_break.start() if line_break else limit)
    span = _strip_span(text, *span, str.isspace)
    span = _strip_span(text, *span, ".".__eq__, left=False)
    span = _strip_span(text, *span, str.isspace)
    span = _strip_span(text, *span, "*".__eq__)
    span = _strip_span(text, *span, str.isspace)
    return span if span[1] > span[0] else None


def stated_answers(text: str) -> list[str]:
    """Every final answer `text` states, in order of appearance: each \\boxed{X}, each `#### X` and each `The answer
    is X` (up to the next such statement or the end of its line). A statement that only wraps a \\boxed{X} counts
    once, as the box."""
    spans = [_strip_span(text, *span, str.isspace) for span in _boxed_spans(text)]
    statements = sorted((m for pattern in (_HASHES, _ANSWER_IS) for m in pattern.finditer(text)), key=lambda m: m.start())
    for number, match in enumerate(statements):
        limit = statements[number + 1].start() if number + 1 < len(statements) else len(text)
        span = _statement_span(text, match.end(), limit)
        if span is not None and "\\boxed{" not in text[span[0]:span[1]]:
            spans.append(span)
    return [text[a:b] for a, b in sorted(spans) if b > a]


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


def _math_text(answer: str) -> str | None:
    """The answer as a LaTeX expression math-verify can parse, or None when it is words, not mathematics."""
    text = answer.strip().replace("\u2212", "-").strip("$").strip()
    text = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r" \1", text)
    units = _TRAILING_WORDS.fullmatch(text)
    if units and not re.search(r"[A-Za-z]", _LATEX_COMMAND.sub("", units.group(1))):
        text = units.group(1)
    text = _SCIENTIFIC.sub(r"\1\\times10^{\2}", text)
    # words (two letters in a row outside a LaTeX command) are not mathematics: "blue" is not b·l·u·e
    if not text or len(text) > _MAX_MATH_CHARS or re.search(r"[A-Za-z]{2}", _LATEX_COMMAND.sub("", text)):
        return None
    return text


def _math_verify() -> Any:
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" warning, off the main thread
    return math_verify


def _timeout() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere `_MAX_MATH_CHARS` bounds it."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parsed(text: str) -> tuple:
    parsed = _math_verify().parse(f"${text}$", parsing_timeout=_timeout())
    return tuple(parsed)


def _same_value(predicted: str, gold: str) -> bool | None:
    """True/False when both answers parse as mathematics, None when either does not."""
    a, b = _math_text(predicted), _math_text(gold)
    if a is None or b is None:
        return None
    parsed_pred, parsed_gold = _parsed(a), _parsed(b)
    if not parsed_pred or not parsed_gold:
        return None
    return bool(_math_verify().verify(list(parsed_gold), list(parsed_pred), timeout_seconds=_timeout()))


def answers_match(predicted: str | None, gold: str, task: Task | str = Task.QA) -> bool:
    """Does `predicted` state the same final answer as `gold`? Math: by value; QA (and words): as normalised text."""
    if predicted is None:
        return False
    if Task(task) is Task.MATH:
        same = _same_value(predicted, gold)
        if same is not None:
            return same
    return normalize_answer(predicted) == normalize_answer(gold)


def known_answer(pair: PreferencePair) -> str | None:
    """The final answer ỹ_w must reach: the row's `answer`, else the one its chosen response states."""
    return pair.answer if pair.answer else extract_answer(pair.chosen)


def check_answer(response: str, gold: str, task: Task | str) -> tuple[bool, str]:
    """(ok, reason): does `response` reach the known answer `gold`, and state no other final answer anywhere?

    A response whose last statement is right but which also says "#### 1" or "The answer is 176" earlier (an
    editor that fixed one answer line and left another) does not reach the answer: a reader cannot tell which
    one it means."""
    predicted = extract_answer(response)
    if predicted is None:
        return False, "states no final answer (expected 'The answer is X', '#### X' or \\boxed{X})"
    if not answers_match(predicted, gold, task):
        return False, f"final answer {predicted!r} does not match the ground truth {gold!r}"
    conflicting = [answer for answer in stated_answers(response) if not answers_match(answer, gold, task)]
    if conflicting:
        return False, (f"states conflicting final answers: {predicted!r} and {conflicting[0]!r} (only the ground "
                       f"truth {gold!r} may be stated)")
    return True, ""
