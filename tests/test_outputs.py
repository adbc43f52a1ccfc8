"""bmc never deletes or overwrites a file it did not write (bmc_data.outputs): `bridge --out`, `publish --out`, the
review page's `<stem>_files/`, and a push to a Hub repo that already has files. Real CLIs in-process (a subprocess
where two runs must overlap), a loopback LLM server and the loopback Hub (tests/hub_server.py)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from huggingface_hub import DatasetCard, HfApi
from llm_servers import Fault, LLMServer, bridge_reply
from test_hub import REPO, bridged_rows, hub  # noqa: F401  (hub: the Hub stand-in fixture)

from bmc_data.__main__ import main as bridge_main
from bmc_data.hub.load import load_bridged
from bmc_data.hub.push import push_bridged
from bmc_data.hub.save import save_bridged
from bmc_data.outputs import LOCK, MANIFEST, OutputConflict, read_manifest
from bmc_data.publish import main as publish_main
from bmc_data.report.cli import main as report_main

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-outputsTEST-0123456789abcdef"


def _pairs(path: Path, n: int, tag: str = "") -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}{tag}: name a colour.", "chosen": f"Blue, number {i}.",
                                        "rejected": f"Maybe {i}."}) + "\n" for i in range(n)))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tree(folder: Path, files: dict[str, str]) -> dict[str, bytes]:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return snapshot(folder)


def _err_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip() and "%|" not in l]
    assert lines and "Traceback" not in err, err
    return lines[-1]


@pytest.fixture
def llm(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with LLMServer(reply=bridge_reply) as server:
        yield server


def _provider(server: LLMServer) -> list[str]:
    return ["--provider", "openai", "--model", "editor", "--base-url", server.openai_base_url]


# --- publish --out ---------------------------------------------------------------------------------------------


def test_publish_into_a_project_folder_never_touches_the_users_files(tmp_path, llm, capsys, caplog):
    proj = tmp_path / "proj"
    proj.mkdir()
    source = _pairs(proj / "pairs.jsonl", 4)
    before = _tree(proj, {"raw_annotations.csv": "id,label\n1,good\n", "README.md": "# My project\n",
                          "data/notes.txt": "my notes\n"})
    args = ["--no-push", "--source", str(source), *_provider(llm), "--out", str(proj), "--quiet", "--no-stats"]

    assert publish_main(args) == 2
    line = _err_line(capsys.readouterr().err)
    assert "2 file(s) in the way" in line and "README.md" in line and "data/notes.txt" in line, line
    assert "--overwrite" in line
    assert llm.call_count == 0  # refused before any paid call
    assert snapshot(proj) == before  # not one byte changed, no lock or manifest left behind

    # The user moves their README and data/ away: publish writes beside the other files, touching none.
    (proj / "README.md").unlink()
    (proj / "data" / "notes.txt").unlink()
    (proj / "data").rmdir()
    assert publish_main(args) == 0, capsys.readouterr().err
    after = snapshot(proj)
    assert after["pairs.jsonl"] == before["pairs.jsonl"] and after["raw_annotations.csv"] == before["raw_annotations.csv"]
    written = read_manifest(proj).files
    assert "README.md" in written and "report.html" in written and any(p.startswith("data/default/") for p in written)
    assert "pairs.jsonl" not in written and "raw_annotations.csv" not in written and not (proj / LOCK).exists()

    # A rerun replaces bmc's own files, and says so.
    with caplog.at_level(logging.INFO, logger="bmc_data.outputs"):
        assert publish_main(args) == 0
    assert "replacing the" in caplog.text and "README.md" in caplog.text
    assert snapshot(proj)["raw_annotations.csv"] == before["raw_annotations.csv"]

    # A file bmc wrote and the user edited since is theirs: refused, named.
    (proj / "README.md").write_text((proj / "README.md").read_text() + "\nMy own notes.\n")
    edited = snapshot(proj)
    capsys.readouterr()
    assert publish_main(args) == 2
    line = _err_line(capsys.readouterr().err)
    assert "1 file(s) in the way" in line and "README.md" in line
    assert snapshot(proj) == edited

    # --overwrite replaces what is in the way; the unrelated files stay.
    assert publish_main([*args, "--overwrite"]) == 0
    assert "My own notes." not in (proj / "README.md").read_text()
    assert snapshot(proj)["pairs.jsonl"] == before["pairs.jsonl"]


def test_publish_overwrite_never_deletes_a_file_in_bmcs_folders(tmp_path, llm, capsys, caplog):
    out = tmp_path / "out"
    out.mkdir()
    before = _tree(out, {"data/default/train-old.parquet": "not bmc's", "figures/diagram.svg": "<svg/>"})
    args = ["--no-push", "--source", str(_pairs(tmp_path / "p.jsonl", 3)), *_provider(llm), "--out", str(out),
            "--quiet", "--no-stats", "--no-report", "--overwrite"]
    with caplog.at_level(logging.WARNING, logger="bmc_data.outputs"):
        assert publish_main(args) == 0, capsys.readouterr().err
    after = snapshot(out)
    assert {k: after[k] for k in before} == before
    assert "data/default/train-old.parquet" not in read_manifest(out).files
    assert "left 2 file(s) bmc did not write" in caplog.text


# --- the review page's files folder ----------------------------------------------------------------------------


def test_report_keeps_a_files_folder_it_did_not_write(tmp_path, capsys):
    data = bridged_rows(24)
    data.to_parquet(str(tmp_path / "rows.parquet"))
    before = _tree(tmp_path, {"X_files/notes.txt": "mine\n", "X_files/index.js": "// my script\n"})
    args = [str(tmp_path / "rows.parquet"), "--out", str(tmp_path / "X.html"), "--quiet", "--chunk-rows", "10"]

    assert report_main(args) == 2
    line = _err_line(capsys.readouterr().err)
    assert "X_files/index.js" in line and "X_files/notes.txt" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "X.html").exists()

    assert report_main([*args, "--overwrite"]) == 0
    assert (tmp_path / "X_files" / "notes.txt").read_text() == "mine\n"  # left where it is
    assert (tmp_path / "X_files" / "index.js").read_text().startswith("BMC_INDEX(")  # in the way: replaced
    assert sorted(p.name for p in (tmp_path / "X_files").glob("rows-*.js")) == [f"rows-{k:05d}.js" for k in range(3)]

    # Fewer chunks on a rerun: the stale chunk bmc wrote goes, the user's file stays.
    assert report_main([str(tmp_path / "rows.parquet"), "--out", str(tmp_path / "X.html"), "--quiet",
                        "--chunk-rows", "20", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "X_files").glob("rows-*.js")) == ["rows-00000.js", "rows-00001.js"]
    assert (tmp_path / "X_files" / "notes.txt").read_text() == "mine\n"


# --- bridge --out -------------------------------------------------------------------------------------------------


def _bridge_args(source: Path, out: Path, server: LLMServer, *extra: str) -> list[str]:
    return ["bridge", "--source", str(source), "--task", "instruction", "--out", str(out), "--quiet",
            "--concurrency", "2", *_provider(server), *extra]


def test_bridge_refuses_a_file_in_the_way_before_any_call(tmp_path, llm, capsys):
    out = tmp_path / "out"
    out.mkdir()
    before = _tree(out, {"summary.md": "# my summary\n", "notes.txt": "mine\n"})
    source = _pairs(tmp_path / "p.jsonl", 3)
    assert bridge_main(_bridge_args(source, out, llm)) == 2
    line = _err_line(capsys.readouterr().err)
    assert "summary.md" in line and "notes.txt" not in line and llm.call_count == 0
    assert snapshot(out) == before
    assert bridge_main(_bridge_args(source, out, llm, "--overwrite")) == 0
    assert (out / "summary.md").read_text().startswith("# Bridging summary")
    assert (out / "notes.txt").read_text() == "mine\n"
    assert set(read_manifest(out).files) == {"bridged.parquet", "bridged.jsonl", "summary.json", "summary.md"}


def test_bridge_rerun_replaces_its_own_files_and_removes_its_stale_pairs(tmp_path, capsys, caplog, monkeypatch,
                                                                           shared_data):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "out"

    def reply(messages):  # y_l sampling gets a wrong answer; the editor revises (bridge_reply)
        text = messages[-1]["content"]
        return bridge_reply(messages) if "### Student solution" in text or "Dispreferred" in text else \
            "The answer is cake"

    with LLMServer(reply=reply) as server:
        qa = ["bridge", "--source", str(shared_data / "qa" / "ecqa-train.jsonl"), "--task", "qa", "--make-pairs",
              "--limit", "2", "--quiet", "--out", str(out), *_provider(server)]
        assert bridge_main(qa) == 0, capsys.readouterr().err
        assert "pairs.jsonl" in read_manifest(out).files
        # Bridging the sampled pairs again, into the same folder: they are this run's input, so they stay.
        again = ["bridge", "--source", str(out / "pairs.jsonl"), "--task", "qa", "--quiet", "--out", str(out),
                 *_provider(server)]
        assert bridge_main(again) == 0, capsys.readouterr().err
        assert (out / "pairs.jsonl").exists()
        # Other pairs into the same folder: the earlier run's files are replaced (the log lists them), and its
        # pairs.jsonl, which no longer belongs to these results, is removed.
        with caplog.at_level(logging.INFO, logger="bmc_data.outputs"):
            assert bridge_main(_bridge_args(_pairs(tmp_path / "p.jsonl", 2), out, server)) == 0
        assert "replacing the 5 file(s) an earlier bmc run wrote here" in caplog.text
        assert "removed 1 file(s)" in caplog.text and "pairs.jsonl" in caplog.text
        assert not (out / "pairs.jsonl").exists()
        assert set(read_manifest(out).files) == {"bridged.parquet", "bridged.jsonl", "summary.json", "summary.md"}

        # Sampled pairs the user edited are theirs: a run that would remove them refuses, naming them; with
        # --overwrite they stay (nothing bmc did not write is deleted) and leave the manifest.
        other = tmp_path / "other"
        assert bridge_main([*qa[:-8], "--out", str(other), *_provider(server)]) == 0, capsys.readouterr().err
        with (other / "pairs.jsonl").open("a") as f:
            f.write("\n")
        edited = (other / "pairs.jsonl").read_bytes()
        capsys.readouterr()
        assert bridge_main(_bridge_args(tmp_path / "p.jsonl", other, server)) == 2
        assert "pairs.jsonl" in _err_line(capsys.readouterr().err)
        assert bridge_main(_bridge_args(tmp_path / "p.jsonl", other, server, "--overwrite")) == 0
        assert (other / "pairs.jsonl").read_bytes() == edited and "pairs.jsonl" not in read_manifest(other).files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_names_its_holder_and_a_stale_one_is_taken_over(tmp_path, llm, capsys, caplog):
    out = tmp_path / "out"
    out.mkdir()
    source = _pairs(tmp_path / "p.jsonl", 2)
    holder = {"pid": 1, "host": "other-machine", "command": "python -m bmc_data bridge",
              "started": "2026-01-01T00:00:00+00:00"}
    (out / LOCK).write_text(json.dumps(holder))
    assert bridge_main(_bridge_args(source, out, llm)) == 2
    line = _err_line(capsys.readouterr().err)
    assert "in use by another bmc run (pid 1 on other-machine, started 2026-01-01" in line
    assert "python -m bmc_data bridge" in line and llm.call_count == 0

    (out / LOCK).write_text(json.dumps({**holder, "pid": _dead_pid(), "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING, logger="bmc_data.outputs"):
        assert bridge_main(_bridge_args(source, out, llm)) == 0, capsys.readouterr().err
    assert "took over the lock of a bmc run that is gone" in caplog.text
    assert not (out / LOCK).exists() and (out / "bridged.parquet").exists()


def test_two_bridges_into_one_out_the_second_exits_2_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "out"
    source = _pairs(tmp_path / "p.jsonl", 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OPENAI_", "ANTHROPIC_"))}
    env.update(OPENAI_API_KEY=KEY, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    with LLMServer(reply=bridge_reply, fault_fn=lambda i, body: Fault.delay(4.0)) as slow, \
            LLMServer(reply=bridge_reply) as second:
        first = subprocess.Popen([sys.executable, "-m", "bmc_data", *_bridge_args(source, out, slow)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while not slow.call_count and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert slow.call_count, first.communicate()[1]
        assert bridge_main(_bridge_args(source, out, second)) == 2
        line = _err_line(capsys.readouterr().err)
        assert f"in use by another bmc run (pid {first.pid} on {socket.gethostname()}" in line, line
        assert "bmc_data bridge" in line and second.call_count == 0
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert "processed 2 pairs" in stdout and not (out / LOCK).exists()


# --- push to a repo that already has files ---------------------------------------------------------------------


def _upload(repo: str, files: dict[str, bytes]) -> None:
    from huggingface_hub import CommitOperationAdd

    api = HfApi()
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    api.create_commit(repo, [CommitOperationAdd(path_in_repo=k, path_or_fileobj=v) for k, v in files.items()],
                      repo_type="dataset", commit_message="by hand")


USER_README = b"""---
license: apache-2.0
tags:
- my-tag
---

