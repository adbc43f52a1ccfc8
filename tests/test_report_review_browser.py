"""The review page as a curation tool, in headless Chromium under file:// (see tests/test_report_browser.py):
exact highlights for every kind of character, a keyboard-only review whose decisions go through apply_review and
`bmc_train --review`, no sideways scrolling from 320 px, and axe-core with no serious or critical violation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import compress
from pathlib import Path

import datasets
import pytest
from report_fixtures import UNICODE_CASES, unicode_dataset
from test_hub import tiny_tokenizer
from test_report_browser import CHROMIUM, browser  # noqa: F401  (the shared Chromium fixture)

from bmc_data.pairs import schema
from bmc_data.pairs.review import (
    REVIEW_DECISION,
    REVIEW_NOTE,
    apply_review,
    review_fingerprint,
)
from bmc_data.report import ReportConfig, render_report
from bmc_data.report.records import _WORD
from bmc_data.tokens.diff import token_diff_masks
from bmc_data.tokens.tokenization import tokenize_pairs_batched

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
REPO = Path(__file__).resolve().parents[1]


def open_page(browser, path: Path, width: int = 1280, height: int = 900, **context):  # noqa: F811
    ctx = browser.new_context(viewport={"width": width, "height": height}, **context)
    page = ctx.new_page()
    page.problems = []
    page.on("pageerror", lambda err: page.problems.append(f"page error: {err}"))
    page.on("console", lambda msg: msg.type == "error" and page.problems.append(f"console: {msg.text}"))
    page.on("request", lambda req: req.url.startswith(("file://", "blob:")) or page.problems.append(req.url))
    page.goto(path.as_uri())
    page.wait_for_selector("html[data-ready='1']", timeout=10_000)
    return ctx, page


def open_row(page, i: int) -> None:
    page.evaluate(f"location.hash = 'row={i}'")
    page.wait_for_selector(f"#detail[data-row='{i}'] .cols", timeout=10_000)


def tokens_shown(page, side: str) -> list[str]:
    return page.eval_on_selector_all(f"#detail .{side} .tok", "ts => ts.map(t => t.textContent)")


def clipped(text: str, spans, mask) -> list[str]:
    """The marked spans' text, in code points, overlapping byte-level pieces clipped as the page's spans are."""
    out, end = [], 0
    for s, e in compress(spans, mask):
        s = max(s, end)
        e = max(e, s)
        out.append(text[s:e])
        end = e
    return out


def test_highlighted_text_equals_the_masked_tokens_for_every_kind_of_character(browser, tmp_path):  # noqa: F811
    tok = tiny_tokenizer()
    data = unicode_dataset(tok)
    page_path = render_report(data, tmp_path / "u.html", tokenizer=tok)
    sides = tokenize_pairs_batched(tok, data[schema.PROMPT], data[schema.CHOSEN], data[schema.REJECTED],
                                   return_offsets=True)
    words = render_report(unicode_dataset(masks=False), tmp_path / "w.html")
    ctx, page = open_page(browser, page_path)
    for i, (name, chosen, rejected) in enumerate(UNICODE_CASES):
        open_row(page, i)
        for side, css, mask in (("chosen", "cho", schema.CHOSEN_DIFF_MASK), ("rejected", "rej", schema.REJECTED_DIFF_MASK)):
            expected = clipped(sides[i][f"{side}_text"], sides[i][f"{side}_offsets"], data[i][mask])
            assert any(expected), name
            assert tokens_shown(page, css) == expected, (name, side)
            # the whole text, CR, tabs and all
            assert page.eval_on_selector(f"#detail .{css} pre", "e => e.textContent") == sides[i][f"{side}_text"]
    assert page.problems == []
    ctx.close()
    ctx, page = open_page(browser, words)  # word level, and the ỹ_w against y_w view
    for i, (name, chosen, rejected) in enumerate(UNICODE_CASES):
        open_row(page, i)
        c_words = [(m.start(), m.end()) for m in _WORD.finditer(chosen)]
        r_words = [(m.start(), m.end()) for m in _WORD.finditer(rejected)]
        c_mark, r_mark = token_diff_masks([chosen[s:e] for s, e in c_words], [rejected[s:e] for s, e in r_words])
        assert tokens_shown(page, "cho") == [chosen[s:e] for s, e in compress(c_words, c_mark)], name
        assert tokens_shown(page, "rej") == [rejected[s:e] for s, e in compress(r_words, r_mark)], name
        page.keyboard.press("v")
        page.wait_for_selector("#detail .tab[data-view='w'][aria-pressed='true']")
        original = data[i][schema.ORIGINAL_CHOSEN]
        o_words = [(m.start(), m.end()) for m in _WORD.finditer(original)]
        c_mark, o_mark = token_diff_masks([chosen[s:e] for s, e in c_words], [original[s:e] for s, e in o_words])
        assert tokens_shown(page, "cho") == [chosen[s:e] for s, e in compress(c_words, c_mark)], name
        assert tokens_shown(page, "rej") == [original[s:e] for s, e in compress(o_words, o_mark)], name
        page.keyboard.press("v")
    assert page.problems == []
    ctx.close()


@pytest.fixture(scope="module")
def review_data(tmp_path_factory):
    from bmc_train.testing import qa_bridged_rows, read_qa_rows

    qa = REPO.parent / "shared" / "data" / "qa" / "ecqa-train.jsonl"
    if not qa.exists():
        pytest.skip("../shared/data is not available")
    rows = qa_bridged_rows(read_qa_rows(qa, limit=24), filtered_every=6)
    for i, row in enumerate(rows):
        row.update({schema.ID: f"ecqa-{i}", schema.PROMPT_VERSION: "qa-v1", schema.PROVIDER: "test",
                    schema.MODEL: "m", "task": "qa" if i % 2 else "math"})
    folder = tmp_path_factory.mktemp("review")
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = datasets.Dataset.from_json(str(path))
    return path, data, render_report(data, folder / "report.html", config=ReportConfig(page_rows=8))


def test_keyboard_only_review_flows_into_apply_review_and_training(browser, review_data, tmp_path):  # noqa: F811
    path, data, report = review_data
    ctx, page = open_page(browser, report, accept_downloads=True)
    page.keyboard.press("Tab")  # the list is reached by Tab and is ONE Tab stop
    for _ in range(40):
        if page.evaluate("document.activeElement.closest('#rows tbody') !== null"):
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.querySelectorAll('#rows tbody tr[tabindex=\"0\"]').length") == 1
    page.keyboard.press("End")  # the last row of the list, paging to it; Home back to the first
    assert page.evaluate("document.activeElement.dataset.row") == str(len(data) - 1)
    assert "page 3 of 3" in page.inner_text("#pageinfo")
    page.keyboard.press("Home")
    assert page.evaluate("document.activeElement.dataset.row") == "0"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("Enter")  # opens row 0; the selection is exposed and announced, the detail is not live
    page.wait_for_selector("#detail[data-row='0'] .cols")
    assert page.get_attribute("#r-0", "aria-selected") == "true"
    assert page.inner_text("#announce") == "row 0 opened"
    assert page.get_attribute("#detail", "aria-live") is None
    plan = ["a", "x", "f", "a", "a", "x", "a", "f", "a", "x"]  # rows 0..9; the list pages after row 7
    for k, key in enumerate(plan):
        if k:
            page.keyboard.press("j")
            page.wait_for_selector(f"#detail[data-row='{k}'] .cols")
        page.keyboard.press(key)
        if k == 2:  # a note on the flagged row: m, type, Enter back to the list
            page.keyboard.press("m")
            page.keyboard.type("answer is right, wording odd")
            page.keyboard.press("Enter")
    page.keyboard.press("n")  # next change: the first marked token gets the focus mark
    assert page.locator("#detail .tok.cur").count() == 1
    assert page.inner_text("#reviewed") == f"reviewed 10/{len(data)}"
    assert "page 2 of 3" in page.inner_text("#pageinfo")
    with page.expect_download() as info:
        page.keyboard.press("s")
    exported = tmp_path / "decisions.jsonl"
    info.value.save_as(exported)
    lines = [json.loads(x) for x in exported.read_text().splitlines()]
    assert [x["row"] for x in lines] == list(range(10))
    assert [x["decision"] for x in lines] == [{"a": "keep", "x": "drop", "f": "flag"}[k] for k in plan]
    assert lines[2]["note"] == "answer is right, wording odd"
    assert all(x["id"] == f"ecqa-{x['row']}" and x["dataset"] == review_fingerprint(data) for x in lines)
    # decisions survive a reload (localStorage under the fingerprint)
    page.reload()
    page.wait_for_selector("html[data-ready='1']")
    assert page.inner_text("#reviewed") == f"reviewed 10/{len(data)}"
    assert page.problems == []
    ctx.close()
    ctx, page = open_page(browser, report)  # another browser: empty storage, then the file imported
    assert page.inner_text("#reviewed") == f"reviewed 0/{len(data)}"
    page.set_input_files("#import-dec", str(exported))
    page.wait_for_function(f"() => document.getElementById('reviewed').textContent === 'reviewed 10/{len(data)}'")
    assert page.inner_text("#rows tbody tr:nth-child(2) td:nth-child(3)") == "drop"
    assert page.problems == []
    ctx.close()

    reviewed, review = apply_review(data, exported, return_review=True)
    assert len(reviewed) == len(data) - 3 and review.dropped == 3 and review.reviewed == 10
    assert reviewed[REVIEW_DECISION][:8] == ["keep", "flag", "keep", "keep", "keep", "flag", "keep", ""]
    assert reviewed[REVIEW_NOTE][1] == "answer is right, wording odd"
    assert "ecqa-1" not in reviewed[schema.ID] and "ecqa-2" in reviewed[schema.ID]

    from bmc_train.testing import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", [r[schema.PROMPT] + "\n" + r[schema.CHOSEN] for r in data])
    cmd = [sys.executable, "-m", "bmc_train", "--model_name_or_path", str(model), "--dataset_name", str(path),
           "--review", str(exported), "--output_dir", str(tmp_path / "run"), "--max_steps", "1",
           "--per_device_train_batch_size", "2", "--bf16", "false", "--dtype", "float32", "--report_to", "none",
           "--gradient_checkpointing", "false", "--max_length", "128", "--disable_tqdm", "true",
           "--save_strategy", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bridged = sum(1 for s in data[schema.STATUS] if s == "bridged")
    dropped_bridged = sum(1 for x in lines if x["decision"] == "drop" and data[x["row"]][schema.STATUS] == "bridged")
    assert "10 of 24 rows reviewed" in proc.stderr and "3 dropped" in proc.stderr
    assert f"kept {bridged - dropped_bridged} of {len(data) - 3} train rows" in proc.stderr


@pytest.mark.parametrize("width", [320, 390, 1280])
def test_no_sideways_scrolling_and_the_opened_row_is_in_view(browser, review_data, width):  # noqa: F811
    _, _, report = review_data
    ctx, page = open_page(browser, report, width=width, height=800)
    page.click("#more summary")  # the range and column filters open too
    page.click("#rows tbody tr:nth-child(3)")
    page.wait_for_selector("#detail[data-row='2'] .cols")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{width}px: the page scrolls sideways by {overflow}px"
    top = page.evaluate("document.getElementById('detail').getBoundingClientRect().top")
    assert -2 <= top < 800, f"{width}px: the opened row starts at {top}px"
    assert page.problems == []
    ctx.close()


CONTRAST_JS = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).slice(0, 3).map(Number);
  const lum = (c) => { const v = rgb(c).map((x) => { x /= 255; return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const out = [];
  const check = (sel, prop) => document.querySelectorAll(sel).forEach((e, k) => { if (k < 3)
    out.push([sel + ' ' + prop, ratio(getComputedStyle(e)[prop], 'rgb(255, 255, 255)')]); });
  check('.chip', 'borderTopColor'); check('.controls select', 'borderTopColor'); check('.controls input', 'borderTopColor');
  check('.review .mark', 'borderTopColor'); check('#note', 'borderTopColor'); check('.tab', 'borderTopColor');
  check('.review-bar button', 'borderTopColor'); check('svg.hist rect.after', 'fill'); check('svg.hist rect.before', 'stroke');
  check('ins.tok', 'textDecorationColor'); check('del.tok', 'textDecorationColor'); check('.badge', 'borderTopColor');
  return out;
}"""


