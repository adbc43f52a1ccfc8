"""`python -m bmc_data.report SOURCE --out report.html` — a review page for a bridged dataset.

    python -m bmc_data.report bmc-publish/ultrafeedback-bmc --out report.html
    python -m bmc_data.report out/bridged.parquet --out report.html --tokenizer Qwen/Qwen2.5-7B-Instruct
    python -m bmc_data.report my-org/ultrafeedback-bmc --out report.html          # a Hub repo, via load_bridged

SOURCE is a `save_bridged` folder (every config and split), a `python -m bmc_data bridge` output folder
(bridged.parquet), a parquet / jsonl file, or a Hub dataset repo id. The page opens straight from disk (no server,
no network): `report.html` holds the header, counts, reasons and histograms; `report_files/` beside it holds the
row index and the rows in chunks (`<script>` files that call a global registration function, so they load under
`file://`). `bmc_data.render_report(dataset, path)` is the Python face; `python -m bmc_data.publish` writes the
report into the dataset folder. What is highlighted is decided in `bmc_data.report_data`.

Exit codes: 0 ok, 2 usage error, 1 failure (one `error: ...` line).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import html
import json
import logging
import re
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from . import schema
from .report_data import chosen_share, masked_side, token_sides, texts_of, word_diff_sides

logger = logging.getLogger("bmc_data.report")

__all__ = ["ReportConfig", "load_report_source", "render_report", "main"]

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


# --- loading ------------------------------------------------------------------------------------------------
def load_report_source(source: str | Path) -> tuple[datasets.Dataset, dict[str, Any]]:
    """(all rows, provenance) of a bridged folder, parquet/jsonl file or Hub repo id."""
    from .card import CONFIGS
    from .hub import MANIFEST, load_bridged

    path = Path(source).expanduser()
    prov: dict[str, Any] = {"source": str(source)}
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path)), prov
        if suffix in (".jsonl", ".json"):
            return datasets.Dataset.from_json(str(path)), prov
        raise ValueError(f"{path}: expected a .parquet or .jsonl file, a bridged folder or a Hub repo id")
    if path.is_dir():
        manifest_path = path / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            prov.update({"source": manifest.get("source") or str(source), "repo_id": manifest.get("repo_id"),
                         "manifest_provider": manifest.get("provider") or {}})
            parts = []
            for config, splits in (manifest.get("configs") or {}).items():
                for split, info in splits.items():
                    if info.get("rows"):
                        parts.append(datasets.Dataset.from_parquet([str(path / f) for f in info["files"]]))
            if not parts:
                raise ValueError(f"{path}: the manifest lists no rows")
            return datasets.concatenate_datasets(parts), prov
        for name in ("bridged.parquet", "bridged.jsonl"):
            if (path / name).is_file():
                return load_report_source(path / name)[0], prov
        if (path / "data").is_dir():  # a save_bridged folder without a manifest
            source = path
        else:
            raise ValueError(f"{path}: no bmc_manifest.json, bridged.parquet or data/ folder in it")
    looks_local = path.is_absolute() or str(source).startswith(".") or path.suffix or str(source).count("/") != 1
    if not path.exists() and looks_local:
        raise FileNotFoundError(f"{source}: no such file or folder (and not a Hub repo id like org/name)")
    # a Hub repo (or manifest-less folder): every config, every split that exists
    parts = []
    for config in CONFIGS:
        for split in ("train", "test"):
            try:
                parts.append(load_bridged(source, split=split, config=config))
            except (ValueError, FileNotFoundError) as err:
                logger.debug("no %s/%s in %s: %s", config, split, source, err)
    if not parts:
        raise ValueError(f"{source}: no bridged rows found (tried configs {list(CONFIGS)}, splits train/test)")
    return datasets.concatenate_datasets(parts), prov


# --- tokenizer for the masks --------------------------------------------------------------------------------
def _mask_tokenizer(dataset: datasets.Dataset, tokenizer: Any) -> tuple[Any, str]:
    """(tokenizer or None, a sentence for the page about the diff level)."""
    if not all(c in dataset.column_names for c in schema.MASK_COLUMNS):
        return None, "This dataset has no diff masks: the diffs below are word-level (aligned words that differ)."
    from .tokenization import tokenizer_fingerprint, tokenizer_name

    names = sorted({n for n in dataset.unique(schema.MASK_TOKENIZER) if n})
    hashes = sorted({h for h in dataset.unique(schema.MASK_TOKENIZER_HASH) if h})
    if tokenizer is None:
        if len(names) != 1:
            return None, (f"The diff masks name {len(names)} tokenizers ({', '.join(names) or 'none'}): "
                          "the diffs below are word-level.")
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(names[0])
        except Exception as err:  # offline, gated, deleted: say so and fall back
            return None, (f"The recorded mask tokenizer {names[0]!r} could not be loaded ({type(err).__name__}); "
                          "the diffs below are word-level. Pass --tokenizer to show the masked tokens.")
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint not in hashes:
        return None, (f"The tokenizer {tokenizer_name(tokenizer)!r} (hash {fingerprint}) is not the one the masks "
                      f"were built with ({', '.join(hashes)}): the diffs below are word-level.")
    return tokenizer, (f"Highlighted tokens are exactly the stored chosen_diff_mask / rejected_diff_mask, decoded "
                       f"with {tokenizer_name(tokenizer)} (hash {fingerprint}): the tokens BMC weights.")


# --- rows -> records ----------------------------------------------------------------------------------------
def _records(batch: Mapping[str, list[Any]], tokenizer: Any) -> list[dict[str, Any]]:
    n = len(batch[schema.PROMPT])
    sides = token_sides(tokenizer, batch[schema.PROMPT], batch[schema.CHOSEN], batch[schema.REJECTED]) \
        if tokenizer is not None else [None] * n
    out = []
    for i in range(n):
        prompt = batch[schema.PROMPT][i]
        chosen, rejected = texts_of(batch[schema.CHOSEN][i]), texts_of(batch[schema.REJECTED][i])
        original = texts_of(batch[schema.ORIGINAL_CHOSEN][i])
        rec: dict[str, Any] = {
            "p": prompt if isinstance(prompt, str) else [dict(m) for m in prompt],
            "l": rejected,
            "c": chosen,
        }
        if original != chosen:
            rec["o"] = original
        for column, key in ((schema.ID, "id"), (schema.PROMPT_VERSION, "v"), (schema.PROVIDER, "pv"),
                            (schema.MODEL, "mo"), (schema.REASON, "why"), (schema.ANSWER, "a")):
            value = batch.get(column, [None] * n)[i]
            if value not in (None, ""):
                rec[key] = str(value)
        note = None
        if sides[i] is not None:
            c_side, r_side = sides[i]
            c_mask, r_mask = batch[schema.CHOSEN_DIFF_MASK][i], batch[schema.REJECTED_DIFF_MASK][i]
            if c_mask is None or r_mask is None:
                note = "this row has no masks"
            elif len(c_mask) != len(c_side[1]) or len(r_mask) != len(r_side[1]):
                note = (f"its masks have {len(c_mask)}/{len(r_mask)} entries but the tokenizer gives "
                        f"{len(c_side[1])}/{len(r_side[1])} chosen/rejected tokens")
            else:
                rec["cd"], rec["rd"], rec["k"] = masked_side(c_side, c_mask), masked_side(r_side, r_mask), "token"
        if "k" not in rec:
            rec["cd"], rec["rd"] = word_diff_sides(chosen, rejected)
            rec["k"] = "word"
            if note:
                rec["kn"] = f"word-level: {note}"
        for key, text in (("cd", chosen), ("rd", rejected)):  # the text is usually the response itself
            if rec[key]["t"] == text:
                del rec[key]["t"]
            elif text and text in rec[key]["t"]:
                full = rec[key].pop("t")
                at = full.index(text)
                if at:
                    rec[key]["a"] = full[:at]
                if full[at + len(text):]:
                    rec[key]["z"] = full[at + len(text):]
        out.append(rec)
    return out


def _col(dataset: datasets.Dataset, name: str) -> list[Any]:
    """A whole column as a list in one Arrow conversion (iterating `dataset[name]` formats row by row)."""
    return dataset[name][:] if len(dataset) else []


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in prompt or [])


def _js(name: str, *args: Any) -> str:
    """A script file that calls the global `name(*args)`: how data reach the page under file:// (no fetch)."""
    # ensure_ascii=False keeps the files small; U+2028/2029 are valid in JS string literals since ES2019
    body = ",".join(json.dumps(a, ensure_ascii=False, separators=(",", ":")) for a in args)
    return f"{name}({body});\n"