# My dataset

A hand-written introduction.
"""


def test_push_keeps_what_bmc_did_not_write_and_merges_a_users_readme(hub, tmp_path):
    _upload(REPO, {"README.md": USER_README, "notes.txt": b"mine\n"})
    data = bridged_rows()
    out = save_bridged(data, tmp_path / "out", repo_id=REPO, stats=False, max_shard_size=1024)
    result = push_bridged(out, REPO)
    assert result.readme_merged and "notes.txt" not in result.deleted
    files = hub.files(REPO)
    assert files["notes.txt"] == b"mine\n"
    readme = files["README.md"].decode()
    assert "A hand-written introduction." in readme and readme.count("<!-- bmc:begin -->") == 1
    card = DatasetCard(readme).data
    assert card["license"] == "apache-2.0" and card["tags"] == ["my-tag"]  # the user's keys are kept
    assert [c["config_name"] for c in card["configs"]] == ["default", "filtered", "failed"]  # bmc's are right
    assert len(load_bridged(REPO, cache_dir=tmp_path / "c1")) == data["bmc_status"].count("bridged")
    remote_manifest = json.loads(files[MANIFEST])
    assert "README.md" not in remote_manifest["files"]  # someone else's README: merged again next time
    assert set(remote_manifest["files"]) == {p for p in read_manifest(out).files if p != "README.md"}
    assert not push_bridged(out, REPO).created_commit  # the merge is stable: pushing the same folder is a no-op

    # The user edits the README on the Hub; a push of other rows replaces only the marked section, and the
    # shards bmc pushed before (and only those) are deleted.
    _upload(REPO, {"README.md": files["README.md"] + b"\nA line added on the Hub.\n"})
    one = save_bridged(data.select(range(20)), tmp_path / "one", repo_id=REPO, stats=False)
    result = push_bridged(one, REPO)
    files = hub.files(REPO)
    readme = files["README.md"].decode()
    assert "A hand-written introduction." in readme and "A line added on the Hub." in readme
    assert readme.count("<!-- bmc:begin -->") == 1 and readme.count("<!-- bmc:end -->") == 1
    assert result.deleted and all(p.startswith("data/") for p in result.deleted)
    assert files["notes.txt"] == b"mine\n"
    assert sorted(p for p in files if p.startswith("data/")) == sorted(p for p in read_manifest(one).files
                                                                       if p.startswith("data/"))


def test_push_refuses_remote_files_in_bmcs_paths_it_did_not_push(hub, tmp_path):
    _upload(REPO, {"data/default/train-mine.parquet": b"PAR1 not bmc's", "figures/diagram.png": b"png"})
    out = save_bridged(bridged_rows(), tmp_path / "out", repo_id=REPO, stats=False)
    commits = len(hub.commits(REPO))
    with pytest.raises(OutputConflict, match=r"2 file\(s\) in bmc's paths.*data/default/train-mine.parquet"):
        push_bridged(out, REPO)
    assert len(hub.commits(REPO)) == commits  # nothing pushed

    result = push_bridged(out, REPO, overwrite=True)
    assert set(result.kept) == {"data/default/train-mine.parquet", "figures/diagram.png"}
    files = hub.files(REPO)
    assert files["data/default/train-mine.parquet"] == b"PAR1 not bmc's" and files["figures/diagram.png"] == b"png"

    # A file bmc pushed and someone changed on the Hub since is theirs: a push that would delete it refuses.
    pushed = sorted(p for p in read_manifest(out).files if p.startswith("data/failed/"))
    _upload(REPO, {pushed[0]: b"edited on the Hub"})
    smaller = save_bridged(bridged_rows().filter(lambda r: r["bmc_status"] != "failed"), tmp_path / "smaller",
                           repo_id=REPO, stats=False)
    with pytest.raises(OutputConflict, match=pushed[0]):
        push_bridged(smaller, REPO, overwrite=False)
    assert hub.files(REPO)[pushed[0]] == b"edited on the Hub"


def test_push_uploads_only_the_files_bmc_wrote(hub, tmp_path):
    out = save_bridged(bridged_rows(), tmp_path / "out", repo_id=REPO, stats=False)
    (out / "raw_annotations.csv").write_text("id,label\n")
    (out / "data" / "scratch.txt").write_text("mine")
    push_bridged(out, REPO)
    files = hub.files(REPO)
    assert "raw_annotations.csv" not in files and "data/scratch.txt" not in files
    assert set(files) == set(read_manifest(out).files) | {MANIFEST, ".gitattributes"}
    assert datasets.load_dataset(REPO, split="train", cache_dir=str(tmp_path / "c"))


def test_a_folder_or_link_in_the_way_is_refused_even_with_overwrite(tmp_path, llm, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").mkdir()  # a folder where bridge writes a file
    (out / "summary.md" / "mine.txt").write_text("mine")
    source = _pairs(tmp_path / "p.jsonl", 2)
    assert bridge_main(_bridge_args(source, out, llm, "--overwrite")) == 2
    assert "summary.md" in _err_line(capsys.readouterr().err) and llm.call_count == 0

    folder = tmp_path / "pub"
    folder.mkdir()
    (folder / "data").symlink_to(outside, target_is_directory=True)  # a link where save_bridged needs a folder
    with pytest.raises(OutputConflict, match="data"):
        save_bridged(bridged_rows(), folder, repo_id=REPO, stats=False, overwrite=True)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and (folder / "data").is_symlink()


def test_publish_refuses_a_repo_with_files_in_bmcs_paths_before_any_call(hub, tmp_path, llm, capsys):
    _upload(REPO, {"data/train.csv": b"prompt,chosen,rejected\n", "README.md": USER_README})
    args = ["--repo", REPO, "--source", str(_pairs(tmp_path / "p.jsonl", 2)), *_provider(llm),
            "--out", str(tmp_path / "out"), "--quiet", "--no-stats", "--no-report"]
    assert publish_main(args) == 2
    line = _err_line(capsys.readouterr().err)
    assert f"{REPO} on the Hub: 1 file(s) in bmc's paths" in line and "data/train.csv" in line
    assert llm.call_count == 0 and not (tmp_path / "out").exists()
    assert publish_main([*args, "--overwrite"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "README.md on bmc-org/ecqa-bmc was not written by bmc: kept" in out
    files = hub.files(REPO)
    assert files["data/train.csv"] == b"prompt,chosen,rejected\n" and b"A hand-written introduction." in files["README.md"]


def test_a_run_killed_mid_write_leaves_files_the_rerun_may_replace(tmp_path, llm, capsys, caplog):
    out = tmp_path / "out"
    source = _pairs(tmp_path / "p.jsonl", 2)
    assert bridge_main(_bridge_args(source, out, llm)) == 0
    # A run killed (SIGKILL: no cleanup) after it began rewriting bridged.parquet: a half-written file, its lock left.
    script = ("import os, sys; from bmc_data.outputs import OutputFolder\n"
              "folder = OutputFolder(sys.argv[1], 'bridge', ['bridged.parquet', 'bridged.jsonl', 'summary.json', "
              "'summary.md']).__enter__()\n"
              "folder.path('bridged.parquet').write_bytes(b'PAR1 half')\n"
              "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr
    assert (out / LOCK).exists() and (out / "bridged.parquet").read_bytes() == b"PAR1 half"
    with caplog.at_level(logging.WARNING, logger="bmc_data.outputs"):
        assert bridge_main(_bridge_args(source, out, llm)) == 0, capsys.readouterr().err
    assert "took over the lock" in caplog.text
    assert (out / "bridged.parquet").read_bytes().startswith(b"PAR1") and (out / "bridged.parquet").stat().st_size > 9
    assert all(r.sha256 != "pending" for r in read_manifest(out).files.values())


def test_merge_card_keeps_the_readmes_text_and_keys_and_owns_only_the_data_keys():
    from bmc_data.hub.card_merge import merge_card

    generated = ("---\nlicense: other\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                 "    path: data/default/train-*\nsize_categories:\n- n<1K\n---\n\n<!-- bmc:begin -->\n# New card\n"
                 "<!-- bmc:end -->\n")
    plain = merge_card("Just some notes, no header.\n", generated)
    assert plain.index("Just some notes") < plain.index("<!-- bmc:begin -->") and "# New card" in plain
    assert DatasetCard(plain).data["license"] == "other"  # a key the README lacked is added
    old = ("---\nlicense: mit\nconfigs:\n- config_name: mine\n  data_files: x.csv\n---\nIntro.\n<!-- bmc:begin -->\n"
           "# Old card\n<!-- bmc:end -->\nOutro.\n")
    merged = merge_card(old, generated)
    data = DatasetCard(merged).data
    # the README's own config (its own file) is kept beside bmc's: only bmc's configs are bmc's to write
    assert data["license"] == "mit" and [c["config_name"] for c in data["configs"]] == ["default", "mine"]
    assert data["configs"][1]["data_files"] == "x.csv"
    assert "Intro." in merged and "Outro." in merged and "# New card" in merged and "# Old card" not in merged
    assert merge_card(merged, generated) == merged  # merging again changes nothing
    broken = "---\nlicense: [unclosed\n---\nText.\n"
    assert merge_card(broken, generated).count("Text.") == 1


def test_merge_card_keeps_the_readmes_other_configs_loadable():
    # before: the README's own configs (and their dataset_info) were dropped, so load_dataset(repo, "raw") broke
    from datasets.utils.metadata import MetadataConfigs

    from bmc_data.hub.card_merge import merge_card

    generated = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/default/train-*\n"
                 "  default: true\ndataset_info:\n- config_name: default\n  splits:\n  - name: train\n"
                 "    num_examples: 3\n---\n\n<!-- bmc:begin -->\n# New card\n<!-- bmc:end -->\n")
    old = ("---\nconfigs:\n- config_name: raw\n  data_files: raw/*.csv\n  default: true\n- config_name: default\n"
           "  data_files: old/*.csv\ndataset_info:\n- config_name: raw\n  splits:\n  - name: train\n"
           "    num_examples: 7\n---\nMy data.\n")
    data = DatasetCard(merge_card(old, generated)).data
    configs = {c["config_name"]: c for c in data["configs"]}
    assert list(configs) == ["default", "raw"] and configs["raw"]["data_files"] == "raw/*.csv"
    assert configs["default"]["data_files"][0]["path"] == "data/default/train-*"  # bmc's name: bmc's files
    assert "default" not in configs["raw"]  # two default configs would make the repo unloadable
    assert MetadataConfigs.from_dataset_card_data(data).get_default_config_name() == "default"
    assert [i["config_name"] for i in data["dataset_info"]] == ["default", "raw"]


def test_make_clean_removes_only_what_bmc_wrote_and_left_unchanged(tmp_path):
    """`make clean` on the demo folder: bmc's unchanged files go, a file it did not write and one changed since stay
    (the Makefile's own target, run with the demo folder and venv pointed into tmp_path)."""
    from bmc_data.outputs import OutputFolder

    demo = tmp_path / "bmc-demo"
    with OutputFolder(demo, "demo", ["pairs.jsonl", "dpo-bmc/", "demo.json"]) as folder:
        folder.write_text("pairs.jsonl", "{}\n")
        folder.write_text("dpo-bmc/config.json", "{}")
        folder.write_text("demo.json", "{}")
    with OutputFolder(demo, "report:report.html", ["report.html"]) as folder:
        folder.write_text("report.html", "<html>")
    (demo / "dpo-bmc" / "my-notes.txt").write_text("mine")
    (demo / "demo.json").write_text('{"edited": true}')  # changed since bmc wrote it: the user's now
    repo = Path(__file__).resolve().parents[1]
    venv = Path(sys.executable).parents[1]
    done = subprocess.run(["make", "-s", "-f", str(repo / "Makefile"), "clean", f"DEMO_OUT={demo}",
                           f"VENV={tmp_path / 'no-venv'}", f"BIN={venv / 'bin'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{demo}: removed 3 file(s) bmc wrote; kept 1 changed since: ['demo.json']" in done.stdout
    assert sorted(p.relative_to(demo).as_posix() for p in demo.rglob("*") if p.is_file()) == \
        [MANIFEST, "demo.json", "dpo-bmc/my-notes.txt"]
    assert list(read_manifest(demo).files) == ["demo.json"] and not (demo / LOCK).exists()
    assert (demo / "demo.json").read_text() == '{"edited": true}'
    # with the changed file gone too, the folder and its manifest go
    (demo / "demo.json").unlink()
    (demo / "dpo-bmc" / "my-notes.txt").unlink()
    from bmc_data.outputs import remove_written

    assert remove_written(demo) == ([], []) and not demo.exists()


def test_a_killed_runs_lock_with_this_process_pid_is_taken_over(tmp_path, caplog):
    """In a container a rerun often gets the pid of the run that was killed: its lock is stale, not ours."""
    import socket

    from bmc_data.outputs import OutputFolder

    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "bridge",
                                        "started": "2026-01-01T00:00:00+00:00"}))
    with caplog.at_level(logging.WARNING, logger="bmc_data.outputs"), \
            OutputFolder(out, "bridge", ["summary.json"]) as folder:
        folder.write_text("summary.json", "{}")
    assert "took over the lock of a bmc run that is gone" in caplog.text
    assert not (out / LOCK).exists() and (out / "summary.json").read_text() == "{}"


