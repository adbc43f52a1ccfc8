"""Shared by tests/test_report.py and tests/test_report_browser.py: a small bridged dataset with real ECQA text,
diff masks from an offline tokenizer, one row whose text tries HTML injection and one with non-ASCII text."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
from test_hub import bridged_rows, tiny_tokenizer, with_masks

from bmc_data.pairs import schema

INJECTION = '<img src=x onerror="window.__pwned=1"></pre><script>window.__pwned=2</script>'
UNICODE = "Le café coûte 3 €, naïve 数学 🙂."


def report_dataset(n: int = 40, *, masks: bool = True, tokenizer=None) -> datasets.Dataset:
    rows = bridged_rows(n).to_list()
    rows[1][schema.CHOSEN] = rows[1][schema.CHOSEN] + " " + INJECTION
    rows[1][schema.PROMPT] = INJECTION + " " + rows[1][schema.PROMPT]
    rows[2][schema.CHOSEN] = rows[2][schema.CHOSEN] + " " + UNICODE
    rows[2][schema.REJECTED] = rows[2][schema.REJECTED] + " Le cafe coute 3 euros, 数 🙃."
    # reasons with row-specific quoted values: grouped into one cause by schema.reason_group
    for i, row in enumerate(rows):
        if row[schema.STATUS] == "failed":
            row[schema.REASON] = f"final answer '{i}' does not match the reference '{row[schema.ANSWER]}'"
    data = datasets.Dataset.from_list(rows)
    return with_masks(data, tokenizer or tiny_tokenizer()) if masks else data


def read_chunks(files_dir: Path) -> tuple[dict, list[dict]]:
    """(index, rows) from a report's `<stem>_files/` folder, parsed as the page's registration calls."""
    def call_args(path: Path, name: str) -> list:
        text = path.read_text(encoding="utf-8")
        assert text.startswith(name + "(") and text.endswith(");\n"), path
        return json.loads("[" + text[len(name) + 1:-3] + "]")

    (index,) = call_args(files_dir / "index.js", "BMC_INDEX")
    rows: list[dict] = []
    for k in range(index["chunks"]):
        number, chunk = call_args(files_dir / f"rows-{k:05d}.js", "BMC_ROWS")
        assert number == k
        rows.extend(chunk)
    return index, rows


def side_text(side: dict, raw: str) -> str:
    return side["t"] if "t" in side else side.get("a", "") + raw + side.get("z", "")


# Characters where code points, UTF-16 units and bytes disagree: surrogate pairs (emoji, math italic), combining
# marks, ZWJ emoji sequences, CJK, right-to-left text, CRLF and tabs. Each row changes something next to them.
UNICODE_CASES = [
    ("emoji", "The sky 🙂 is blue today.", "The sky 🙂 is grey today."),
    ("math italic", "Let 𝑥 = 2 and 𝑦 = 3, so 𝑥𝑦 = 6.", "Let 𝑥 = 2 and 𝑦 = 3, so 𝑥𝑦 = 5."),
    ("combining", "Cafe\u0301 au lait, cre\u0300me brûle\u0301e.", "Cafe\u0301 noir, cre\u0300me brûle\u0301e."),
    ("zwj", "Team: 👩‍💻 and 👨‍👩‍👧 won 🏳️‍🌈 prizes.", "Team: 👩‍💻 and 👨‍👩‍👧 lost 🏳️‍🌈 prizes."),
    ("cjk", "数学很有趣，答案是七。", "数学很难，答案是八。"),
    ("rtl", "مرحبا بالعالم، الجواب هو سبعة.", "مرحبا بالعالم، الجواب هو ثمانية."),
    ("crlf", "line one\r\nline two\r\n\tindented 🙂 end", "line one\r\nline 2\r\n\tindented 🙃 end"),
    ("mixed", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀 x\u0301 数 עברית\t🙂🙂 fin", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀 y\u0301 数 עברית\t🙃🙂 end"),
]


def unicode_dataset(tokenizer=None, masks: bool = True) -> datasets.Dataset:
    """One bridged row per case in UNICODE_CASES (ỹ_w, y_l), with masks from the offline tokenizer."""
    rows = []
    for k, (name, chosen, rejected) in enumerate(UNICODE_CASES):
        rows.append({schema.PROMPT: f"Case {name}: say it 🙂", schema.CHOSEN: chosen, schema.REJECTED: rejected,
                     schema.ORIGINAL_CHOSEN: "y_w 🙂 " + chosen[:-2], schema.STATUS: "bridged",
                     schema.REASON: "", schema.PROMPT_VERSION: "v1", schema.PROVIDER: "test", schema.MODEL: "m",
                     schema.ID: f"u-{k}"})
    data = datasets.Dataset.from_list(rows)
    return with_masks(data, tokenizer or tiny_tokenizer()) if masks else data
