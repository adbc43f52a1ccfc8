"""save_bridged / push_bridged / load_bridged against the local Hub stand-in (tests/hub_server.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from hub_server import HubServer, hub_endpoint, wait_until
from huggingface_hub import DatasetCard, HfApi
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from bmc_data.hub.load import load_bridged
from bmc_data.hub.push import local_files, push_bridged
from bmc_data.hub.save import save_bridged
from bmc_data.pairs import schema

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOKEN = "hf_bmcTestToken0123456789abcdefSECRET"
REPO = "bmc-org/ecqa-bmc"
VERSION = "qa-math-v1@0123456789ab"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def qa_records(n: int = 40) -> list[dict]:
    path = SHARED_DATA / "qa" / "ecqa-train.jsonl"
    if not path.exists():
        pytest.skip("../shared/data is not available")
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def bridged_rows(n: int = 30) -> datasets.Dataset:
    """A bridged dataset as bridge_dataset writes it, from real ECQA problems: every 5th row filtered, every
    7th failed; ỹ_w is y_l with its last sentence replaced by the reference's (a targeted edit)."""
    rows = []
    for i, rec in enumerate(qa_records(n)):
        y_w = rec["solution"].strip()
        y_l = f"{rec['solution'].split('.')[0].strip()}. So the answer is not clear."
        status = "failed" if i % 7 == 3 else "filtered" if i % 5 == 4 else "bridged"
        reason = {"failed": "wrong final answer: expected " + str(rec.get("answer")),
                  "filtered": "the editor judged y_l good enough", "bridged": ""}[status]
        chosen = f"{y_l.rsplit('.', 2)[0]}. {y_w.split('.')[-2].strip() if '.' in y_w else y_w}." \
            if status == "bridged" else y_w
        rows.append({
            schema.PROMPT: rec["problem"], schema.CHOSEN: chosen, schema.REJECTED: y_l, schema.ORIGINAL_CHOSEN: y_w,
            schema.STATUS: status, schema.REASON: reason, schema.PROMPT_VERSION: VERSION,
            schema.PROVIDER: "openai", schema.MODEL: "editor-model", schema.ID: f"ecqa-{i}",
            schema.TASK: "qa", schema.ANSWER: str(rec.get("answer")),
        })
    return datasets.Dataset.from_list(rows)


