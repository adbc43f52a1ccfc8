"""The review page in a real browser: headless Chromium (Debian package `chromium`) driven by Playwright's Python
package, opening the page from file:// with no server. Skipped only when no Chromium binary is installed;
`.ci/run` and `make install` install it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from report_fixtures import INJECTION, UNICODE, report_dataset
from test_hub import tiny_tokenizer

from bmc_data.pairs import schema
from bmc_data.report import ReportConfig, render_report

PAGE_ROWS = 10


def chromium_path() -> str | None:
    for candidate in (os.environ.get("BMC_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


CHROMIUM = chromium_path()
# CI installs chromium (.ci/run), so there a missing browser is a failure, not a quiet skip
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI is set but no chromium binary was found: .ci/run must install the Debian package chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


@pytest.fixture(scope="module")
def data():
    return report_dataset(40, tokenizer=tiny_tokenizer())


@pytest.fixture(scope="module")
def report(tmp_path_factory, data) -> Path:
    folder = tmp_path_factory.mktemp("report")
    return render_report(data, folder / "report.html", tokenizer=tiny_tokenizer(),
                         config=ReportConfig(chunk_rows=7, page_rows=PAGE_ROWS), source="ecqa-train.jsonl")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # chromium is here, so the browser tests must run: the dev extra brings playwright
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, report):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda err: page.problems.append(f"page error: {err}"))
    page.on("console", lambda msg: msg.type == "error" and page.problems.append(f"console: {msg.text}"))
    page.on("request", lambda req: req.url.startswith("file://") or page.problems.append(f"network: {req.url}"))
    page.goto(report.as_uri())
    page.wait_for_selector("html[data-ready='1']", timeout=10_000)
    yield page
    assert page.problems == []
    context.close()


def shown_rows(page) -> list[int]:
    return [int(v) for v in page.eval_on_selector_all("#rows tbody tr", "trs => trs.map(t => t.dataset.row)")]


def count(page) -> int:
    return int(page.get_attribute("#count", "data-count"))


def test_rows_shown_per_status(page, data):
    statuses = list(data[schema.STATUS])
    assert count(page) == len(data) and len(shown_rows(page)) == PAGE_ROWS
    for status in ("bridged", "filtered", "failed"):
        expected = [i for i, s in enumerate(statuses) if s == status]
        page.click(f"#status-chips .chip[data-status='{status}']")
        assert count(page) == len(expected)
        assert shown_rows(page) == expected[:PAGE_ROWS]
        assert set(page.eval_on_selector_all("#rows tbody .badge", "bs => bs.map(b => b.textContent)")) == {status}
    # the counts in the summary filter the list too
    page.click(".stat[data-status='filtered']")
    assert count(page) == statuses.count("filtered")


def test_filter_click_changes_the_list(page, data):
    before = shown_rows(page)
    page.click("#status-chips .chip[data-status='failed']")
    after = shown_rows(page)
    assert after != before and all(data[i][schema.STATUS] == "failed" for i in after)
    # the reason group select offers the grouped reason and keeps the failed rows
    option = page.eval_on_selector("#group", "s => [...s.options].find(o => o.value !== '-1').value")
    page.select_option("#group", option)
    assert shown_rows(page) == after
    page.click("#status-chips .chip[data-s='-1']")
    assert count(page) == len(after)  # the reason filter stays until it is cleared
    page.select_option("#group", "-1")
    page.select_option("#sort", "eb")  # sorting by edit distance before, largest first
    eds = page.eval_on_selector_all("#rows tbody tr td:nth-child(3)",
                                    "tds => tds.map(t => +t.textContent.split(' ')[0])")
    assert eds == sorted(eds, reverse=True) and len(eds) == PAGE_ROWS
    page.click("#next")
    assert "page 2 of 4" in page.inner_text("#pageinfo")


def test_search_finds_a_known_phrase(page, data):
    phrase = "brutal killing"
    expected = [i for i, row in enumerate(data) if any(
        phrase in str(row[c]).lower() for c in (schema.PROMPT, schema.CHOSEN, schema.REJECTED, schema.ORIGINAL_CHOSEN))]
    assert expected
    page.fill("#q", phrase.upper())
    page.wait_for_function("() => document.getElementById('count').textContent.includes('matching') && "
                           "!document.getElementById('count').textContent.includes('searching')", timeout=10_000)
    assert count(page) == len(expected) and shown_rows(page) == expected[:PAGE_ROWS]
    page.fill("#q", "no such phrase anywhere 1234")
    page.wait_for_function("() => document.getElementById('count').dataset.count === '0'", timeout=10_000)


def test_highlighted_tokens_of_a_row_equal_its_masks(page, data):
    for i in (0, 2, 5):  # row 2 has non-ASCII text (multi-byte characters split over byte-level tokens)
        page.evaluate(f"location.hash = 'row-{i}'")
        page.wait_for_selector(f"#detail[data-row='{i}']", timeout=10_000)
        assert page.locator("#detail .cho ins.tok").count() == sum(data[i][schema.CHOSEN_DIFF_MASK]) > 0
        assert page.locator("#detail .rej del.tok").count() == sum(data[i][schema.REJECTED_DIFF_MASK]) > 0
        # marked by more than colour: underline and strike-through
        assert "underline" in page.eval_on_selector("#detail ins.tok", "e => getComputedStyle(e).textDecorationLine")
        assert "line-through" in page.eval_on_selector("#detail del.tok", "e => getComputedStyle(e).textDecorationLine")
        if i == 2:
            assert UNICODE in page.inner_text("#detail .cho")


def test_dataset_text_is_shown_as_text_never_run(page, data):
    page.evaluate("location.hash = 'row-1'")
    page.wait_for_selector("#detail[data-row='1']", timeout=10_000)
    assert page.evaluate("window.__pwned") is None
    assert INJECTION in page.inner_text("#detail pre.prompt")
    assert page.locator("#detail img").count() == 0


def test_permalink_copy_as_json_and_screenshot(browser, report, data, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(report.as_uri() + "#row-3")  # a permalink opens the row
    page.wait_for_selector("#detail[data-row='3']", timeout=10_000)
    assert page.inner_text("#detail h2") == "Row 3"
    page.click("#detail button.copy")
    page.wait_for_function("() => document.querySelector('#detail button.copy').textContent !== 'copy as JSON'")
    assert page.inner_text("#detail button.copy") == "copied"
    copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
    # the row exactly as the dataset has it (every column but the two mask lists), not a flattened summary
    row = {k: v for k, v in data[3].items() if k not in (schema.CHOSEN_DIFF_MASK, schema.REJECTED_DIFF_MASK)}
    assert copied == {**row, schema.REASON: row[schema.REASON] or ""}
    shot = Path(os.environ.get("BMC_REPORT_SCREENSHOT") or tmp_path / "report.png")
    page.screenshot(path=str(shot), full_page=False)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    context.close()
