"""bmc_data — the Bridging Phase of BMC: typed preference pairs, targeted modification with any LLM,
token diff masks, edit-distance statistics and Hub publishing.

    from bmc_data import bridge_dataset
    bridged = bridge_dataset("pairs.jsonl", task="qa", provider=OpenAIProvider("gpt-4o"))
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Lazy attributes keep `import bmc_data` fast (no torch/transformers until used).
_EXPORTS = {
    "bridge_dataset": "bridging.bridge", "BridgeSummary": "bridging.bridge",
    "apply_review": "pairs.review", "review_fingerprint": "pairs.review", "ReviewMismatch": "pairs.review",
    "load_pairs": "pairs.loading", "LoadedPairs": "pairs.loading", "InvalidRowError": "pairs.loading",
    "make_pairs": "bridging.sampling",
    "PreferencePair": "pairs.schema", "Status": "pairs.schema", "Task": "pairs.schema",
    "load_template": "bridging.templates", "Template": "bridging.templates",
    "token_diff_masks": "tokens.diff",
    "add_diff_masks": "tokens.masks", "masks_fit": "tokens.masks",
    "add_edit_distance_stats": "tokens.stats", "summarize_edit_distances": "tokens.stats", "plot_edit_distances": "tokens.stats",
    "load_bridged": "hub.load", "save_bridged": "hub.save", "push_bridged": "hub.push",
    "get_provider": "providers",
    "BMCError": "errors", "UsageError": "errors", "InputError": "errors", "CredentialError": "errors",
    "SystemicFailure": "errors", "AllRowsFailed": "errors",
    "add_dcrm": "selection.pair_quality", "best_of_n2_pairs": "selection.pair_quality", "SequenceClassifierReward": "selection.pair_quality",
    "add_implicit_reward_margins": "selection.margins", "add_alignment_potential": "selection.margins",
    "add_dual_margin": "selection.margins", "select_top": "selection.margins",
    "render_report": "report.page",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bmc_data' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .bridging.bridge import BridgeSummary, bridge_dataset
    from .bridging.sampling import make_pairs
    from .bridging.templates import Template, load_template
    from .errors import (
        AllRowsFailed,
        BMCError,
        CredentialError,
        InputError,
        SystemicFailure,
        UsageError,
    )
    from .hub.load import load_bridged
    from .hub.push import push_bridged
    from .hub.save import save_bridged
    from .pairs.loading import InvalidRowError, LoadedPairs, load_pairs
    from .pairs.review import ReviewMismatch, apply_review, review_fingerprint
    from .pairs.schema import PreferencePair, Status, Task
    from .providers import get_provider
    from .report.page import render_report
    from .selection.margins import (
        add_alignment_potential,
        add_dual_margin,
        add_implicit_reward_margins,
        select_top,
    )
    from .selection.pair_quality import (
        SequenceClassifierReward,
        add_dcrm,
        best_of_n2_pairs,
    )
    from .tokens.diff import token_diff_masks
    from .tokens.masks import add_diff_masks, masks_fit
    from .tokens.stats import (
        add_edit_distance_stats,
        plot_edit_distances,
        summarize_edit_distances,
    )