# --- figures (inline SVG, drawn here so the page needs no chart library) -------------------------------------
def _histogram_svg(before: np.ndarray, after: np.ndarray, *, title: str, xlabel: str, unit: bool) -> str:
    W, H, L, R, T, B = 460, 240, 48, 12, 44, 40
    values = np.concatenate([before, after]) if len(before) else np.zeros(1)
    hi = 1.0 if unit else float(max(1.0, np.quantile(values, 0.99)))
    bins = 30
    edges = np.linspace(0.0, hi, bins + 1)
    hb = np.histogram(np.clip(before, 0, hi), bins=edges)[0]
    ha = np.histogram(np.clip(after, 0, hi), bins=edges)[0]
    top = max(1, int(max(hb.max(initial=0), ha.max(initial=0))))
    pw, ph = W - L - R, H - T - B
    bw = pw / bins

    def y(v: float) -> float:
        return T + ph - ph * v / top

    parts = [f'<svg class="hist" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}">',
             f'<title>{html.escape(title)}</title>',
             '<defs><pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse" '
             'patternTransform="rotate(45)"><rect width="4" height="4" class="hb"/>'
             '<line x1="0" y1="0" x2="0" y2="4" class="hl"/></pattern></defs>',
             f'<text x="{L}" y="16" class="ct">{html.escape(title)}</text>']
    for k in range(bins):
        x = L + k * bw
        for v, cls, dx in ((hb[k], "before", 0.0), (ha[k], "after", bw / 2)):
            if v:
                parts.append(f'<rect class="{cls}" x="{x + dx:.1f}" y="{y(v):.1f}" width="{bw / 2 - 0.5:.1f}" '
                             f'height="{T + ph - y(v):.1f}"><title>{cls}: {int(v)} pairs in '
                             f'[{edges[k]:.3g}, {edges[k + 1]:.3g})</title></rect>')
    parts.append(f'<line class="ax" x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}"/>')
    parts.append(f'<line class="ax" x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}"/>')
    for frac in (0, 0.5, 1):
        xv = hi * frac
        label = f"{xv:.2g}" if unit else f"{xv:.0f}" + ("+" if frac == 1 else "")
        parts.append(f'<text class="tk" x="{L + pw * frac:.1f}" y="{T + ph + 14}" text-anchor="middle">{label}</text>')
    parts.append(f'<text class="tk" x="{L - 6}" y="{T + 4}" text-anchor="end">{top}</text>')
    parts.append(f'<text class="tk" x="{L - 6}" y="{T + ph}" text-anchor="end">0</text>')
    parts.append(f'<text class="tk" x="{L + pw / 2}" y="{H - 6}" text-anchor="middle">{html.escape(xlabel)}</text>')
    legend = [("before", f"before: y_w vs y_l (median {np.median(before) if len(before) else 0:.3g})"),
              ("after", f"after: ỹ_w vs y_l (median {np.median(after) if len(after) else 0:.3g})")]
    for j, (cls, text) in enumerate(legend):
        x0 = L + j * pw / 2
        parts.append(f'<rect class="{cls}" x="{x0:.1f}" y="24" width="10" height="10"/>'
                     f'<text class="tk" x="{x0 + 14:.1f}" y="33">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _splits_svg(before: np.ndarray, after: np.ndarray, n: int = 6) -> str:
    """Paper Fig. 5: mean distance before/after in n equal-size splits by increasing distance before."""
    if len(before) < n:
        return ""
    order = np.argsort(before, kind="stable")
    parts_idx = np.array_split(order, n)
    mb = [float(before[p].mean()) for p in parts_idx]
    ma = [float(after[p].mean()) for p in parts_idx]
    W, H, L, R, T, B = 460, 240, 48, 12, 44, 40
    pw, ph = W - L - R, H - T - B
    top = max(max(mb), max(ma), 1e-9)
    gw = pw / n
    title = f"{n} equal-size splits by edit distance before (paper Fig. 5)"
    out = [f'<svg class="hist" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{L}" y="16" class="ct">{html.escape(title)}</text>']
    for k in range(n):
        for v, cls, dx in ((mb[k], "before", 0.15), (ma[k], "after", 0.5)):
            h = ph * v / top
            out.append(f'<rect class="{cls}" x="{L + gw * (k + dx):.1f}" y="{T + ph - h:.1f}" width="{gw * 0.35:.1f}" '
                       f'height="{h:.1f}"><title>split {k + 1} {cls}: mean {v:.3g}</title></rect>')
        out.append(f'<text class="tk" x="{L + gw * (k + 0.5):.1f}" y="{T + ph + 14}" '
                   f'text-anchor="middle">{k + 1}</text>')
    out.append(f'<line class="ax" x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}"/>')
    out.append(f'<text class="tk" x="{L - 6}" y="{T + 4}" text-anchor="end">{top:.3g}</text>')
    for j, (cls, text) in enumerate((("before", "before: y_w vs y_l"), ("after", "after: ỹ_w vs y_l"))):
        x0 = L + j * pw / 2
        out.append(f'<rect class="{cls}" x="{x0:.1f}" y="24" width="10" height="10"/>'
                   f'<text class="tk" x="{x0 + 14:.1f}" y="33">{text}</text>')
    out.append(f'<text class="tk" x="{L + pw / 2}" y="{H - 6}" text-anchor="middle">split 1 (most similar y_w, y_l) '
               f'… {n}; bars: mean word edit distance</text></svg>')
    return "".join(out)


# --- the page -----------------------------------------------------------------------------------------------
def _asset(name: str) -> str:
    return resources.files("bmc_data.resources").joinpath(name).read_text(encoding="utf-8")


def _inline_json(payload: Any) -> str:
    # inside <script>: no "</script>" or "<!--" can appear once "<" is escaped
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _dl(items: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items if v)


def render_report(
    dataset: datasets.Dataset | datasets.DatasetDict,
    path: str | Path,
    *,
    tokenizer: Any = None,
    config: ReportConfig | None = None,
    source: str | None = None,
    progress: bool = False,
) -> Path:
    """Write the review page of a bridged dataset to `path` (an .html file) and its data to `<stem>_files/`.

    Args:
        dataset: a bridged dataset (all statuses), or a DatasetDict whose splits are shown together.
        path: the HTML file to write. `<stem>_files/` beside it is replaced.
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
        raise ValueError(f"render_report: the dataset is missing column(s) {missing}; a bridged dataset has "
                         f"{list(schema.BRIDGED_COLUMNS)} (it has {dataset.column_names})")
    from .hub import provider_identity, status_counts, tokenizer_identity, top_reasons
    from .stats import (WORD_DISTANCE_AFTER, WORD_DISTANCE_BEFORE, WORD_NORM_AFTER, WORD_NORM_BEFORE,
                        add_edit_distance_stats)

    out = Path(path)
    files_dir = out.with_name(out.stem + "_files")
    tokenizer, diff_note = _mask_tokenizer(dataset, tokenizer)
    if WORD_DISTANCE_BEFORE not in dataset.column_names or WORD_DISTANCE_AFTER not in dataset.column_names:
        dataset = add_edit_distance_stats(dataset)

    n = len(dataset)
    statuses = _col(dataset, schema.STATUS)
    status_list = STATUS_NAMES + sorted({s for s in statuses if s not in STATUS_NAMES})
    groups = [schema.reason_group(r or "") for r in _col(dataset, schema.REASON)]
    group_counts = Counter((s, g) for s, g in zip(statuses, groups) if g)
    group_list = [[g, s, c] for (s, g), c in sorted(group_counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    group_index = {(g, s): k for k, (g, s, _) in enumerate(group_list)}
    ed_before = np.asarray(_col(dataset, WORD_DISTANCE_BEFORE), dtype=float)
    ed_after = np.asarray(_col(dataset, WORD_DISTANCE_AFTER), dtype=float)

    weights: dict[int, dict[str, list[float]]] = {}
    weight_info = None
    if config.model:
        from .report_weights import preview_weights

        weights, weight_info = preview_weights(dataset, config.model, tokenizer, delta=config.delta,
                                               rows=config.weight_rows)

    # rows -> chunk files (streamed: a 61k-row dataset never sits in memory as records)
    shutil.rmtree(files_dir, ignore_errors=True)
    files_dir.mkdir(parents=True)
    digest = hashlib.sha256()
    share = np.full(n, -1, dtype=np.int32)
    kinds = np.zeros(n, dtype=np.int8)
    snippets: list[str] = []
    columns = [c for c in (*schema.BRIDGED_COLUMNS, schema.ID, schema.ANSWER, *schema.MASK_COLUMNS[:2])
               if c in dataset.column_names]
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
        records = _records(batch, tokenizer)
        for j, rec in enumerate(records):
            i = lo + j
            s = chosen_share(rec["cd"])
            share[i] = -1 if s is None else round(1000 * s)
            kinds[i] = 1 if rec["k"] == "token" else 0
            snippets.append(" ".join(_prompt_text(rec["p"]).split())[:SNIPPET_CHARS])
            if i in weights and rec["k"] == "token":
                rec["lw"] = weights[i]
        text = _js("BMC_ROWS", k, records)
        blob = text.encode("utf-8")
        digest.update(blob)
        (files_dir / f"rows-{k:05d}.js").write_bytes(blob)
        chunk_bytes.append(len(blob))

    index = {
        "format": FORMAT, "n": n, "chunk": config.chunk_rows, "chunks": n_chunks, "page": config.page_rows,
        "statuses": status_list, "groups": group_list,
        "st": [status_list.index(s) for s in statuses],
        "gr": [group_index.get((g, s), -1) if g else -1 for s, g in zip(statuses, groups)],
        "eb": [int(v) for v in ed_before], "ea": [int(v) for v in ed_after],
        "sh": share.tolist(), "kd": kinds.tolist(), "sn": snippets,
    }
    index_blob = _js("BMC_INDEX", index).encode("utf-8")
    digest.update(index_blob)
    (files_dir / "index.js").write_bytes(index_blob)

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
    norm_b = np.asarray(_col(dataset, WORD_NORM_BEFORE), dtype=float)[bridged] if n else np.zeros(0)
    norm_a = np.asarray(_col(dataset, WORD_NORM_AFTER), dtype=float)[bridged] if n else np.zeros(0)
    figures = ""
    if bridged.any():
        figures = (_histogram_svg(ed_before[bridged], ed_after[bridged], title="Word edit distance, bridged pairs",
                                  xlabel="Levenshtein distance in words (clipped at p99)", unit=False)
                   + _histogram_svg(norm_b, norm_a, title="Normalised word edit distance, bridged pairs",
                                    xlabel="distance / longer response", unit=True)
                   + _splits_svg(ed_before[bridged], ed_after[bridged]))
    else:
        figures = "<p class='muted'>No bridged rows: no edit-distance figures.</p>"

    name = config.provenance.get("repo_id") or (Path(str(src).split(" ")[0]).name if source or
                                                 config.provenance.get("source") else "")
    title = config.title or (f"BMC review: {name}" if name else "BMC review of a bridged dataset")
    meta_rows = [("source", str(src)),
                 ("editor", " · ".join(f"{k} {v}" for k, v in provider.items()) or "not recorded"),
                 ("prompt version", ", ".join(versions) or "not recorded"),
                 ("mask tokenizer", f"{tok['name']} (hash {tok['hash']})" if tok else "no diff masks"),
                 ("rows", f"{n:,}")]
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
    page_meta = {"diffNote": diff_note, "files": files_dir.name, "delta": config.delta if weights else None}
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
        "@FILES@": html.escape(files_dir.name), "@N@": f"{n:,}",
    }
    page = re.sub("|".join(re.escape(k) for k in replacements), lambda m: replacements[m.group(0)], page)
    out.write_text(page, encoding="utf-8")
    logger.info("wrote %s (%d rows, %d chunk(s), %.1f MB of row data)", out, n, n_chunks, sum(chunk_bytes) / 1e6)
    return out


# --- CLI ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bmc_data.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="bridged folder, .parquet / .jsonl file, or Hub dataset repo id")
    parser.add_argument("--out", default="report.html", help="HTML file to write; its data goes to <stem>_files/ "
                        "beside it (default: %(default)s)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer the diff masks were built with (default: the one recorded in "
                             "bmc_mask_tokenizer; word-level diffs when it cannot be loaded)")
    parser.add_argument("--title", default=None, help="page title (default: from the source)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help="rows per lazily loaded data file (default: %(default)s)")
    parser.add_argument("--model", default=None,
                        help="policy model (Hub id or path) for the optional λ = 1 + min(1/π_θ, δ) preview")
    parser.add_argument("--delta", type=float, default=2.0, help="δ of the λ preview (default: %(default)s)")
    parser.add_argument("--weight-rows", type=int, default=32,
                        help="rows whose λ the preview computes (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.chunk_rows < 1 or args.weight_rows < 1 or args.delta < 0:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: --chunk-rows and --weight-rows must be >= 1 and --delta >= 0", file=sys.stderr)
        return 2
    if args.quiet:
        datasets.disable_progress_bars()
    try:
        dataset, prov = load_report_source(args.source)
        tokenizer = None
        if args.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        config = ReportConfig(chunk_rows=args.chunk_rows, title=args.title, model=args.model, delta=args.delta,
                              weight_rows=args.weight_rows, provenance=prov)
        out = render_report(dataset, args.out, tokenizer=tokenizer, config=config, progress=not args.quiet)
    except Exception as err:  # one clear line; --quiet off and logging at DEBUG shows the traceback
        logger.debug("report failed", exc_info=True)
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {out.with_name(out.stem + '_files')}/ ({len(dataset):,} rows); open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
