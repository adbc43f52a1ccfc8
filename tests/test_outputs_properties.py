"""Property: whatever was already in the output folder, bmc removes and changes nothing it did not write.

Hypothesis builds random trees in the output folder (random names, nested folders, files named like bmc's own
outputs, links to files outside the folder) and runs each writer over them twice, with and without overwrite:
`bridge` (rows from `bridge_dataset` against a loopback server, written by the CLI's writer), `publish --no-push`
(`save_bridged` + `render_report`, after the same check the CLI makes) and `report` (`render_report`). Either the
writer refuses (exit 2: `OutputConflict`) and the folder is exactly as it was, or it succeeds and every file that
was there still is, byte for byte, except (with overwrite only) a file at a path bmc then wrote and lists in
bmc_files.json. Files outside the folder that links point to are never changed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llm_servers import LLMServer, bridge_reply
from test_hub import bridged_rows

from bmc_data.__main__ import write_outputs
from bmc_data.errors import UsageError
from bmc_data.hub import save
from bmc_data.outputs import LOCK, MANIFEST, check_free, read_manifest
from bmc_data.report.page import render_report, report_scope

BMC_NAMES = ["README.md", "data", "default", "failed", "figures", "bridged.parquet", "bridged.jsonl", "summary.json",
             "summary.md", "pairs.jsonl", "report.html", "report_files", "index.js", "rows-00000.js",
             "train-00000-of-00001.parquet", "bmc_manifest.json", "bmc_files.json", "word_edit_distance.png"]
NAME = st.one_of(st.sampled_from(BMC_NAMES), st.text("abcxyz_-.0123456789", min_size=1, max_size=8)
                 .filter(lambda n: n not in (".", "..") and n != LOCK))
#: whole paths bmc itself writes, so that every example is likely to put something in its way
BMC_PATHS = [["README.md"], ["report.html"], ["report_files", "index.js"], ["report_files", "notes.txt"],
             ["data", "default", "train-00000-of-00001.parquet"], ["data", "mine.csv"], ["figures", "x.png"],
             ["bridged.parquet"], ["summary.md"], ["bmc_manifest.json"], ["bmc_files.json"], ["pairs.jsonl"]]
PATH = st.one_of(st.sampled_from(BMC_PATHS), st.lists(NAME, min_size=1, max_size=3))
ENTRY = st.tuples(PATH, st.binary(max_size=40), st.booleans())
TREE = st.lists(ENTRY, max_size=8)
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def build(folder: Path, outside: Path, tree) -> None:
    """Write the tree; a `True` flag makes the entry a link to a file outside the folder. Entries that clash with
    an earlier one (a file where a folder is needed) are skipped."""
    for k, (parts, content, link) in enumerate(tree):
        path = folder.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                continue
            if link:
                target = outside / f"precious-{k}"
                target.write_bytes(content)
                path.symlink_to(target)
            else:
                path.write_bytes(content)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue


def state(folder: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every file and link under `folder` (links by target, never followed)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if Path(root, d).is_symlink()]:
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            out[rel] = ("link", os.readlink(path)) if path.is_symlink() else ("file", path.read_bytes())
    return out


def check(folder: Path, outside: Path, tree, write) -> None:
    outside_before = {p.name: p.read_bytes() for p in outside.iterdir()}
    before = state(folder)
    taken: set[str] = set()  # files in the way that an overwriting run replaced: bmc's from then on
    for overwrite in (False, True, False):  # (the last: a rerun over what the overwriting run left)
        current = state(folder)
        try:
            write(folder, overwrite)
        except UsageError:  # the refusal: exit 2, and not one byte changed
            assert state(folder) == current
            continue
        after = state(folder)
        written = set(read_manifest(folder).files) | {MANIFEST}
        for rel, old in before.items():
            if rel in taken:
                continue
            assert rel in after, f"{rel} was removed"
            if after[rel] != old:
                assert overwrite and rel in written, f"{rel} was changed"
                taken.add(rel)
        assert not (folder / LOCK).exists()
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == outside_before


@pytest.fixture(scope="module")
def rows():
    return bridged_rows(12)


@pytest.fixture(scope="module")
def bridged(tmp_path_factory):
    from bmc_data import bridge_dataset
    from bmc_data.providers.openai_chat import OpenAIProvider

    pairs = [{"prompt": f"Question {i}: name a colour.", "chosen": f"Blue, number {i}.", "rejected": f"Maybe {i}."}
             for i in range(3)]
    with LLMServer(reply=bridge_reply) as server:
        provider = OpenAIProvider("editor", base_url=server.openai_base_url, api_key="sk-propertyTEST-0123456789")
        return bridge_dataset(pairs, task="instruction", provider=provider, progress=False, return_summary=True,
                              cache_dir=tmp_path_factory.mktemp("cache"))


def _run(tree, write) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder, outside = Path(tmp) / "out", Path(tmp) / "outside"
        folder.mkdir()
        outside.mkdir()
        build(folder, outside, tree)
        check(folder, outside, tree, write)
        shutil.rmtree(tmp, ignore_errors=True)


@SETTINGS
@given(tree=TREE)
def test_bridge_never_touches_what_it_did_not_write(bridged, tree):
    dataset, summary = bridged
    _run(tree, lambda folder, overwrite: write_outputs(dataset, summary, folder, overwrite=overwrite))


@SETTINGS
@given(tree=TREE)
def test_publish_never_touches_what_it_did_not_write(rows, tree):
    def publish(folder: Path, overwrite: bool) -> None:  # what `python -m bmc_data.publish --no-push` writes
        writer, scope = report_scope(folder / "report.html")
        check_free(folder, {save.WRITER: save.SCOPE, writer: scope}, overwrite=overwrite)
        save.save_bridged(rows, folder, repo_id="org/x", stats=False, report_path="report.html", overwrite=overwrite)
        render_report(rows, folder / "report.html", overwrite=overwrite)

    _run(tree, publish)


@SETTINGS
@given(tree=TREE)
def test_report_never_touches_what_it_did_not_write(rows, tree):
    _run(tree, lambda folder, overwrite: render_report(rows, folder / "report.html", overwrite=overwrite))
