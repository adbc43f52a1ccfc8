"""The review page: one self-contained HTML file plus `<stem>_files/` with the rows in lazily loaded chunks.

The page opens straight from disk (no server, no network): `report.html` holds the header, counts, reasons and
histograms; `report_files/` beside it holds the row index and the rows in chunks (`<script>` files that call a
global registration function, so they load under `file://`). What is highlighted is decided in
`bmc_data.report.records`; the figures are drawn in `bmc_data.report.charts`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from bmc_data.errors import InputError
from bmc_data.outputs import REPORT_WRITER, OutputFolder
from bmc_data.pairs import schema
from bmc_data.pairs.review import review_fingerprint

from .charts import HATCH_DEFS, histogram_svg, splits_svg
from .records import build_records, chosen_share, column_list, prompt_text
from .source import mask_tokenizer

logger = logging.getLogger("bmc_data.report")

__all__ = ["ReportConfig", "render_report"]

FORMAT = "bmc-report/1"
DEFAULT_CHUNK_ROWS = 200
SNIPPET_CHARS = 90
STATUS_NAMES = [s.value for s in schema.Status]


@dataclass
class ReportConfig:
    """Options of `render_report` (and of the CLI built from it)."""

    chunk_rows: int = DEFAULT_CHUNK_ROWS  # rows per lazily loaded chunk file
    page_rows: int = 50  # rows per page of the list
    title: str | None = None
    model: str | None = None  # policy model for the λ preview (optional)
    delta: float = 2.0  # δ of λ = 1 + min(1/π_θ, δ); the paper's and bmc_train's default
    weight_rows: int = 32  # rows (bridged first) whose λ the preview computes
    provenance: dict[str, Any] = field(default_factory=dict)  # extra header fields (source, provider, ...)


def _js(name: str, *args: Any) -> str:
    """A script file that calls the global `name(*args)`: how data reach the page under file:// (no fetch)."""
    # ensure_ascii=False keeps the files small; U+2028/2029 are valid in JS string literals since ES2019
    body = ",".join(json.dumps(a, ensure_ascii=False, separators=(",", ":"), default=str) for a in args)
    return f"{name}({body});\n"



def _asset(name: str) -> str:
    return resources.files("bmc_data.resources").joinpath(name).read_text(encoding="utf-8")


def _inline_json(payload: Any) -> str:
    # inside <script>: no "</script>" or "<!--" can appear once "<" is escaped
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def facet_columns(dataset: datasets.Dataset, names: Sequence[str], most: int = 40) -> list[list[Any]]:
    """[name, values, code per row] of the extra text columns with a few distinct values (task, source, ...):
    the page's filters on extra columns."""
    out = []
    for name in names:
        feature = dataset.features[name]
        if not isinstance(feature, datasets.Value) or feature.dtype not in ("string", "large_string"):
            continue
        column = column_list(dataset, name)
        values = sorted({v for v in column if v is not None})
        if 1 < len(values) <= most:
            code = {v: k for k, v in enumerate(values)}
            out.append([name, values, [code.get(v, -1) for v in column]])
    return out


def _dl(items: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items if v)


def report_scope(path: str | Path) -> tuple[str, tuple[str, ...]]:
    """(writer, scope) of the review page at `path`, relative to its folder: the page and its `<stem>_files/`."""
    out = Path(path)
    return f"{REPORT_WRITER}{out.name}", (out.name, f"{out.stem}_files/")


