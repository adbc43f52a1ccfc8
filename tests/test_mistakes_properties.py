"""Property: whatever malformed rows or files a user hands over (bad JSON, wrong types, missing fields, odd
encodings, empty and huge fields), `load_pairs`, `bridge_dataset` and bmc_train's dataset check either succeed with
valid pairs or raise the typed `InputError` naming the row and field (or the file and line): never another
exception type."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llm_servers import LLMServer, bridge_reply

from bmc_data import bridge_dataset, load_pairs
from bmc_data.errors import InputError
from bmc_data.pairs.loading import InvalidRowError
from bmc_data.pairs.schema import PreferencePair
from bmc_data.providers.limits import ProviderLimits
from bmc_data.providers.openai_chat import OpenAIProvider
from bmc_train.cli import check_rows

HUGE = "word " * 40_000
texts = st.one_of(st.text(max_size=30), st.just(""), st.just("   \n"), st.just(HUGE), st.just("caf\u00e9 \u2603 \x00"))
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bogus", 3]),
                                 "content": st.one_of(texts, st.integers(), st.none())})
values = st.one_of(texts, st.integers(), st.floats(allow_nan=True), st.none(), st.booleans(),
                   st.lists(message, max_size=3), st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
row = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "question", "answer", "problem", "solution",
                                       "model_output", "id", "score_chosen"]), values, max_size=6)
good_row = st.builds(lambda i: {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"},
                     st.integers(0, 1000))
rows = st.lists(st.one_of(good_row, row), min_size=0, max_size=6)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_outcome(call, n_rows: int) -> object:
    try:
        result = call()
    except InvalidRowError as error:
        assert 0 <= error.index < max(n_rows, 1) and error.field
        assert f"row {error.index}: field {error.field!r}" in str(error)
        return error
    except InputError as error:  # file-level (JSON syntax, encoding, empty) or no detectable layout
        assert str(error).strip()
        return error
    return result


@SETTINGS
@given(rows)
def test_load_pairs_on_malformed_rows(data):
    result = _check_outcome(lambda: load_pairs(data), len(data))
    if not isinstance(result, Exception):
        assert all(isinstance(p, PreferencePair) for p in result)
        assert len(result) <= len(data)


@SETTINGS
@given(rows)
def test_load_pairs_skip_mode_never_raises_row_errors(data):
    result = _check_outcome(lambda: load_pairs(data, on_invalid="skip"), len(data))
    if not isinstance(result, Exception):
        assert len(result) + len(result.skipped) == len(data)
        assert sorted(result.source_indices + [s.index for s in result.skipped]) == list(range(len(data)))
    else:
        assert not isinstance(result, InvalidRowError)  # with "skip" only a file-level problem can raise


lines = st.one_of(
    rows.map(lambda rs: [json.dumps(r) for r in rs]),
    st.lists(st.one_of(st.text(max_size=40), st.just("{"), st.just("[1, 2]"), st.just('"just a string"'),
                       st.just(""), st.just('{"prompt": "p", "chosen": "c", "rejected": "r"}')), max_size=5),
)
encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"])


@SETTINGS
@given(lines, encodings, st.sampled_from([".jsonl", ".json"]))
def test_load_pairs_on_malformed_files(content, encoding, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes("\n".join(content).encode(encoding, "replace"))
        result = _check_outcome(lambda: load_pairs(path), len(content) + 1)
    if isinstance(result, InputError) and not isinstance(result, InvalidRowError):
        assert "data" in str(result) or "layout" in str(result)


@SETTINGS
@given(rows)
def test_bmc_train_dataset_check_on_malformed_rows(data):
    _check_outcome(lambda: check_rows(data, "the train split"), len(data))


@pytest.fixture(scope="module")
def editor():
    with LLMServer(reply=bridge_reply) as server:
        yield OpenAIProvider("editor", base_url=server.openai_base_url, api_key="sk-propTEST-0123456789",
                             limits=ProviderLimits(max_concurrency=4, timeout_s=5.0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(rows)
def test_bridge_on_malformed_rows(editor, data):
    result = _check_outcome(lambda: bridge_dataset(data, task="instruction", provider=editor, cache_dir=False,
                                                   progress=False), len(data))
    if not isinstance(result, Exception):
        assert set(result["bmc_status"]) <= {"bridged", "filtered", "failed"}
