"""The Hub dataset card (README.md) of a bridged BMC dataset.

The YAML header declares three configs so that nothing is silently dropped: `default` (bridged pairs, what a
trainer should use), `filtered` (pairs the editor judged already fine) and `failed` (no usable pseudo-winner).
The body says how the data was made (source, provider/model, the exact prompt template), what came out (status
counts, top reasons, what the editor did, edit-distance statistics and plots), which tokenizer the diff masks fit,
and how to train.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from bmc_data.pairs import schema

CONFIGS = ("default", "filtered", "failed")
CONFIG_STATUS = {"default": schema.Status.BRIDGED.value, "filtered": schema.Status.FILTERED.value,
                 "failed": schema.Status.FAILED.value}
DEFAULT_LICENSE = "other"
#: the generated body sits between these; a push that finds someone else's README keeps the text around them
BEGIN, END = "<!-- bmc:begin -->", "<!-- bmc:end -->"
_SECRET_KEY = re.compile(r"key|token|secret|password|auth|credential", re.IGNORECASE)

COLUMN_DOCS = {
    schema.PROMPT: "the prompt x (text, or a list of `{role, content}` messages)",
    schema.CHOSEN: "ỹ_w, the pseudo-winning response, when `bmc_status` is `bridged`; else the original winner y_w",
    schema.REJECTED: "y_l, the losing response (unchanged)",
    schema.ORIGINAL_CHOSEN: "y_w, the original winning response",
    schema.STATUS: "`bridged`, `filtered` or `failed`",
    schema.REASON: "why a row was filtered or failed (empty when bridged)",
    schema.PROMPT_VERSION: "the prompt template version id (`<version>@<sha256 prefix>`)",
    schema.PROVIDER: "the LLM provider that wrote ỹ_w",
    schema.MODEL: "the LLM model that wrote ỹ_w",
    schema.CHOSEN_DIFF_MASK: "one bool per chosen completion token: True where ỹ_w differs from y_l",
    schema.REJECTED_DIFF_MASK: "one bool per rejected completion token: True where y_l differs from ỹ_w",
    schema.MASK_TOKENIZER: "name of the tokenizer the masks were computed with",
    schema.MASK_TOKENIZER_HASH: "hash of that tokenizer's vocabulary and chat template",
    schema.ID: "row id from the source",
    schema.TASK: "`qa`, `math` or `instruction`",
    schema.ANSWER: "ground-truth final answer (QA/math)",
}

Parts = Mapping[str, Mapping[str, "datasets.Dataset | int"]]


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for `n` rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>1T" if n >= 10**12 else "1B<n<10B"


def safe_provider_info(info: Mapping[str, Any] | None) -> dict[str, str]:
    """Provider identity fit for publication: no key-like fields, no credentials or query string in URLs."""
    out: dict[str, str] = {}
    for key, value in (info or {}).items():
        if value is None or _SECRET_KEY.search(str(key)):
            continue
        text = str(value)
        if "://" in text:
            parts = urlsplit(text)
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            text = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        out[str(key)] = text
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _stats_markdown(stats_table: Any) -> str | None:
    if stats_table is None:
        return None
    if isinstance(stats_table, str):
        return stats_table.strip() or None
    # a pandas DataFrame; written by hand because `tabulate` (DataFrame.to_markdown) is not a dependency
    frame = stats_table
    import pandas as pd

    show_index = not isinstance(frame.index, pd.RangeIndex)
    index_names = [str(n or "") for n in frame.index.names] if show_index else []
    header = index_names + [str(c) for c in frame.columns]
    rows = []
    for idx, values in zip(frame.index, frame.itertuples(index=False)):
        keys = (list(idx) if isinstance(idx, tuple) else [idx]) if show_index else []
        rows.append(keys + list(values))
    return markdown_table(header, rows)


def _num_rows(value: Any) -> int:
    return value if isinstance(value, int) else len(value)


def _normalize_parts(parts: Any) -> dict[str, dict[str, Any]]:
    if isinstance(parts, datasets.DatasetDict):
        return {"default": dict(parts)}
    if isinstance(parts, datasets.Dataset):
        return {"default": {"train": parts}}
    return {config: dict(splits) for config, splits in parts.items()}


def card_metadata(parts: Parts, *, repo_id: str, license: str = DEFAULT_LICENSE, pretty_name: str | None = None,
                  features: "datasets.Features | None" = None, tags: Sequence[str] = ()) -> DatasetCardData:
    """YAML metadata: configs (with data_files per split), dataset_info, license, task categories, tags."""
    parts = _normalize_parts(parts)
    configs = []
    for config in [c for c in CONFIGS if c in parts] + [c for c in parts if c not in CONFIGS]:
        entry: dict[str, Any] = {"config_name": config,
                                 "data_files": [{"split": split, "path": f"data/{config}/{split}-*"}
                                                for split in parts[config]]}
        if config == "default":
            entry["default"] = True
        configs.append(entry)
    total = sum(_num_rows(v) for splits in parts.values() for v in splits.values())
    card_data = DatasetCardData(
        license=license,
        pretty_name=pretty_name or f"{repo_id.split('/')[-1]} (BMC bridged preference pairs)",
        task_categories=["text-generation"],
        language=["en"],
        tags=list(dict.fromkeys(["dpo", "preference", "bmc", "synthetic", *tags])),
        size_categories=[size_category(total)],
        configs=configs,
    )
    infos = {}
    for config, splits in parts.items():
        feats = features
        split_dict = datasets.SplitDict()
        for split, value in splits.items():
            if isinstance(value, datasets.Dataset):
                feats = feats or value.features
                nbytes = value.data.nbytes
            else:
                nbytes = 0
            split_dict.add(datasets.SplitInfo(name=split, num_bytes=nbytes, num_examples=_num_rows(value)))
        if feats is not None:
            infos[config] = datasets.DatasetInfo(features=feats, splits=split_dict, config_name=config)
    if infos:
        datasets.info.DatasetInfosDict(infos).to_dataset_card_data(card_data)
    return card_data


def _template_section(template: Any) -> str:
    if template is None:
        return "The prompt template is not recorded for this dataset.\n"
    templates = template if isinstance(template, (list, tuple)) else [template]
    blocks = []
    for t in templates:
        name = getattr(t, "name", "template")
        blocks.append(
            f"- Prompt template `{name}`, version `{t.version}`, sha256 `{t.sha256}`\n\n"
            f"<details>\n<summary>Full text of <code>{name}</code> ({t.version})</summary>\n\n"
            f"````yaml\n{t.text.rstrip()}\n````\n\n</details>\n"
        )
    return "\n".join(blocks)


def _editor_stats(parts: Parts) -> dict[str, Any] | None:
    """`editor_statistics` over every row of `parts`, or None when they are row counts, not datasets."""
    from bmc_data.tokens.stats import editor_rows, editor_statistics

    tables = [value for splits in parts.values() for value in splits.values()]
    if not tables or not all(isinstance(t, datasets.Dataset) for t in tables):
        return None
    if any(schema.STATUS not in t.column_names for t in tables):
        return None
    return editor_statistics([row for t in tables for row in editor_rows(t)])


def render_dataset_card(
    dataset_dict_or_parts: Any,
    *,
    repo_id: str,
    template: Any = None,
    provider_info: Mapping[str, Any] | None = None,
    tokenizer_info: Mapping[str, Any] | None = None,
    stats_table: Any = None,
    plot_paths: Sequence[str] = (),
    status_counts: Mapping[str, int] | None = None,
    reasons: Mapping[str, Sequence[tuple[str, int]]] | None = None,
    source: str | None = None,
    license: str = DEFAULT_LICENSE,
    pretty_name: str | None = None,
    features: "datasets.Features | None" = None,
    report_path: str | None = None,
    editor_stats: Mapping[str, Any] | None = None,
    review: Mapping[str, int] | None = None,
) -> DatasetCard:
    """Render the README.md card of a bridged dataset.

    `dataset_dict_or_parts` is a `DatasetDict` (one `default` config) or a mapping config -> split -> Dataset
    (or row count), laid out under `data/{config}/{split}-*.parquet`. `plot_paths` are repo-relative image paths.
    `provider_info` is published after dropping key-like fields and URL credentials. `report_path`: the
    repo-relative review page (`bmc_data.report`) to link. `editor_stats`: `tokens.stats.editor_statistics` of
    the whole dataset (default: computed from the parts when they are datasets).
    """
    parts = _normalize_parts(dataset_dict_or_parts)
    card_data = card_metadata(parts, repo_id=repo_id, license=license, pretty_name=pretty_name, features=features)
    provider = safe_provider_info(provider_info)
    status_counts = dict(status_counts or {})
    total = sum(status_counts.values())
    sections: list[str] = []

    sections.append(
        f"# {card_data.pretty_name}\n\n"
        "**BMC** (*Bridging and Modeling Correlations in Pairwise Data for DPO*) makes preference pairs more "
        "informative: an LLM edits the losing response y_l into a pseudo-winning response ỹ_w with targeted "
        "modifications, so the two responses of a pair differ only where it matters. Training then weights the "
        "tokens that differ (the diff masks stored here) by the policy's confidence.\n"
    )

    how = ["## How this dataset was made", ""]
    how.append(f"- Source: `{source}`" if source else "- Source: not recorded")
    if provider:
        how.append("- Editor LLM: " + ", ".join(f"{k} `{v}`" for k, v in provider.items()))
    how.append("")
    how.append(_template_section(template))
    sections.append("\n".join(how))

    configs_rows = [[c, CONFIG_STATUS.get(c, "-"), ", ".join(f"{s} ({_num_rows(v)})" for s, v in splits.items())]
                    for c, splits in parts.items()]
    status_lines = ["## Status counts", ""]
    if status_counts:
        status_lines.append(markdown_table(
            ["status", "rows", "share"],
            [[s, n, f"{100 * n / total:.1f}%" if total else "-"] for s, n in status_counts.items()]))
    status_lines += ["", "Every row is published in one of the configs:", "",
                     markdown_table(["config", "bmc_status", "splits (rows)"], configs_rows), ""]
    for status, items in (reasons or {}).items():
        if items:
            status_lines.append(f"Top reasons for `{status}`:\n")
            status_lines.append(markdown_table(["reason", "rows"], list(items)))
            status_lines.append("")
    if report_path:
        status_lines.append(f"Review page: [{report_path}]({report_path}) shows every pair with its token-level diff, "
                            "filterable by status and reason (download the repo and open it in a browser; it reads "
                            f"`{report_path.rsplit('.', 1)[0]}_files/` beside it).\n")
    if review:
        status_lines.append(
            f"Human review: {review.get('reviewed', 0):,} of {review.get('rows', 0):,} rows reviewed on the review page "
            f"({review.get('keep', 0):,} keep, {review.get('flag', 0):,} flag, {review.get('drop', 0):,} drop); the "
            f"{review.get('drop', 0):,} dropped rows are not published, the others carry `bmc_review_decision` and "
            "`bmc_review_note`.\n")
    sections.append("\n".join(status_lines))

    editor = dict(editor_stats) if editor_stats is not None else _editor_stats(parts)
    if editor:
        from bmc_data.tokens.stats import editor_statistics_lines

        sections.append("## What the editor did\n\n" + "".join(f"- {line}\n" for line in editor_statistics_lines(editor))
                        + "\nA bridged row whose only change is the final-answer line taught the editor's answer, not "
                          "a corrected reasoning: read those before training on them.\n")

    stats_md = _stats_markdown(stats_table)
    stats_lines = ["## Edit distances", ""]
    if stats_md:
        stats_lines += ["Edit distances between the two responses of each bridged pair: `before` compares y_w "
                        "with y_l, `after` compares ỹ_w with y_l (`norm`: divided by the longer response). A lower "
                        "`after` means the pair now differs in fewer places.", "", stats_md, ""]
    else:
        stats_lines.append("Edit-distance statistics were not computed for this dataset.\n")
    for path in plot_paths:
        stats_lines.append(f"![{path.rsplit('/', 1)[-1]}]({path})\n")
    sections.append("\n".join(stats_lines))

    tok_lines = ["## Diff masks", ""]
    if tokenizer_info and tokenizer_info.get("name"):
        tok_lines.append(
            f"`chosen_diff_mask` / `rejected_diff_mask` fit the tokenizer `{tokenizer_info['name']}` "
            f"(hash `{tokenizer_info.get('hash', 'unknown')}`): one bool per completion token as TRL's "
            "DPOTrainer tokenizes it. `bmc_data.load_bridged(repo, tokenizer=...)` recomputes them for any "
            "other tokenizer.\n")
    else:
        tok_lines.append("This dataset has no diff masks; `bmc_data.load_bridged(repo, tokenizer=...)` "
                         "computes them for your tokenizer.\n")
    sections.append("\n".join(tok_lines))

    cols = []
    column_names = list(features) if features is not None else None
    if column_names is None:
        for splits in parts.values():
            for value in splits.values():
                if isinstance(value, datasets.Dataset):
                    column_names = value.column_names
                    break
            if column_names:
                break
    for name in column_names or schema.BRIDGED_COLUMNS:
        cols.append([f"`{name}`", COLUMN_DOCS.get(name, "")])
    sections.append("## Columns\n\n" + markdown_table(["column", "meaning"], cols) + "\n")

    sections.append(
        "## Use it\n\n"
        "Train with BMC (token-weighted DPO on TRL):\n\n"
        "```bash\n"
        f"python -m bmc_train --dataset_name {repo_id} --model_name_or_path <your-sft-model> --loss_type bmc \\\n"
        "    --output_dir bmc-out --per_device_train_batch_size 4 --learning_rate 5e-7\n"
        "```\n\n"
        "Load it in Python (masks recomputed if they do not fit your tokenizer):\n\n"
        "```python\n"
        "from transformers import AutoTokenizer\n"
        "from bmc_data.hub import load_bridged\n\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"<your-sft-model>\")\n"
        f"train = load_bridged(\"{repo_id}\", tokenizer=tokenizer, split=\"train\")\n"
        "```\n\n"
        "Plain DPO with TRL (the mask columns are simply ignored by `DPOTrainer`):\n\n"
        "```python\n"
        "from datasets import load_dataset\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from trl import DPOConfig, DPOTrainer\n\n"
        f"train = load_dataset(\"{repo_id}\", split=\"train\")  # the `default` config: bridged pairs\n"
        "model = AutoModelForCausalLM.from_pretrained(\"<your-sft-model>\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"<your-sft-model>\")\n"
        "trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=\"dpo-out\"), train_dataset=train,\n"
        "                     processing_class=tokenizer)\n"
        "trainer.train()\n"
        "```\n\n"
        f"The other configs: `load_dataset(\"{repo_id}\", \"filtered\")`, `load_dataset(\"{repo_id}\", \"failed\")`.\n"
    )

    # The body sits between markers, so a README someone wrote on the Hub keeps its own text around it on a push
    # (bmc_data.hub.card_merge).
    content = f"---\n{card_data.to_yaml()}\n---\n\n{BEGIN}\n" + "\n".join(sections) + f"\n{END}\n"
    from bmc_data.redaction import (
        redact,  # a card is public: no secret, whatever a reason or a base URL quoted
    )

    return DatasetCard(redact(content))


def validate_card(card: DatasetCard | str) -> DatasetCardData:
    """Offline check of a card: the YAML parses back and carries what the Hub and `datasets` need."""
    card = DatasetCard(card) if isinstance(card, str) else DatasetCard(card.content)
    data = card.data
    problems = []
    if not data.get("license"):
        problems.append("license is missing")
    configs = data.get("configs") or []
    names = [c.get("config_name") for c in configs]
    if "default" not in names:
        problems.append("no `default` config")
    for c in configs:
        if not c.get("data_files"):
            problems.append(f"config {c.get('config_name')!r} has no data_files")
    for key in ("task_categories", "tags", "size_categories", "pretty_name"):
        if not data.get(key):
            problems.append(f"{key} is missing")
    if problems:
        raise ValueError("invalid dataset card: " + "; ".join(problems))
    return data