def render_report(
    dataset: datasets.Dataset | datasets.DatasetDict,
    path: str | Path,
    *,
    tokenizer: Any = None,
    config: ReportConfig | None = None,
    source: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the review page of a bridged dataset to `path` (an .html file) and its data to `<stem>_files/`.

    Args:
        dataset: a bridged dataset (all statuses), or a DatasetDict whose splits are shown together.
        path: the HTML file to write; its data go to `<stem>_files/` beside it. What an earlier report wrote there
            (listed in the folder's bmc_files.json, unchanged) is replaced or removed; a file bmc did not write at
            the page's path or in `<stem>_files/` is an `OutputConflict` (exit 2) before anything is written.
        overwrite: replace such files where the report writes the same path instead (others are left in place).
        tokenizer: the tokenizer the diff masks were built with (default: loaded from `bmc_mask_tokenizer`);
            without a fitting one the page shows word-level diffs and says so.
        config: page options (`ReportConfig`); `config.model` adds the λ preview.
        source: where the data came from, for the header.
    Returns:
        `path` as a Path.
    """
    config = config or ReportConfig()
    if isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.concatenate_datasets(list(dataset.values()))
    missing = [c for c in schema.BRIDGED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise InputError(f"render_report: the dataset is missing column(s) {missing}; a bridged dataset has "
                         f"{list(schema.BRIDGED_COLUMNS)} (it has {dataset.column_names})")
    out = Path(path)
    writer, scope = report_scope(out)
    with OutputFolder(out.parent, writer, scope, overwrite=overwrite) as folder:
        _render(dataset, out, folder, tokenizer=tokenizer, config=config, source=source, progress=progress)
    return out


def _render(dataset: datasets.Dataset, out: Path, folder: OutputFolder, *, tokenizer: Any, config: ReportConfig,
            source: str | None, progress: bool) -> None:
    from bmc_data.hub.facts import (
        provider_identity,
        status_counts,
        tokenizer_identity,
        top_reasons,
    )
    from bmc_data.tokens.stats import (
        WORD_DISTANCE_AFTER,
        WORD_DISTANCE_BEFORE,
        WORD_NORM_AFTER,
        WORD_NORM_BEFORE,
        add_edit_distance_stats,
        editor_statistics,
        editor_statistics_lines,
    )

    files_dir = out.with_name(out.stem + "_files")
    tokenizer, diff_note = mask_tokenizer(dataset, tokenizer)
    shown = {*schema.BRIDGED_COLUMNS, schema.ID, schema.ANSWER, *schema.MASK_COLUMNS[:2]}
    extra_columns = [c for c in dataset.column_names if c not in shown]  # copied as they are, for copy-as-JSON
    fingerprint = review_fingerprint(dataset)
    if WORD_DISTANCE_BEFORE not in dataset.column_names or WORD_DISTANCE_AFTER not in dataset.column_names:
        dataset = add_edit_distance_stats(dataset)

    n = len(dataset)
    statuses = column_list(dataset, schema.STATUS)
    status_list = STATUS_NAMES + sorted({s for s in statuses if s not in STATUS_NAMES})
    groups = [schema.reason_group(r or "") for r in column_list(dataset, schema.REASON)]
    group_counts = Counter((s, g) for s, g in zip(statuses, groups) if g)
    group_list = [[g, s, c] for (s, g), c in sorted(group_counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    group_index = {(g, s): k for k, (g, s, _) in enumerate(group_list)}
    ed_before = np.asarray(column_list(dataset, WORD_DISTANCE_BEFORE), dtype=float)
    ed_after = np.asarray(column_list(dataset, WORD_DISTANCE_AFTER), dtype=float)

    weights: dict[int, dict[str, list[float]]] = {}
    weight_info = None
    if config.model:
        from .weights import preview_weights

        weights, weight_info = preview_weights(dataset, config.model, tokenizer, delta=config.delta,
                                               rows=config.weight_rows)

    # rows -> chunk files (streamed: a 61k-row dataset never sits in memory as records)
    digest = hashlib.sha256()
    share = np.full(n, -1, dtype=np.int32)
    kinds = np.zeros(n, dtype=np.int8)
    snippets: list[str] = []
    columns = [c for c in (*schema.BRIDGED_COLUMNS, schema.ID, schema.ANSWER, *schema.MASK_COLUMNS[:2])
               if c in dataset.column_names] + extra_columns
    units = np.zeros((n, 3), dtype=np.int32)  # chosen length, rejected length, edit distance (tokens or words)
    n_chunks = max(1, -(-n // config.chunk_rows))
    chunk_bytes: list[int] = []
    iterator = range(n_chunks)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="Writing report chunks", unit="chunk")
    table = dataset.select_columns(columns)
    for k in iterator:
        lo, hi = k * config.chunk_rows, min(n, (k + 1) * config.chunk_rows)
        batch = table[lo:hi] if n else {c: [] for c in columns}
        records = build_records(batch, tokenizer, extra_columns)
        for j, rec in enumerate(records):
            i = lo + j
            units[i] = (rec["cd"]["n"], rec["rd"]["n"], rec["td"])
            s = chosen_share(rec["cd"])
            share[i] = -1 if s is None else round(1000 * s)
            kinds[i] = 1 if rec["k"] == "token" else 0
            snippets.append(" ".join(prompt_text(rec["p"]).split())[:SNIPPET_CHARS])
            if i in weights and rec["k"] == "token":
                rec["lw"] = weights[i]
        text = _js("BMC_ROWS", k, records)
        blob = text.encode("utf-8")
        digest.update(blob)
        folder.write_bytes(f"{files_dir.name}/rows-{k:05d}.js", blob)
        chunk_bytes.append(len(blob))

    index = {
        "format": FORMAT, "n": n, "chunk": config.chunk_rows, "chunks": n_chunks, "page": config.page_rows,
        "statuses": status_list, "groups": group_list,
        "st": [status_list.index(s) for s in statuses],
        "gr": [group_index.get((g, s), -1) if g else -1 for s, g in zip(statuses, groups)],
        "eb": [int(v) for v in ed_before], "ea": [int(v) for v in ed_after],
        "sh": share.tolist(), "kd": kinds.tolist(), "sn": snippets,
        "nc": units[:, 0].tolist(), "nl": units[:, 1].tolist(), "td": units[:, 2].tolist(),
        "ex": facet_columns(dataset, extra_columns),
    }
    index_blob = _js("BMC_INDEX", index).encode("utf-8")
    digest.update(index_blob)
    folder.write_bytes(f"{files_dir.name}/index.js", index_blob)

    # header data
    counts = status_counts(dataset)
    reasons = top_reasons(dataset, k=8)
    provider = {**provider_identity(dataset), **{f"{k}": str(v) for k, v in
                                                  (config.provenance.get("manifest_provider") or {}).items()
                                                  if k not in ("provider", "model")}}
    tok = tokenizer_identity(dataset)
    versions = sorted({v for v in dataset.unique(schema.PROMPT_VERSION) if v})
    src = source or config.provenance.get("source") or "not recorded"
    bridged = np.asarray([s == schema.Status.BRIDGED.value for s in statuses], dtype=bool)
    norm_b = np.asarray(column_list(dataset, WORD_NORM_BEFORE), dtype=float)[bridged] if n else np.zeros(0)
    norm_a = np.asarray(column_list(dataset, WORD_NORM_AFTER), dtype=float)[bridged] if n else np.zeros(0)
    figures = ""
    if bridged.any():
        figures = (HATCH_DEFS
                   + histogram_svg(ed_before[bridged], ed_after[bridged], title="Word edit distance, bridged pairs",
                                   xlabel="Levenshtein distance in words (clipped at p99)", unit=False,
                                   keys=("eb", "ea"))
                   + histogram_svg(norm_b, norm_a, title="Normalised word edit distance, bridged pairs",
                                    xlabel="distance / longer response", unit=True)
                   + splits_svg(ed_before[bridged], ed_after[bridged]))
    else:
        figures = "<p class='muted'>No bridged rows: no edit-distance figures.</p>"

    name = config.provenance.get("repo_id") or (Path(str(src).split(" ")[0]).name if source or
                                                 config.provenance.get("source") else "")
    title = config.title or (f"BMC review: {name}" if name else "BMC review of a bridged dataset")
    meta_rows = [("source", str(src)),
                 ("editor", " · ".join(f"{k} {v}" for k, v in provider.items()) or "not recorded"),
                 ("prompt version", ", ".join(versions) or "not recorded"),
                 ("mask tokenizer", f"{tok['name']} (hash {tok['hash']})" if tok else "no diff masks"),
                 ("rows", f"{n:,}"),
                 # the same three sentences as the run summary and the dataset card
                 ("what the editor did", "; ".join(editor_statistics_lines(editor_statistics(dataset))))]
    if weight_info:
        meta_rows.append(("λ preview", weight_info))
    count_html = "".join(
        f'<button type="button" class="stat st-{html.escape(s)}" data-status="{html.escape(s)}">'
        f'<span class="num">{c:,}</span><span class="lbl">{html.escape(s)}</span>'
        f'<span class="pct">{(100 * c / n if n else 0):.1f}%</span></button>'
        for s, c in counts.items())
    reason_html = "".join(
        f"<h3>Why rows are {html.escape(status)}</h3><ol class='reasons'>" + "".join(
            f"<li><span class='rc'>{c:,}</span> {html.escape(r)}</li>" for r, c in items) + "</ol>"
        for status, items in reasons.items()) or "<p class='muted'>No filtered or failed rows.</p>"
    page_meta = {"diffNote": diff_note, "files": files_dir.name, "delta": config.delta if weights else None,
                 "fp": fingerprint, "ids": schema.ID in dataset.column_names}
    body_hash = digest.hexdigest()[:16]
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    if out.is_file():  # same content as the report already there: keep its date, so a re-push is a no-op
        old = out.read_text(encoding="utf-8", errors="replace")
        m_hash = re.search(r'<meta name="bmc-report-digest" content="([0-9a-f]+)"', old)
        m_date = re.search(r'<meta name="bmc-report-date" content="([0-9-]+)"', old)
        if m_hash and m_date and m_hash.group(1) == body_hash:
            date = m_date.group(1)
    meta_rows.insert(4, ("report built", date))

    page = _asset("report.html.tmpl")
    replacements = {
        "@TITLE@": html.escape(title), "@DIGEST@": body_hash, "@DATE@": date, "@CSS@": _asset("report.css"),
        "@JS@": _asset("report.js"), "@META@": _dl(meta_rows), "@COUNTS@": count_html, "@REASONS@": reason_html,
        "@FIGURES@": figures, "@DIFFNOTE@": html.escape(diff_note), "@CONFIG@": _inline_json(page_meta),
        "@FILES@": html.escape(files_dir.name), "@N@": f"{n:,}", "@FP@": fingerprint,
    }
    page = re.sub("|".join(re.escape(k) for k in replacements), lambda m: replacements[m.group(0)], page)
    folder.write_text(out.name, page)
    logger.info("wrote %s (%d rows, %d chunk(s), %.1f MB of row data)", out, n, n_chunks, sum(chunk_bytes) / 1e6)


