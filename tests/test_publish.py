"""`python -m bmc_data.publish` end to end, in subprocesses: a loopback OpenAI-compatible editor LLM
(tests/llm_servers.py) and the Hub stand-in (tests/hub_server.py) on 127.0.0.1, real AlpacaEval text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from hub_server import HubServer
from llm_servers import LLMServer, bridge_reply
from report_fixtures import read_chunks
from test_hub import TOKEN, tiny_tokenizer

from bmc_data.pairs import schema
from bmc_data.publish import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
ALPACA = REPO_ROOT.parent / "shared" / "data" / "instruction" / "alpaca_eval.json"
OPENAI_KEY = "sk-bmcTestOpenAIKey0123456789SECRET"
FAIL_MARKER = "Broadway"  # the editor answers rows about this with an unusable reply


def ultrafeedback_sample(path: Path, n: int = 8) -> Path:
    """UltraFeedback-binarized layout from real AlpacaEval outputs: y_w = the full answer, y_l = its first
    sentence only (a real, clearly worse reply)."""
    if not ALPACA.exists():
        pytest.skip("../shared/data is not available")
    records = json.loads(ALPACA.read_text())[:n]
    with path.open("w") as f:
        for i, rec in enumerate(records):
            prompt, y_w = rec["instruction"], rec["output"].strip()
            y_l = y_w.split("\n")[0].split(". ")[0].strip() + "."
            f.write(json.dumps({
                "prompt": prompt, "prompt_id": f"alpaca-{i}",
                "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": y_w}],
                "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": y_l}],
                "score_chosen": 8.0, "score_rejected": 3.0,
            }) + "\n")
    return path


def editor_reply(messages: list[dict[str, str]]) -> str:
    if any(FAIL_MARKER in m["content"] for m in messages):
        return "Sorry, I would rather not edit this one."
    return bridge_reply(messages)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bmc_data.publish", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OPENAI_", "ANTHROPIC_"))}
    return {**base, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "OPENAI_API_KEY": OPENAI_KEY, "BMC_CACHE_DIR": str(tmp_path / "bmc"),
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def llm():
    with LLMServer(reply=editor_reply) as server:
        yield server


def _assert_no_secrets(proc: subprocess.CompletedProcess, folder: Path) -> None:
    for secret in (TOKEN, OPENAI_KEY):
        assert secret not in proc.stdout + proc.stderr
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_help_documents_every_flag(env):
    parser = build_parser()
    flags = [opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")]
    assert {"--repo", "--source", "--task", "--provider", "--model", "--base-url", "--tokenizer", "--limit",
            "--split", "--test-size", "--out", "--no-push", "--private", "--cache-dir", "--concurrency",
            "--seed"} <= set(flags)
    for action in parser._actions:
        assert action.help and action.help.strip(), action.option_strings
    proc = run_cli(["--help"], env)
    assert proc.returncode == 0
    for flag in flags:
        assert flag in proc.stdout, flag


@pytest.mark.parametrize("args,needle", [
    (["--no-push", "--test-size", "0"], "--test-size"),
    (["--limit", "-3", "--no-push"], "--limit"),
    (["--provider", "nope", "--no-push"], "--provider"),
    ([], "--repo is required"),
])
def test_usage_errors_exit_2(env, tmp_path, args, needle):
    proc = run_cli([*args, "--out", str(tmp_path / "out")], env)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_source_exits_2_with_a_clear_message(env, tmp_path, llm):
    proc = run_cli(["--no-push", "--source", str(tmp_path / "missing.jsonl"), "--provider", "openai",
                    "--model", "editor", "--base-url", llm.openai_base_url, "--out", str(tmp_path / "out"),
                    "--quiet"], env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "missing.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # the whole pipeline in a subprocess (transformers, masks, plots): ~20-40 s on 2 cores
def test_no_push_run_writes_a_folder_datasets_can_read(env, tmp_path, llm):
    source = ultrafeedback_sample(tmp_path / "uf.jsonl")
    tok_dir = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(str(tok_dir))
    out = tmp_path / "out"
    proc = run_cli(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor-model",
                    "--base-url", llm.openai_base_url, "--tokenizer", str(tok_dir), "--test-size", "2",
                    "--out", str(out), "--concurrency", "4", "--quiet"], env)
    assert proc.returncode == 0, proc.stderr
    assert "not pushed" in proc.stdout and "processed 8 pairs: " in proc.stdout
    assert llm.requests and all(r.headers.get("authorization") == f"Bearer {OPENAI_KEY}" for r in llm.requests)

    cache = str(tmp_path / "ds-cache")
    default = datasets.load_dataset(str(out), cache_dir=cache)
    failed = datasets.load_dataset(str(out), "failed", split="train", cache_dir=cache)
    assert set(default) == {"train", "test"} and len(default["test"]) == 2
    assert len(default["train"]) + 2 + len(failed) == 8 and len(failed) >= 1
    assert all(FAIL_MARKER in json.dumps(r[schema.PROMPT]) for r in failed)
    row = default["train"][0]
    assert row[schema.STATUS] == "bridged" and row[schema.PROVIDER] == "openai" and row[schema.MODEL] == "editor-model"
    assert set(schema.MASK_COLUMNS) <= set(default["train"].column_names)
    assert any(row[schema.CHOSEN_DIFF_MASK]) and row[schema.MASK_TOKENIZER_HASH]

    manifest = json.loads((out / "bmc_manifest.json").read_text())
    assert manifest["rows"] == 8 and manifest["status_counts"]["failed"] == len(failed)
    card = (out / "README.md").read_text()
    assert str(source) in card and "instruction-v1" in card
    # the review page: written into the folder, linked from the card, token-level diffs from the masks
    assert "[report.html](report.html)" in card
    index, rows = read_chunks(out / "report_files")
    assert index["n"] == 8 and {r["k"] for r in rows} == {"token"}
    assert str(source) in (out / "report.html").read_text()
    assert not any(p.name.startswith(".") for p in out.iterdir() if p.name != ".bmc_cache")
    _assert_no_secrets(proc, out)


@pytest.mark.slow  # two pipeline runs in subprocesses
def test_push_and_rerun_is_resumable_and_a_no_op(env, tmp_path, llm):
    source = ultrafeedback_sample(tmp_path / "uf.jsonl", n=6)
    out = tmp_path / "out"
    with HubServer() as hub:
        env = {**env, "HF_ENDPOINT": hub.url}
        args = ["--repo", "bmc-org/alpaca-bmc", "--source", str(source), "--provider", "openai",
                "--model", "editor-model", "--base-url", llm.openai_base_url, "--out", str(out), "--quiet",
                "--no-stats"]
        first = run_cli(args, env)
        assert first.returncode == 0, first.stderr
        assert "pushed to bmc-org/alpaca-bmc" in first.stdout
        commits = hub.commits("bmc-org/alpaca-bmc")
        assert len(commits) == 2 and commits[-1].oid in first.stdout
        calls = llm.call_count

        second = run_cli(args, env)  # same command again: cached LLM calls, same bytes, no commit
        assert second.returncode == 0, second.stderr
        assert "already up to date" in second.stdout
        assert llm.call_count == calls
        assert len(hub.commits("bmc-org/alpaca-bmc")) == 2
        assert hub.seen_tokens() == {TOKEN}
        files = hub.files("bmc-org/alpaca-bmc")
        assert ".bmc_cache/calls.sqlite" not in files and "README.md" in files
        assert "report.html" in files and "report_files/index.js" in files  # pushed with the data
        assert all(TOKEN.encode() not in blob and OPENAI_KEY.encode() not in blob for blob in files.values())
    _assert_no_secrets(first, out)
    _assert_no_secrets(second, out)


def test_edit_distances_are_computed_once_for_the_card_figures_and_page(tmp_path, monkeypatch, llm):
    """One pass over the rows serves the card's table, its figures and the review page (in-process, to count it)."""
    from bmc_data.publish import main
    from bmc_data.tokens import stats
    from bmc_data.tokens.diff import levenshtein_distance

    real, passes = stats.add_edit_distance_stats, []

    def counted(dataset, *args, **kwargs):
        passes.append(len(dataset))
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(stats, "add_edit_distance_stats", counted)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("BMC_CACHE_DIR", str(tmp_path / "bmc"))
    topics = ["tides", "Broadway musicals", "bread baking", "volcanoes", "chess openings", "honey bees"]
    rows = [{"prompt": f"Tell me about {t}.", "chosen": f"{t.capitalize()} are a rich topic with a long history "
             f"and many details worth knowing, number {i}.", "rejected": f"{t.capitalize()} exist."}
            for i, t in enumerate(topics)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok_dir = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(str(tok_dir))
    out = tmp_path / "out"
    assert main(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor-model",
                 "--base-url", llm.openai_base_url, "--tokenizer", str(tok_dir), "--test-size", "2",
                 "--out", str(out), "--quiet"]) == 0
    assert passes == [len(rows)]

    manifest = json.loads((out / "bmc_manifest.json").read_text())
    bridged = manifest["status_counts"]["bridged"]
    assert bridged == len(rows) - 1  # the Broadway row fails
    card_table = (out / "README.md").read_text().split("## Edit distances", 1)[1].split("\n## ", 1)[0]
    for metric in ("word_edit_distance", "word_norm_edit_distance", "token_edit_distance", "chosen_diff_fraction"):
        assert f"| {metric} |" in card_table, card_table
    assert f"| word_edit_distance | before | {bridged} |" in card_table  # counts the bridged rows only
    assert sorted(Path(p).name for p in manifest["figures"]) == sorted(p.name for p in (out / "figures").iterdir())
    assert {"word_edit_distance.png", "token_edit_distance.png", "diff_token_fraction.png"} <= {
        Path(p).name for p in manifest["figures"]}
    index, _ = read_chunks(out / "report_files")
    assert index["eb"] == [levenshtein_distance(r["chosen"].split(), r["rejected"].split()) for r in rows]
    assert all(a < b for a, b, s in zip(index["ea"], index["eb"], index["st"]) if index["statuses"][s] == "bridged")