def test_merge_card_keeps_the_readmes_header_text_comments_and_all():
    """Only the blocks of the keys bmc sets change; the user's comments, quoting and order stay as written."""
    from bmc_data.hub.card_merge import merge_card

    generated = ("---\nlicense: other\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                 "    path: data/default/train-*\nsize_categories:\n- n<1K\n---\n\n<!-- bmc:begin -->\n# New card\n"
                 "<!-- bmc:end -->\n")
    old = ("---\n# Maintained by the data team: ask before editing\nlicense: 'mit'   # see LICENSE\n"
           "size_categories:\n  - 1K<n<10K\n# tags below are for search\ntags: [qa, 'reasoning']\n"
           "pretty_name: \"Our QA set\"\n---\nIntro.\n")
    merged = merge_card(old, generated)
    header = merged.split("---\n")[1]
    for kept in ("# Maintained by the data team: ask before editing\n", "license: 'mit'   # see LICENSE\n",
                 "# tags below are for search\ntags: [qa, 'reasoning']\n", 'pretty_name: "Our QA set"\n'):
        assert kept in header, kept
    assert "1K<n<10K" not in header and "- n<1K" in header  # bmc's key: its value
    data = DatasetCard(merged).data
    assert data["license"] == "mit" and data["tags"] == ["qa", "reasoning"]
    assert data["configs"][0]["data_files"][0]["path"] == "data/default/train-*"
    assert merge_card(merged, generated) == merged
    flow = "---\n{license: mit, tags: [a]}\n---\nText.\n"  # not editable line by line: written out from its values
    assert DatasetCard(merge_card(flow, generated)).data["tags"] == ["a"]