def test_axe_finds_no_serious_or_critical_violation(browser, review_data):  # noqa: F811
    from axe_playwright_python.sync_playwright import Axe

    _, _, report = review_data
    ctx, page = open_page(browser, report)
    open_row(page, 1)
    page.keyboard.press("x")
    page.click("#more summary")
    results = Axe().run(page)
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]]) for v in results.response["violations"]
           if v["impact"] in ("serious", "critical")]
    assert bad == []
    ids = page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids))
    # WCAG 1.4.11, which axe does not check: every non-text mark at least 3:1 against white
    marks = page.evaluate(CONTRAST_JS)
    assert marks and all(ratio >= 3 for _, ratio in marks), [m for m in marks if m[1] < 3]
    ctx.close()


def test_url_keeps_the_view_and_filters_narrow_the_list(browser, review_data):  # noqa: F811
    _, data, report = review_data
    ctx, page = open_page(browser, report, accept_downloads=True)
    page.select_option("#sort", "td")
    page.click("#status-chips .chip[data-status='bridged']")
    page.fill("#q", "answer")
    page.select_option("#qfield", "c")
    page.wait_for_function("() => document.getElementById('count').textContent.includes('matching') && "
                           "!document.getElementById('count').textContent.includes('searching')")
    page.click("#rows tbody tr:nth-child(2)")
    page.wait_for_selector("#detail[data-row] .cols")
    shared = page.url
    shown = page.eval_on_selector_all("#rows tbody tr", "trs => trs.map(t => t.dataset.row)")
    opened = page.get_attribute("#detail", "data-row")
    assert page.locator("#detail mark.hit").count() > 0  # search matches highlighted in the open row
    ctx.close()
    ctx, page = open_page(browser, Path(shared.split("#")[0].replace("file://", "")), accept_downloads=True)
    page.goto(shared)
    page.wait_for_selector(f"#detail[data-row='{opened}'] .cols")
    page.wait_for_function("() => !document.getElementById('count').textContent.includes('searching')")
    assert page.eval_on_selector_all("#rows tbody tr", "trs => trs.map(t => t.dataset.row)") == shown
    assert page.get_attribute("#rows th[data-key='td']", "aria-sort") == "descending"
    # an extra column (task) filters, a range filters, out-of-range permalinks select nothing
    page.click("#more summary")
    page.select_option("#x-0", index=1)
    rows = [int(r) for r in page.eval_on_selector_all("#rows tbody tr", "trs => trs.map(t => t.dataset.row)")]
    task = page.eval_on_selector("#x-0", "s => s.options[s.selectedIndex].text")
    assert rows and all(data[i]["task"] == task for i in rows)
    selected = int(page.get_attribute("#count", "data-count"))  # every page of the selection, not just this one
    with page.expect_download() as ids_file:
        page.click("#export-ids")
    exported_ids = Path(ids_file.value.path()).read_text().split()
    with page.expect_download() as rows_file:
        page.click("#export-rows")
    exported_rows = [json.loads(x) for x in Path(rows_file.value.path()).read_text().splitlines()]
    assert len(exported_ids) == selected == len(exported_rows) >= len(rows)
    assert [r[schema.ID] for r in exported_rows] == exported_ids and all(r["task"] == task for r in exported_rows)
    page.evaluate("location.hash = 'sort=rnd&seed=7'")  # a random sample order for spot checks, shared by its seed
    page.wait_for_function("() => document.getElementById('count').textContent.includes('seed 7')")
    sample = page.eval_on_selector_all("#rows tbody tr", "trs => trs.map(t => +t.dataset.row)")
    assert sample != sorted(sample) and len(sample) == 8
    page.evaluate("location.hash = 'sort=rnd&seed=8'")
    page.wait_for_function("() => document.getElementById('count').textContent.includes('seed 8')")
    page.evaluate("location.hash = 'sort=rnd&seed=7'")
    page.wait_for_function("() => document.getElementById('count').textContent.includes('seed 7')")
    assert page.eval_on_selector_all("#rows tbody tr", "trs => trs.map(t => +t.dataset.row)") == sample
    page.evaluate("location.hash = 'row=999'")
    page.wait_for_selector("#detail p.warn")
    assert page.locator("#rows tbody tr[aria-selected='true']").count() == 0
    assert page.problems == []
    ctx.close()
