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
    "bridge_dataset": "bridge", "BridgeSummary": "bridge",
    "load_pairs": "loading", "LoadedPairs": "loading", "InvalidRowError": "loading",
    "make_pairs": "pairs",
    "PreferencePair": "schema", "Status": "schema", "Task": "schema",
    "load_template": "templates", "Template": "templates",
    "token_diff_masks": "diff",
    "add_diff_masks": "masks", "masks_fit": "masks",
    "add_edit_distance_stats": "stats", "summarize_edit_distances": "stats", "plot_edit_distances": "stats",
    "load_bridged": "hub", "save_bridged": "hub", "push_bridged": "hub",
    "get_provider": "providers",
    "BMCError": "errors", "UsageError": "errors", "InputError": "errors", "CredentialError": "errors",
    "SystemicFailure": "errors", "AllRowsFailed": "errors",
    "add_dcrm": "pair_quality", "best_of_n2_pairs": "pair_quality", "SequenceClassifierReward": "pair_quality",
    "add_implicit_reward_margins": "selection", "add_alignment_potential": "selection",
    "add_dual_margin": "selection", "select_top": "selection",
    "render_report": "report",
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
    from .bridge import BridgeSummary, bridge_dataset
    from .diff import token_diff_masks
    from .errors import AllRowsFailed, BMCError, CredentialError, InputError, SystemicFailure, UsageError
    from .hub import load_bridged, push_bridged, save_bridged
    from .loading import InvalidRowError, LoadedPairs, load_pairs
    from .masks import add_diff_masks, masks_fit
    from .pair_quality import SequenceClassifierReward, add_dcrm, best_of_n2_pairs
    from .pairs import make_pairs
    from .providers import get_provider
    from .report import render_report
    from .schema import PreferencePair, Status, Task
    from .selection import add_alignment_potential, add_dual_margin, add_implicit_reward_margins, select_top
    from .stats import add_edit_distance_stats, plot_edit_distances, summarize_edit_distances
    from .templates import Template, load_template
