"""The rules for the options every stage takes (load_pairs, bridge_dataset, make_pairs, the CLIs): a count is a
whole number >= 1, a task is one of `Task`. One copy each, here at the bottom, so every caller says the same."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bmc_data.errors import UsageError

from .schema import Task

#: Default budget for one editor prompt, in estimated tokens (≈4 characters each): with the reply's max_tokens it
#: fits a 32k context window, the smallest common one among the models strong enough to edit (most have 128k+).
DEFAULT_MAX_INPUT_TOKENS = 30_000


def is_count(value: Any) -> bool:
    """A whole number >= 1 (a bool is no count, nor is a float or a string)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_count(name: str, value: Any, *, none_means: str | None = None) -> None:
    """`value` is a count or None; else a UsageError naming the option (`none_means`: what None does, e.g.
    "every row", said in the message)."""
    if value is not None and not is_count(value):
        hint = f" (or None for {none_means})" if none_means else ""
        raise UsageError(f"{name} must be a whole number >= 1{hint}, got {value!r}")


def parse_task(value: Any, *, allowed: Iterable[Task] = tuple(Task), why: str = "") -> Task:
    """`value` (a `Task` or its name) as a Task; else a UsageError listing the tasks allowed (`why`: a reason
    put before it, for a caller that takes only some)."""
    allowed = tuple(allowed)
    try:
        task = Task(value)
    except ValueError:
        task = None
    if task not in allowed:
        names = [repr(t.value) for t in allowed]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise UsageError(f"{why}task must be {listed}, got {value!r}")
    return task