def tiny_tokenizer(vocab_size: int = 600, extra: str = "") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on real QA text (never downloaded)."""
    texts = [r["problem"] + "\n" + r["solution"] + extra for r in qa_records(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.name_or_path = f"tiny-bpe-{vocab_size}"
    return fast


def with_masks(dataset: datasets.Dataset, tokenizer) -> datasets.Dataset:
    from bmc_data.tokens.masks import add_diff_masks

    return add_diff_masks(dataset, tokenizer)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubServer() as server, hub_endpoint(server, cache_dir=tmp_path / "hf-cache"):
        yield server


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_rows_and_masks(hub, tmp_path, tokenizer, caplog):
    data = with_masks(bridged_rows(), tokenizer)
    out = save_bridged(data, tmp_path / "out", repo_id=REPO, source="ecqa-train.jsonl")
    result = push_bridged(out, REPO)
    assert result.created_commit and "README.md" in result.uploaded
    # Parquet goes through LFS, the card and manifest are regular files.
    assert hub.lfs_paths(REPO) == {p for p in local_files(out) if p.endswith((".parquet", ".png"))}
    remote = hub.files(REPO)
    for rel, path in local_files(out).items():
        assert remote[rel] == path.read_bytes(), rel

    expected = data.filter(lambda r: r[schema.STATUS] == "bridged")
    loaded = load_bridged(REPO, cache_dir=tmp_path / "c1")
    assert loaded.to_list() == expected.to_list()
    assert loaded[0][schema.CHOSEN_DIFF_MASK] == expected[0][schema.CHOSEN_DIFF_MASK]

    # Masks that fit the tokenizer are kept as stored.
    with caplog.at_level(logging.WARNING, logger="bmc_data.hub"):
        same = load_bridged(REPO, tokenizer=tokenizer, cache_dir=tmp_path / "c2")
    assert same.to_list() == expected.to_list()
    assert "recomputing" not in caplog.text

    # Masks built for another tokenizer are recomputed, and the log says so.
    other = tiny_tokenizer(vocab_size=400)
    with caplog.at_level(logging.WARNING, logger="bmc_data.hub"):
        refit = load_bridged(REPO, tokenizer=other, cache_dir=tmp_path / "c3")
    assert "recomputing diff masks" in caplog.text
    from bmc_data.tokens.masks import masks_fit
    from bmc_data.tokens.tokenization import tokenizer_fingerprint

    assert masks_fit(refit, other) and not masks_fit(refit, tokenizer)
    assert set(refit[schema.MASK_TOKENIZER_HASH]) == {tokenizer_fingerprint(other)}
    assert refit.select_columns(list(schema.BRIDGED_COLUMNS)).to_list() == \
        expected.select_columns(list(schema.BRIDGED_COLUMNS)).to_list()


def test_load_dataset_reads_every_config(hub, tmp_path):
    data = bridged_rows()
    counts = {s: data[schema.STATUS].count(s) for s in ("bridged", "filtered", "failed")}
    out = save_bridged(data, tmp_path / "out", repo_id=REPO, stats=False, test_size=4, seed=0)
    push_bridged(out, REPO)
    cache = str(tmp_path / "c")
    default = datasets.load_dataset(REPO, cache_dir=cache)
    assert set(default) == {"train", "test"}
    assert len(default["train"]) == counts["bridged"] - 4 and len(default["test"]) == 4
    assert set(default["train"][schema.STATUS]) == {"bridged"}
    for config in ("filtered", "failed"):
        part = datasets.load_dataset(REPO, config, split="train", cache_dir=cache)
        assert len(part) == counts[config] and set(part[schema.STATUS]) == {config}
    # Nothing is dropped: every input row is in exactly one config.
    ids = list(default["train"][schema.ID]) + list(default["test"][schema.ID])
    for config in ("filtered", "failed"):
        ids += list(datasets.load_dataset(REPO, config, split="train", cache_dir=cache)[schema.ID])
    assert sorted(ids) == sorted(data[schema.ID])
    # The same folder reads the same way locally.
    local = datasets.load_dataset(str(out), "failed", split="train", cache_dir=cache)
    assert local.to_list() == datasets.load_dataset(REPO, "failed", split="train", cache_dir=cache).to_list()


def test_configs_without_rows_are_left_out(hub, tmp_path):
    data = bridged_rows().filter(lambda r: r[schema.STATUS] != "failed")
    out = save_bridged(data, tmp_path / "out", repo_id=REPO, stats=False)
    push_bridged(out, REPO)
    names = [c["config_name"] for c in DatasetCard.load(REPO, repo_type="dataset").data["configs"]]
    assert names == ["default", "filtered"]  # `datasets` cannot load a declared split that has no rows
    assert not (out / "data" / "failed").exists()
    assert "| failed | 0 | 0.0% |" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="failed"):
        load_bridged(REPO, config="failed", cache_dir=tmp_path / "c")


def test_repush_of_identical_content_makes_no_commit(hub, tmp_path):
    data = bridged_rows()
    first = save_bridged(data, tmp_path / "a", repo_id=REPO)
    second = save_bridged(data, tmp_path / "b", repo_id=REPO)  # saving again gives the same bytes
    assert {k: _sha(v) for k, v in local_files(first).items()} == {k: _sha(v) for k, v in local_files(second).items()}

    pushed = push_bridged(first, REPO)
    n_commits = len(hub.commits(REPO))
    again = push_bridged(second, REPO)
    assert not again.created_commit and again.commit_oid == pushed.commit_oid
    assert len(hub.commits(REPO)) == n_commits
    # huggingface_hub's own no-op detection (preupload oids) agrees with the stand-in too.
    info = HfApi().upload_folder(folder_path=str(second), repo_id=REPO, repo_type="dataset",
                                 ignore_patterns=[".*"])
    assert info.oid == pushed.commit_oid and len(hub.commits(REPO)) == n_commits


def test_interrupted_commit_then_repush_gives_one_consistent_commit(hub, tmp_path):
    out = save_bridged(bridged_rows(), tmp_path / "out", repo_id=REPO, stats=False)
    hub.inject_fault("commit")  # the server receives the commit, then drops the connection without applying it
    with pytest.raises(Exception):
        push_bridged(out, REPO)
    assert hub.state.dropped == ["commit"]
    assert [c.title for c in hub.commits(REPO)] == ["initial commit"]
    assert set(hub.files(REPO)) == {".gitattributes"}

    result = push_bridged(out, REPO)
    assert result.created_commit
    commits = hub.commits(REPO)
    assert len(commits) == 2 and commits[-1].oid == result.commit_oid
    remote = hub.files(REPO)
    assert {p: hashlib.sha256(b).hexdigest() for p, b in remote.items() if p != ".gitattributes"} == \
        {p: _sha(path) for p, path in local_files(out).items()}
    # LFS objects uploaded by the interrupted push were reused, not uploaded twice.
    puts = [r for r in hub.state.requests if r.method == "PUT"]
    assert len(puts) == len(hub.lfs_paths(REPO))


def test_killed_push_leaves_no_partial_commit_and_repush_completes(hub, tmp_path):
    out = save_bridged(bridged_rows(), tmp_path / "out", repo_id=REPO, stats=False)
    hub.inject_fault("lfs_upload_stall")  # the first LFS upload stops halfway; then we kill the client
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}
    script = f"from bmc_data import push_bridged; push_bridged({str(out)!r}, {REPO!r})"
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: "lfs_upload_stall" in hub.state.dropped, timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    hub.state.release.set()
    assert [c.title for c in hub.commits(REPO)] == ["initial commit"]  # nothing half-committed
    for sha, blob in hub.state.lfs.items():  # and no partial object stored
        assert hashlib.sha256(blob).hexdigest() == sha

    result = push_bridged(out, REPO)
    commits = hub.commits(REPO)
    assert result.created_commit and len(commits) == 2 and commits[-1].oid == result.commit_oid
    remote = hub.files(REPO)
    assert {p: hashlib.sha256(b).hexdigest() for p, b in remote.items() if p != ".gitattributes"} == \
        {p: _sha(path) for p, path in local_files(out).items()}


def test_dropped_lfs_upload_never_stores_partial_content(hub, tmp_path):
    out = save_bridged(bridged_rows(), tmp_path / "out", repo_id=REPO, stats=False)
    hub.inject_fault("lfs_upload")  # the first upload is cut halfway; the client retries it
    result = push_bridged(out, REPO)
    assert hub.state.dropped == ["lfs_upload"]
    assert len(hub.commits(REPO)) == 2 and result.created_commit
    for sha, blob in hub.state.lfs.items():
        assert hashlib.sha256(blob).hexdigest() == sha
    loaded = load_bridged(REPO, cache_dir=tmp_path / "c")
    assert len(loaded) == bridged_rows()[schema.STATUS].count("bridged")


def test_changed_content_replaces_stale_shards_in_one_commit(hub, tmp_path):
    data = bridged_rows()
    many = save_bridged(data, tmp_path / "many", repo_id=REPO, max_shard_size=1024, stats=False)
    shards = sorted(p for p in local_files(many) if p.startswith("data/default/"))
    assert len(shards) > 1 and shards[0].endswith(f"-of-{len(shards):05d}.parquet")
    push_bridged(many, REPO)
    one = save_bridged(data.select(range(20)), tmp_path / "one", repo_id=REPO, stats=False)
    result = push_bridged(one, REPO)
    assert set(result.deleted) == {p for p in local_files(many) if p.startswith("data/")} - set(local_files(one))
    assert set(shards) <= set(result.deleted)
    assert len(hub.commits(REPO)) == 3
    assert sorted(p for p in hub.files(REPO) if p.startswith("data/")) == \
        sorted(p for p in local_files(one) if p.startswith("data/"))
    loaded = load_bridged(REPO, cache_dir=tmp_path / "c")
    assert len(loaded) == data.select(range(20))[schema.STATUS].count("bridged")


def test_missing_columns_error_is_clear(tmp_path):
    folder = tmp_path / "notbridged"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list([{"prompt": "p", "chosen": "c"}]).to_parquet(str(folder / "data" / "train.parquet"))
    with pytest.raises(ValueError) as err:
        load_bridged(folder, cache_dir=tmp_path / "c")
    message = str(err.value)
    assert "missing column(s)" in message and "'rejected'" in message and "'bmc_status'" in message
    assert "Expected" in message and "original_chosen" in message
    with pytest.raises(ValueError, match="missing column"):
        save_bridged(datasets.Dataset.from_list([{"prompt": "p"}]), tmp_path / "x")


def test_local_folder_round_trip(tmp_path, tokenizer):
    data = with_masks(bridged_rows(), tokenizer)
    out = save_bridged(data, tmp_path / "out", repo_id=REPO, stats=False)
    loaded = load_bridged(out, tokenizer=tokenizer, config="filtered", cache_dir=tmp_path / "c")
    assert loaded.to_list() == data.filter(lambda r: r[schema.STATUS] == "filtered").to_list()
    manifest = json.loads((out / "bmc_manifest.json").read_text())
    assert manifest["status_counts"] == {s: data[schema.STATUS].count(s) for s in ("bridged", "filtered", "failed")}
    assert manifest["mask_tokenizer"]["name"] == tokenizer.name_or_path
    assert manifest["has_masks"] is True and manifest["prompt_versions"] == [VERSION]


def test_token_never_leaks(hub, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    out = save_bridged(bridged_rows(), tmp_path / "out", repo_id=REPO, stats=False,
                       provider_info={"base_url": f"http://user:{TOKEN}@127.0.0.1:9/v1?key={TOKEN}",
                                      "api_key": TOKEN})
    push_bridged(out, REPO)  # the token comes from HF_TOKEN
    load_bridged(REPO, cache_dir=tmp_path / "c")
    assert hub.seen_tokens() == {TOKEN}  # it was used...
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text  # ...but never shown
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for name, blob in hub.files(REPO).items():
        assert TOKEN.encode() not in blob, name


def test_stats_plots_are_published(hub, tmp_path):
    pytest.importorskip("bmc_data.tokens.stats")
    out = save_bridged(bridged_rows(), tmp_path / "out", repo_id=REPO)
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs and all(p.stat().st_size > 0 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    card = (out / "README.md").read_text()
    for png in pngs:
        assert f"](figures/{png.name})" in card
    push_bridged(out, REPO)
    assert {f"figures/{p.name}" for p in pngs} <= hub.lfs_paths(REPO)


def test_precomputed_stats_and_plots_are_used(tmp_path):
    stats = pytest.importorskip("bmc_data.tokens.stats")
    data = bridged_rows()
    with_stats = stats.add_edit_distance_stats(data)
    out = tmp_path / "out"
    pngs = stats.plot_edit_distances(with_stats, out / "figures")  # already where save_bridged puts figures
    table = stats.summarize_edit_distances(with_stats)
    save_bridged(data, out, repo_id=REPO, stats_table=table, plot_paths=pngs)
    saved = sorted((out / "figures").glob("*.png"))
    assert [p.name for p in saved] == sorted(Path(p).name for p in pngs)
    assert all(p.stat().st_size > 0 for p in saved)
    card = (out / "README.md").read_text()
    assert "| metric | phase |" in card and all(f"](figures/{p.name})" in card for p in saved)
    assert json.loads((out / "bmc_manifest.json").read_text())["figures"] == [f"figures/{p.name}" for p in
                                                                              map(Path, pngs)]


def test_push_uploads_the_dataset_not_what_other_bmc_commands_wrote_in_the_folder(hub, tmp_path, tokenizer):
    """A `bridge --out` run and a demo's call cache in the same folder as save_bridged are bmc's too (listed in the
    manifest), but they are not the dataset: they stay local."""
    from bmc_data.outputs import OutputFolder, read_manifest

    out = tmp_path / "out"
    with OutputFolder(out, "bridge", ["bridged.parquet", "pairs.jsonl"]) as folder:
        folder.write_text("pairs.jsonl", '{"rejected": "y_l"}\n')
        folder.write_bytes("bridged.parquet", b"PAR1")
    with OutputFolder(out, "demo", ["cache/calls.sqlite"]) as folder:
        folder.write_bytes("cache/calls.sqlite", b"SQLite format 3\0")
    save_bridged(with_masks(bridged_rows(), tokenizer), out, repo_id=REPO, source="ecqa-train.jsonl")
    assert {"pairs.jsonl", "bridged.parquet", "cache/calls.sqlite"} <= set(read_manifest(out).files)
    push_bridged(out, REPO)
    remote = set(hub.files(REPO))
    assert not remote & {"pairs.jsonl", "bridged.parquet", "cache/calls.sqlite"}, remote
    assert "README.md" in remote and any(p.startswith("data/") for p in remote)
    assert set(json.loads(hub.files(REPO)["bmc_files.json"])["files"]) == remote - {"bmc_files.json", ".gitattributes"}
