"""What the editor's reply must be before its row counts: the rules the bridge applies after a reply parses.

Paper §3.1: ỹ_w is y_l with targeted modifications, and for QA/math it reaches the ground-truth answer. So a
pseudo-winning response fails its row when
* it does not reach the known answer, or states another one anywhere (`bmc_data.pairs.answers.check_answer`);
* it is y_l unchanged;
* it loops: a sentence or line (`protocol.segment`) that it states at least `LOOP_REPEATS` times, more often than
  y_l does. A small editor whose replacement repeats itself until its length bound ("He runs 3 times that." ten
  times, a held-out GSM8K row of the embedded editor) makes such rows: they are not modifications of y_l a
  person would write, and counting them as bridged would overstate what the editor did. Repeats y_l already has
  (a refrain, a list) are y_l's own and never fail a row.
A "GOOD" verdict (QA/math: y_l is already good enough) filters the row, unless y_l misses the known answer.
"""

from __future__ import annotations

from collections import Counter

from bmc_data.pairs.answers import check_answer
from bmc_data.pairs.schema import Task

from .edits import quoted
from .protocol import segment

LOOP_REPEATS = 3


def looping_segment(revised: str, rejected: str) -> tuple[str, int] | None:
    """(text, count) of the segment `revised` repeats most, when it states it `LOOP_REPEATS`+ times and more often
    than `rejected` does; else None. Segments compare with whitespace runs collapsed."""
    def counts(text: str) -> Counter[str]:
        return Counter(" ".join(s.text.split()) for s in segment(text))

    before, after = counts(rejected), counts(revised)
    loops = [(text, n) for text, n in after.items() if n >= LOOP_REPEATS and n > before[text]]
    return max(loops, key=lambda item: item[1]) if loops else None


def revision_problem(revised: str, rejected: str, *, gold: str | None, task: Task | str) -> str | None:
    """Why the pseudo-winning response `revised` cannot be used (the row's reason), or None when it can.
    `gold`: the known answer to reach (None: no answer check)."""
    if gold is not None:
        ok, why = check_answer(revised, gold, task)
        if not ok:
            return f"pseudo-winning response {why}"
    if revised.strip() == rejected.strip():
        return "pseudo-winning response is identical to the rejected response"
    loop = looping_segment(revised, rejected)
    if loop is not None:
        text, count = loop
        return f"pseudo-winning response repeats {quoted(text)} {count} times (a looping edit; y_l has it fewer times)"
    return None


def good_verdict_problem(rejected: str, *, gold: str | None, task: Task | str) -> str | None:
    """Why a "GOOD" verdict (y_l is already good enough) cannot stand, or None when the row is filtered."""
    if gold is not None:
        ok, why = check_answer(rejected, gold, task)
        if not ok:
            return f"editor judged the rejected response good enough, but it {why}"
    return None
