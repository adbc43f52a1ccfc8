"""Per-run accounting: a provider's `Usage` keeps running totals; a run reports only what it added.

    before = provider.usage.as_dict()
    ...  # the run
    this_run = usage_since(before, provider.usage)
"""

from __future__ import annotations

from typing import Any

from .base import Usage

__all__ = ["usage_since"]


def usage_since(before: dict[str, Any], usage: Usage | dict[str, Any]) -> dict[str, Any]:
    """The counts, tokens and cost added to `usage` since the snapshot `before` (`Usage.as_dict()`)."""
    now = usage.as_dict() if isinstance(usage, Usage) else usage
    out: dict[str, Any] = {}
    for key, value in now.items():
        old = before.get(key)
        if isinstance(value, dict):
            old = old or {}
            out[key] = {k: v - old.get(k, 0) for k, v in value.items() if v - old.get(k, 0)}
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value - (old or 0)
        else:
            out[key] = value
    return out
