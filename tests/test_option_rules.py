"""The count and task rules every entry point shares (load_pairs, bridge_dataset, make_pairs, the CLIs' argparse
types): the same values pass and fail everywhere, with one line naming the option and the value given."""

from __future__ import annotations

import argparse

import pytest

from bmc_data import bridge_dataset, load_pairs, make_pairs
from bmc_data.cli.args import positive_int
from bmc_data.errors import UsageError
from bmc_data.providers import get_provider

ROWS = [{"prompt": "p", "chosen": "c", "rejected": "r"}]
PROBLEMS = [{"problem": "1+1?", "solution": "The answer is 2", "answer": "2"}]
NOT_COUNTS = [0, -1, True, 1.5, "3"]  # a bool is no count, nor is a float or a string


def _unreachable():  # every check runs before the first call: nothing may reach this port
    return get_provider("openai", "editor", api_key="sk-test", base_url="http://127.0.0.1:9/v1")


ENTRY_POINTS = {
    "load_pairs": lambda **kw: load_pairs(ROWS, **kw),
    "bridge_dataset": lambda **kw: bridge_dataset(ROWS, **{"task": "instruction", **kw}, provider=_unreachable(),
                                                  cache_dir=False, progress=False),
    "make_pairs": lambda **kw: make_pairs(PROBLEMS, model=_unreachable(), cache_dir=False, progress=False, **kw),
}
COUNTS = {"load_pairs": ["limit"], "bridge_dataset": ["limit", "concurrency", "max_tokens", "max_input_tokens"],
          "make_pairs": ["limit", "concurrency", "max_tokens"]}


@pytest.mark.parametrize("entry,option", [(e, o) for e, options in COUNTS.items() for o in options])
@pytest.mark.parametrize("value", NOT_COUNTS)
def test_a_count_is_a_whole_number_of_at_least_one(entry, option, value):
    with pytest.raises(UsageError, match=rf"^{option} must be a whole number >= 1\b.*, got {value!r}$"):
        ENTRY_POINTS[entry](**{option: value})


def test_none_and_whole_numbers_are_counts():
    assert len(load_pairs(ROWS, limit=None)) == len(load_pairs(ROWS, limit=1)) == 1


@pytest.mark.parametrize("entry", ["load_pairs", "bridge_dataset"])
def test_an_unknown_task_names_the_tasks(entry):
    with pytest.raises(UsageError, match=r"^task must be .*'qa'.*'math'.*'instruction'.*, got 'poem'$"):
        ENTRY_POINTS[entry](task="poem")


def test_make_pairs_takes_only_tasks_with_ground_truth():
    for task in ("poem", "instruction"):
        with pytest.raises(UsageError, match=rf"ground truth; task must be 'qa' or 'math', got '{task}'$"):
            ENTRY_POINTS["make_pairs"](task=task)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "x", ""])
def test_the_command_line_count_type(text):
    with pytest.raises(argparse.ArgumentTypeError, match=rf"^expected a positive integer, got {text!r}$"):
        positive_int(text)
    assert positive_int("3") == 3
