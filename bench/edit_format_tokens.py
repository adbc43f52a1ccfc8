"""Output tokens per pair of the two reply formats: the full rewrite of ỹ_w vs the edit list (bmc_data.bridging.edits).

    python bench/edit_format_tokens.py            # QA: 300 test pairs each of ECQA, QASC, OpenBookQA; instruction: AlpacaEval

Real responses, constructed edits (the ideal editor's reply, written out in each format with the bundled
templates' tags, counted with the SmolLM2 tokenizer from the embedded GGUF):
* QA: y_w = the dataset's solution; y_l = that solution with the correct option replaced by a wrong one
  (everywhere); ỹ_w = y_w, i.e. the targeted edit puts the right answer back.
* instruction: y_l = an AlpacaEval reference output; ỹ_w = y_l with three targeted edits: a clarifying sentence
  inserted after the first sentence, one middle sentence deleted (when there are five or more), and the last
  sentence reworded ("In short, ...").
The edit list is `edits_between(y_l, ỹ_w)` (spans widened until unique, as `apply_edits` requires); the test
suite checks that applying it gives ỹ_w exactly. Writes bench/results/edit_format_tokens.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

from bmc_data.bridging.edits import apply_edits, edits_between, format_edits  # noqa: E402


def _wrong_option(problem: str, answer: str, rng: random.Random) -> str | None:
    options = [o.strip() for o in problem.split("Options:", 1)[-1].strip().splitlines()]
    wrong = [o for o in options if o and o != answer and answer not in o and o not in answer]
    return rng.choice(wrong) if wrong else None


def qa_pairs(limit: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for name in ("ecqa-test.jsonl", "qasc-test.jsonl", "openbookqa-test.jsonl"):
        taken = 0
        for line in (DATA / "qa" / name).read_text().splitlines():
            row = json.loads(line)
            wrong = _wrong_option(row["problem"], row["answer"], rng)
            if wrong is None or row["answer"] not in row["solution"]:
                continue
            out.append((row["solution"].replace(row["answer"], wrong), row["solution"]))
            taken += 1
            if taken >= limit:
                break
    return out


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def instruction_pairs(limit: int) -> list[tuple[str, str]]:
    rows = json.loads((DATA / "instruction" / "alpaca_eval.json").read_text())
    out = []
    for row in rows[:limit]:
        y_l = row["output"].strip()
        parts = _SENTENCE.split(y_l)
        if len(parts) < 2:
            continue
        # rebuild with the original separators so untouched text stays byte-identical
        seps = _SENTENCE.findall(y_l)
        edited = list(parts)
        edited[0] = parts[0] + " To be precise, this depends on the details given in the question."
        if len(parts) >= 5:
            edited[len(parts) // 2] = None  # deleted
        last = parts[-1]
        edited[-1] = "In short, " + last[0].lower() + last[1:] if last else last
        text = edited[0]
        for sep, part in zip(seps, edited[1:]):
            if part is not None:
                text += sep + part
        out.append((y_l, text))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qa-per-set", type=int, default=300)
    parser.add_argument("--instruction", type=int, default=805)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "edit_format_tokens.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from bmc_data.providers.embedded import embedded_model_file

    path = embedded_model_file()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731

    result = {"command": f"python bench/edit_format_tokens.py --qa-per-set {args.qa_per_set} --instruction {args.instruction}",
              "tokenizer": "SmolLM2-135M-Instruct (embedded GGUF)", "sets": {}}
    rng = random.Random(0)
    for name, pairs, verdict in (("qa", qa_pairs(args.qa_per_set, rng), "<verdict>REVISE</verdict>\n"),
                                 ("instruction", instruction_pairs(args.instruction), "")):
        full, edits, n_edits, y_l_tokens = [], [], [], []
        for y_l, target in pairs:
            edit_list = edits_between(y_l, target)
            assert apply_edits(y_l, edit_list) == target
            full.append(count(f"{verdict}<revised>\n{target}\n</revised>"))
            edits.append(count(verdict + format_edits(edit_list)))
            n_edits.append(len(edit_list))
            y_l_tokens.append(count(y_l))
        result["sets"][name] = {
            "pairs": len(pairs),
            "y_l_tokens_mean": round(statistics.mean(y_l_tokens), 1),
            "edits_per_pair_mean": round(statistics.mean(n_edits), 2),
            "full_output_tokens_mean": round(statistics.mean(full), 1),
            "edits_output_tokens_mean": round(statistics.mean(edits), 1),
            "full_output_tokens_median": statistics.median(full),
            "edits_output_tokens_median": statistics.median(edits),
            "edits_over_full_mean_ratio": round(sum(edits) / sum(full), 3),
            "pairs_where_edits_are_longer": sum(e > f for e, f in zip(edits, full)),
        }
        print(name, result["sets"][name], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
