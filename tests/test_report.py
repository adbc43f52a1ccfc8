"""The data the review page embeds (bmc_data.report / bmc_data.report.records): highlighted spans are the masks,
the word-level fallback, chunking, escaping, determinism, the CLI and the publish hook."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import INJECTION, read_chunks, report_dataset, side_text
from test_hub import REPO, hub, tiny_tokenizer  # noqa: F401  (hub: the Hub stand-in fixture)

from bmc_data import render_report
from bmc_data.pairs import schema
from bmc_data.report import ReportConfig
from bmc_data.report.source import load_report_source
from bmc_data.report.records import (
    decode_spans,
    encode_spans,
    token_sides,
    word_diff_sides,
)
from bmc_data.tokens.tokenization import tokenize_pair

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(request, monkeypatch):
    """The recorded test tokenizer exists nowhere: fail fast instead of retrying huggingface.co (the Hub stand-in
    test needs the network stack on, and passes the data without asking for a tokenizer by name)."""
    if "hub" in request.fixturenames:
        return
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def data(tokenizer):
    return report_dataset(40, tokenizer=tokenizer)


def marked_texts(rec_side: dict, raw: str) -> list[str]:
    text = side_text(rec_side, raw)
    return [text[s:e] for s, e in decode_spans(rec_side["m"])]


def test_span_encoding_round_trips():
    spans = [(0, 3), (3, 5), (9, 9), (9, 12)]
    assert decode_spans(encode_spans(spans)) == spans
    # overlapping tokens (one character split over two byte-level tokens) keep their place with length 0
    assert decode_spans(encode_spans([(2, 4), (3, 4), (6, 7)])) == [(2, 4), (4, 4), (6, 7)]


def test_token_ids_equal_trl_tokenization_plain_and_chat(tokenizer, data):
    prompts, chosens, rejecteds = (list(data[c]) for c in (schema.PROMPT, schema.CHOSEN, schema.REJECTED))
    chat_prompts = [[{"role": "user", "content": p}] for p in prompts]
    for ps in (prompts, chat_prompts):
        sides = token_sides(tokenizer, ps, chosens, rejecteds)
        for i, (c_side, r_side) in enumerate(sides):
            ref = tokenize_pair(tokenizer, ps[i], chosens[i], rejecteds[i])
            assert c_side[1] == ref["chosen_ids"] and r_side[1] == ref["rejected_ids"], i
            assert len(c_side[2]) == len(c_side[1])


def test_highlighted_spans_are_exactly_the_masks(tmp_path, tokenizer, data):
    out = render_report(data, tmp_path / "report.html", tokenizer=tokenizer, config=ReportConfig(chunk_rows=7))
    index, rows = read_chunks(tmp_path / "report_files")
    assert len(rows) == len(data) == index["n"]
    checked = 0
    for i, rec in enumerate(rows):
        assert rec["k"] == "token", (i, rec.get("kn"))
        ref = tokenize_pair(tokenizer, data[i][schema.PROMPT], data[i][schema.CHOSEN], data[i][schema.REJECTED])
        for key, raw, mask, ids in (("cd", rec["c"], data[i][schema.CHOSEN_DIFF_MASK], ref["chosen_ids"]),
                                    ("rd", rec["l"], data[i][schema.REJECTED_DIFF_MASK], ref["rejected_ids"])):
            side = rec[key]
            assert side["n"] == len(mask) == len(ids)
            texts = marked_texts(side, raw)
            assert len(texts) == sum(mask), (i, key)
            # each highlighted span is the text of the masked token, in order
            decoded = [tokenizer.decode([t]) for t, m in zip(ids, mask) if m]
            for span, token in zip(texts, decoded):
                if "\ufffd" not in token:  # a byte-level piece of a multi-byte character has no text of its own
                    assert span == token, (i, key, span, token)
                    checked += 1
            # the displayed text is the completion the trainer sees: the response plus the EOS it appends
            assert side_text(side, raw) == raw + tokenizer.eos_token
    assert checked > 500
    assert "word-level" not in out.read_text().split("<main>")[1].split("</p>")[0]


def test_mask_that_does_not_fit_falls_back_to_words_and_says_why(tmp_path, tokenizer, data):
    masks = list(data[schema.CHOSEN_DIFF_MASK])
    masks[0] = masks[0] + [True]
    broken = data.remove_columns(schema.CHOSEN_DIFF_MASK).add_column(
        schema.CHOSEN_DIFF_MASK, masks, feature=data.features[schema.CHOSEN_DIFF_MASK])
    render_report(broken, tmp_path / "r.html", tokenizer=tokenizer)
    _, rows = read_chunks(tmp_path / "r_files")
    assert rows[0]["k"] == "word" and "entries but the tokenizer gives" in rows[0]["kn"]
    assert all(r["k"] == "token" for r in rows[1:])


def test_other_tokenizer_or_no_masks_gives_word_level_page(tmp_path, data):
    other = tiny_tokenizer(vocab_size=500)
    html = render_report(data, tmp_path / "a.html", tokenizer=other).read_text()
    assert "is not the one the masks were built with" in html
    assert {r["k"] for r in read_chunks(tmp_path / "a_files")[1]} == {"word"}
    plain = data.remove_columns(list(schema.MASK_COLUMNS))
    html = render_report(plain, tmp_path / "b.html").read_text()
    assert "no diff masks" in html and "word-level" in html


def test_word_level_fallback_marks_the_changed_words():
    chosen, rejected = word_diff_sides("the dog sat on a mat today", "the cat sat on the mat")
    assert marked_texts(chosen, "the dog sat on a mat today") == ["dog", "a", "today"]
    assert marked_texts(rejected, "the cat sat on the mat") == ["cat", "the"]
    assert chosen["n"] == 7 and rejected["n"] == 6
    same, same_r = word_diff_sides("a  b\nc", "a b c")  # whitespace alone is no change
    assert same["m"] == [] and same_r["m"] == []
    only_new, _ = word_diff_sides("x y", "")
    assert marked_texts(only_new, "x y") == ["x", "y"]


def test_chunking_round_trips_every_row(tmp_path, data):
    render_report(data, tmp_path / "r.html", config=ReportConfig(chunk_rows=6))
    index, rows = read_chunks(tmp_path / "r_files")
    assert index["chunks"] == 7 and len(list((tmp_path / "r_files").glob("rows-*.js"))) == 7
    assert len(rows) == len(data)
    for i, rec in enumerate(rows):
        row = data[i]
        assert rec["p"] == row[schema.PROMPT] and rec["c"] == row[schema.CHOSEN] and rec["l"] == row[schema.REJECTED]
        assert rec.get("o", rec["c"]) == row[schema.ORIGINAL_CHOSEN]
        assert rec.get("why", "") == row[schema.REASON] and rec["id"] == row[schema.ID]
        assert index["statuses"][index["st"][i]] == row[schema.STATUS]
    # reasons grouped as in cards and summaries: the quoted values are elided
    failed = [g for g in index["groups"] if g[1] == "failed"]
    assert len(failed) == 1 and failed[0][0] == "final answer '…' does not match the reference '…'"
    assert failed[0][2] == sum(s == "failed" for s in data[schema.STATUS])


def test_no_dataset_text_reaches_the_html_unescaped(tmp_path, data):
    html = render_report(data, tmp_path / "r.html", source='<b onmouseover="x">src</b>').read_text()
    assert INJECTION not in html and "<b onmouseover" not in html and "&lt;b onmouseover=" in html
    assert len(re.findall(r"<script\b", html)) == 2  # the page's own script and the index loader


def test_rendering_is_deterministic(tmp_path, data):
    path = tmp_path / "r.html"
    render_report(data, path)
    first = {p.name: p.read_bytes() for p in [path, *sorted((tmp_path / "r_files").iterdir())]}
    old = path.read_text().replace(re.search(r'bmc-report-date" content="([0-9-]+)"', path.read_text()).group(1),
                                   "2001-01-01")
    path.write_text(old)  # an older report of the same data keeps its date
    # (edited by hand here, so no longer the file bmc wrote: replacing it takes overwrite)
    render_report(data, path, overwrite=True)
    assert 'bmc-report-date" content="2001-01-01"' in path.read_text()
    path.write_text(first["r.html"].decode())
    render_report(data, path, overwrite=True)
    assert {p.name: p.read_bytes() for p in [path, *sorted((tmp_path / "r_files").iterdir())]} == first


def test_cli_reads_a_save_bridged_folder_and_reports_bad_input_in_one_line(tmp_path, data, capsys):
    from bmc_data.hub.save import save_bridged

    folder = save_bridged(data, tmp_path / "ds", repo_id="org/ecqa-bmc", source="ecqa-train.jsonl", stats=False)
    loaded, prov = load_report_source(folder)
    assert len(loaded) == len(data) and prov["source"] == "ecqa-train.jsonl"
    (tmp_path / "bridge-out").mkdir()
    data.to_parquet(str(tmp_path / "bridge-out" / "bridged.parquet"))  # a `python -m bmc_data bridge` folder
    assert load_report_source(tmp_path / "bridge-out")[0][schema.ID][:] == data[schema.ID][:]
    data.to_parquet(str(tmp_path / "rows.parquet"))
    proc = subprocess.run([sys.executable, "-m", "bmc_data.report", str(tmp_path / "rows.parquet"), "--out",
                           str(tmp_path / "cli.html"), "--quiet"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli_files" / "index.js").is_file()
    # the recorded tiny tokenizer is nowhere to be loaded offline: the page says so and shows words
    assert "could not be loaded" in (tmp_path / "cli.html").read_text()
    from bmc_data.report.cli import main

    capsys.readouterr()
    assert main([str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.html"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "nope.csv: no such file or folder" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["empty-parquet", "empty-jsonl", "blank-jsonl", "missing-folder", "bad-chunk-rows",
                                  "not-a-data-file", "out-is-a-folder", "delta-without-model", "rows-without-model"])
def test_report_cli_bad_input_is_one_line_exit_2(tmp_path, data, capsys, case):
    from bmc_data.report.cli import main

    out = ["--out", str(tmp_path / "x.html"), "--quiet"]
    if case == "empty-parquet":
        data.select([]).to_parquet(str(tmp_path / "e.parquet"))
        argv, expected = [str(tmp_path / "e.parquet")], "e.parquet: the file has no rows"
    elif case == "empty-jsonl":
        (tmp_path / "e.jsonl").write_text("")
        argv, expected = [str(tmp_path / "e.jsonl")], "e.jsonl: the file is empty"
    elif case == "blank-jsonl":
        (tmp_path / "e.jsonl").write_text("\n\n")
        argv, expected = [str(tmp_path / "e.jsonl")], "e.jsonl: the file is empty"
    elif case == "missing-folder":  # a relative folder that does not exist is not looked up on the Hub
        argv, expected = [str(tmp_path / "no" / "such-folder")], "such-folder: no such file or folder"
    elif case == "bad-chunk-rows":
        data.to_parquet(str(tmp_path / "rows.parquet"))
        argv, expected = [str(tmp_path / "rows.parquet"), "--chunk-rows", "0"], "--chunk-rows must be >= 1, got 0"
    elif case in ("delta-without-model", "rows-without-model"):  # would be silently ignored
        data.to_parquet(str(tmp_path / "rows.parquet"))
        flag = "--delta" if case == "delta-without-model" else "--weight-rows"
        argv, expected = [str(tmp_path / "rows.parquet"), flag, "3"], f"{flag} sets the λ preview, which needs --model"
    elif case == "out-is-a-folder":
        data.to_parquet(str(tmp_path / "rows.parquet"))
        (tmp_path / "x.html").mkdir()
        argv, expected = [str(tmp_path / "rows.parquet")], "x.html is a folder; give the .html file to write"
    else:
        (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
        argv, expected = [str(tmp_path / "rows.csv")], "rows.csv: expected a .parquet or .jsonl file"
    capsys.readouterr()
    assert main(argv + out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert expected in err and "Error" not in err and "Traceback" not in err
    assert not (tmp_path / "x.html").is_file() and not (tmp_path / "x_files").exists()


def test_weight_preview_gives_lambda_of_each_marked_token(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bmc_train.losses import bmc_token_weights
    from bmc_train.testing import build_tiny_model

    base = report_dataset(12, masks=False)
    folder = build_tiny_model(tmp_path / "policy", [r[schema.PROMPT] + r[schema.CHOSEN] for r in base])
    tok = AutoTokenizer.from_pretrained(str(folder))
    data = report_dataset(12, tokenizer=tok)
    html = render_report(data, tmp_path / "w.html", tokenizer=tok,
                         config=ReportConfig(model=str(folder), delta=2.0, weight_rows=3)).read_text()
    assert "δ = 2" in html and str(folder) in html
    _, rows = read_chunks(tmp_path / "w_files")
    weighted = [i for i, r in enumerate(rows) if "lw" in r]
    assert len(weighted) == 3 and all(data[i][schema.STATUS] == "bridged" for i in weighted)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    for i in weighted:
        ref = tokenize_pair(tok, data[i][schema.PROMPT], data[i][schema.CHOSEN], data[i][schema.REJECTED])
        ids = torch.tensor([ref["prompt_ids"] + ref["chosen_ids"]])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
        mask = torch.tensor(data[i][schema.CHOSEN_DIFF_MASK])
        expected = bmc_token_weights(logps[len(ref["prompt_ids"]) - 1:][None], mask[None], delta=2.0)[0][mask]
        assert rows[i]["lw"]["c"] == pytest.approx(expected.tolist(), abs=1e-3)
        assert len(rows[i]["lw"]["r"]) == sum(data[i][schema.REJECTED_DIFF_MASK])
        assert all(1.0 <= w <= 3.0 for w in rows[i]["lw"]["c"] + rows[i]["lw"]["r"])


def test_hub_repo_source_reads_every_config(hub, tmp_path, data):
    from bmc_data.hub.push import push_bridged
    from bmc_data.hub.save import save_bridged

    folder = save_bridged(data, tmp_path / "ds", repo_id=REPO, source="ecqa-train.jsonl", stats=False,
                          report_path="report.html")
    render_report(data, folder / "report.html")
    push_bridged(folder, REPO)
    assert {"report.html", "report_files/index.js"} <= set(hub.files(REPO))
    loaded, prov = load_report_source(REPO)  # through load_bridged: default, filtered and failed configs
    assert sorted(loaded[schema.ID][:]) == sorted(data[schema.ID][:]) and prov["source"] == REPO
    render_report(loaded, tmp_path / "hub.html", source=REPO)
    assert read_chunks(tmp_path / "hub_files")[0]["n"] == len(data)


def test_card_links_the_report_only_when_there_is_one(data):
    from bmc_data.hub.card import render_dataset_card, validate_card

    with_link = render_dataset_card(data, repo_id=REPO, report_path="report.html").content
    assert "[report.html](report.html)" in with_link and "`report_files/`" in with_link
    validate_card(with_link)
    assert "report.html" not in render_dataset_card(data, repo_id=REPO).content


def test_reason_group_treats_apostrophes_inside_a_quoted_value_as_part_of_it():
    from bmc_data.pairs.schema import reason_group

    reasons = [f"the editor judged '{v}' off topic" for v in ("it's ethics", "ok", "don't know, won't say")]
    assert {reason_group(r) for r in reasons} == {"the editor judged '…' off topic"}
    assert reason_group("no quotes, isn't it") == "no quotes, isn't it"
    assert reason_group("reply has no line starting with 'REVISED:' (got 'Sure, here's')") == \
        "reply has no line starting with '…' (got '…')"


def test_offsets_come_from_the_same_tokenization_as_the_masks(tokenizer, data):
    """`token_sides` is `tokenize_pairs_batched(return_offsets=True)`: the same ids with or without offsets, and
    each token's span in the completion text is the text that token decodes to (whole characters)."""
    from bmc_data.tokens.tokenization import tokenize_pairs_batched

    prompts, chosens, rejecteds = (list(data[c]) for c in (schema.PROMPT, schema.CHOSEN, schema.REJECTED))
    for ps in (prompts, [[{"role": "user", "content": p}] for p in prompts]):
        plain = tokenize_pairs_batched(tokenizer, ps, chosens, rejecteds)
        with_offsets = tokenize_pairs_batched(tokenizer, ps, chosens, rejecteds, return_offsets=True)
        for row, ref in zip(with_offsets, plain):
            assert {k: row[k] for k in ref} == ref
            for side in ("chosen", "rejected"):
                text, spans, ids = row[f"{side}_text"], row[f"{side}_offsets"], row[f"{side}_ids"]
                assert len(spans) == len(ids)
                for (s, e), t in zip(spans, ids):
                    piece = tokenizer.decode([t])
                    if "\ufffd" not in piece:  # not a byte-level piece of a multi-byte character
                        assert piece.strip() == text[s:e].strip(), (piece, text[s:e])


def test_the_page_says_what_the_editor_did_as_the_summary_and_card_do(tmp_path, data):
    import html as html_lib

    from bmc_data.tokens.stats import editor_statistics, editor_statistics_lines

    page = html_lib.unescape(render_report(data, tmp_path / "r.html").read_text())
    lines = editor_statistics_lines(editor_statistics(data))
    assert len(lines) >= 2 and "; ".join(lines) in page
    assert lines[0].startswith(f"bridged: {sum(s == 'bridged' for s in data['bmc_status'])} of {len(data)} rows")