def test_review_file_drops_rows_and_the_card_says_so(env, tmp_path, llm):
    source = ultrafeedback_sample(tmp_path / "uf.jsonl", n=6)
    missing = run_cli(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor-model",
                       "--base-url", llm.openai_base_url, "--out", str(tmp_path / "x"), "--review",
                       str(tmp_path / "no-such.jsonl"), "--quiet"], env)
    assert missing.returncode == 2 and "no-such.jsonl: no such decisions file" in missing.stderr
    assert not llm.requests and not (tmp_path / "x").exists()  # checked before any paid call
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text('{"row": 0, "decision": "drop", "note": "off topic"}\n'
                         '{"row": 1, "decision": "keep", "note": ""}\n'
                         '{"row": 2, "decision": "flag", "note": "check the numbers"}\n')
    out = tmp_path / "out"
    proc = run_cli(["--no-push", "--source", str(source), "--provider", "openai", "--model", "editor-model",
                    "--base-url", llm.openai_base_url, "--out", str(out), "--no-stats", "--review", str(decisions),
                    "--quiet"], env)
    assert proc.returncode == 0, proc.stderr
    assert "review: 3 of 6 rows reviewed (1 keep, 1 drop, 1 flag); 1 dropped" in proc.stdout
    manifest = json.loads((out / "bmc_manifest.json").read_text())
    assert manifest["rows"] == 5 and manifest["review"] == {"rows": 6, "reviewed": 3, "keep": 1, "drop": 1, "flag": 1}
    assert "Human review: 3 of 6 rows reviewed" in (out / "README.md").read_text()
    rows = [r for config in ("default", "filtered", "failed") for r in
            (datasets.load_dataset(str(out), config, split="train", cache_dir=str(tmp_path / "c"))
             if (out / "data" / config).is_dir() else [])]
    assert len(rows) == 5 and sorted(r["bmc_review_note"] for r in rows) == ["", "", "", "", "check the numbers"]
