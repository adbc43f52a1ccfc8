"""The dataset card: valid Hub YAML that `datasets` understands, and a body that says how the data was made."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest
from huggingface_hub import DatasetCard, DatasetCardData
from test_hub import REPO, TOKEN, bridged_rows

from bmc_data.bridging.templates import load_template
from bmc_data.hub.card import (
    render_dataset_card,
    safe_provider_info,
    size_category,
    validate_card,
)
from bmc_data.hub.facts import status_counts, top_reasons
from bmc_data.hub.save import partition_by_status, save_bridged
from bmc_data.pairs import schema


@pytest.fixture(scope="module")
def rows() -> datasets.Dataset:
    return bridged_rows()


@pytest.fixture(scope="module")
def card(rows) -> DatasetCard:
    stats = pd.DataFrame({"metric": ["word", "word"], "phase": ["before", "after"], "mean": [12.5, 3.25],
                          "p50": [11.0, 3.0]}).set_index(["metric", "phase"])
    return render_dataset_card(
        partition_by_status({"train": rows}), repo_id=REPO, template=load_template("qa"),
        provider_info={"provider": "openai", "model": "editor-model", "api_key": TOKEN,
                       "base_url": f"https://user:{TOKEN}@llm.example.com/v1?token={TOKEN}"},
        tokenizer_info={"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "hash": "0123abcd4567ef89"},
        stats_table=stats, plot_paths=["figures/word_edit_distance.png"], status_counts=status_counts(rows),
        reasons=top_reasons(rows), source="ecqa-train.jsonl", license="apache-2.0", features=rows.features,
    )


def test_yaml_metadata_parses_back(card, rows):
    data = DatasetCard(card.content).data
    assert isinstance(data, DatasetCardData)
    assert data.license == "apache-2.0"
    assert data.task_categories == ["text-generation"]
    assert {"dpo", "preference", "bmc", "synthetic"} <= set(data.tags)
    assert data.size_categories == ["n<1K"] and data.pretty_name
    configs = {c["config_name"]: c for c in data.configs}
    assert list(configs) == ["default", "filtered", "failed"] and configs["default"]["default"] is True
    for name in configs:
        assert configs[name]["data_files"] == [{"split": "train", "path": f"data/{name}/train-*"}]
    validate_card(card)


def test_dataset_info_features_round_trip(card, rows):
    infos = datasets.info.DatasetInfosDict.from_dataset_card_data(DatasetCard(card.content).data)
    assert infos["default"].features == rows.features
    counts = status_counts(rows)
    assert infos["default"].splits["train"].num_examples == counts["bridged"]
    assert infos["failed"].splits["train"].num_examples == counts["failed"]


def test_body_documents_how_it_was_made(card, rows):
    text = card.text
    template = load_template("qa")
    assert "Bridging and Modeling Correlations" in text
    assert template.version in text and template.sha256 in text
    assert "<details>" in text and template.text.strip().splitlines()[-1] in text  # the full template text
    assert "ecqa-train.jsonl" in text and "editor-model" in text
    counts = status_counts(rows)
    for status, n in counts.items():
        assert f"| {status} | {n} |" in text
    assert "wrong final answer" in text  # top failure reason
    assert "| metric | phase | mean | p50 |" in text and "| word | before | 12.5 | 11 |" in text
    assert "![word_edit_distance.png](figures/word_edit_distance.png)" in text
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text and "0123abcd4567ef89" in text
    for column in schema.BRIDGED_COLUMNS:
        assert f"`{column}`" in text
    assert f"python -m bmc_train --dataset_name {REPO}" in text and "--loss_type bmc" in text
    assert f'load_dataset("{REPO}", split="train")' in text and "DPOTrainer" in text


def test_no_credentials_in_card(card):
    assert TOKEN not in card.content
    assert "https://llm.example.com/v1" in card.content


def test_safe_provider_info_drops_keys_and_url_credentials():
    info = safe_provider_info({"provider": "openai", "api_key": "sk-1", "Authorization": "Bearer x",
                               "base_url": "http://u:p@10.0.0.1:8000/v1?api_key=sk-1#frag", "model": "m"})
    assert info == {"provider": "openai", "base_url": "http://10.0.0.1:8000/v1", "model": "m"}


@pytest.mark.parametrize("n,label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (63_000, "10K<n<100K"),
                                     (100_000, "100K<n<1M"), (5_000_000, "1M<n<10M")])
def test_size_categories(n, label):
    assert size_category(n) == label


def test_validate_card_rejects_missing_pieces():
    with pytest.raises(ValueError, match="no `default` config"):
        validate_card("---\nlicense: mit\npretty_name: x\ntags: [a]\ntask_categories: [text-generation]\n"
                      "size_categories: [n<1K]\nconfigs:\n- config_name: other\n  data_files: x/*\n---\n# x\n")
    with pytest.raises(ValueError, match="license is missing"):
        validate_card("---\npretty_name: x\n---\n# x\n")


def test_saved_card_matches_saved_files(tmp_path, rows):
    out = save_bridged(rows, tmp_path / "out", repo_id=REPO, test_size=0.2, stats=False, license="mit")
    data = validate_card((out / "README.md").read_text())
    for config in data["configs"]:
        for entry in config["data_files"]:
            prefix = entry["path"].rstrip("*")
            assert list(out.glob(prefix + "*.parquet")), entry
    assert [e["split"] for e in data["configs"][0]["data_files"]] == ["train", "test"]
    # The template is found from the `bmc_prompt_version` column when it names a bundled template.
    qa = load_template("qa")
    ds = rows.map(lambda r: {schema.PROMPT_VERSION: qa.version_id})
    text = (save_bridged(ds, tmp_path / "t", repo_id=REPO, stats=False) / "README.md").read_text()
    assert qa.sha256 in text


def test_stand_in_hub_validates_the_card(tmp_path, card):
    from hub_server import HubServer, hub_endpoint
    from huggingface_hub import HfApi

    with HubServer() as server, hub_endpoint(server, cache_dir=tmp_path / "hf"):
        api = HfApi(token="hf_x")
        api._validate_yaml(card.content, repo_type="dataset")  # raises ValueError on errors
        broken = card.content.replace("- n<1K", "- tiny", 1)
        with pytest.raises(ValueError, match="size_categories"):
            api._validate_yaml(broken, repo_type="dataset")


def test_card_says_what_the_editor_did(card, rows):
    from bmc_data.tokens.stats import editor_statistics

    stats = editor_statistics(rows)
    text = str(card)
    assert "## What the editor did" in text
    assert f"- bridged: {stats['bridged']} of {len(rows)} rows ({100 * stats['bridged_share']:.1f}%)" in text
    assert (f"y_w↔y_l {stats['median_word_edit_distance_before']:g}, ỹ_w↔y_l "
            f"{stats['median_word_edit_distance_after']:g}") in text
    assert f"only the final-answer line changed: {stats['only_final_answer_changed']} of {stats['bridged']}" in text
