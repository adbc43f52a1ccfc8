"""Unparsable replies, repair turns and output tokens: today's tag formats vs the structured reply format.

    python bench/structured_replies.py                 # 100 ECQA + 100 GSM8K test pairs, max_tokens 512

Each format bridges the same pairs with `bridge_dataset` through `OpenAIProvider` against the loopback server of
the test suite (tests/llm_servers.py), which replays the replies of a scripted editor:

* pairs: ECQA y_l = the reference solution with the correct option replaced by a wrong one; GSM8K y_l = the
  reference solution with its final result off by one in the last step and the `####` line. The editor's
  intended ỹ_w is the reference solution: for "full" it writes it out, for "edits" it lists
  `edits_between(y_l, ỹ_w)`, for "structured" it replaces the segments of y_l that differ (the JSON the
  schema allows).
* every reply (first turn and repair turn, drawn independently, seeded) follows one behaviour of `BEHAVIOURS`:
  clean, a preamble sentence, fences around the whole reply, a missing closing tag, a bold "**Verdict:**" line
  instead of the tag, renamed tags, no tags at all, or rambling on past max_tokens. The mix is an assumption of
  this script (written in the results), not a measurement of one model: what is measured is how each format
  fares with the same mix. A schema-constrained decoder cannot write the first seven malformations, so for
  "structured" they come out clean; rambling stays possible inside a JSON string and is replayed as such.

Output tokens are counted with the SmolLM2 tokenizer of the embedded GGUF on the replies the server sent (a
truncated reply counts max_tokens). Writes bench/results/structured_replies.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
DATA = REPO.parent / "shared" / "data"

from llm_servers import LLMServer  # noqa: E402

from bmc_data import bridge_dataset  # noqa: E402
from bmc_data.bridging.edits import edits_between, format_edits  # noqa: E402
from bmc_data.bridging.protocol import segment  # noqa: E402
from bmc_data.providers.limits import ProviderLimits  # noqa: E402
from bmc_data.providers.openai_chat import OpenAIProvider  # noqa: E402

#: behaviour -> share of replies (the scripted editor's mix; an assumption, see the module docstring)
BEHAVIOURS = {"clean": 0.50, "preamble": 0.10, "fenced": 0.08, "unclosed_tag": 0.08, "bold_verdict": 0.06,
              "renamed_tags": 0.05, "no_tags": 0.05, "rambling": 0.08}
RAMBLE = "Let me double check the steps once more to be sure that everything is right. " * 60


def qa_pairs(limit: int, rng: random.Random) -> list[dict]:
    out = []
    for line in (DATA / "qa" / "ecqa-test.jsonl").read_text().splitlines():
        row = json.loads(line)
        options = [o.strip() for o in row["problem"].split("Options:", 1)[-1].strip().splitlines()]
        wrong = [o for o in options if o and o != row["answer"] and row["answer"] not in o and o not in row["answer"]]
        if not wrong or row["answer"] not in row["solution"]:
            continue
        out.append({"prompt": row["problem"], "chosen": row["solution"], "answer": row["answer"],
                    "rejected": row["solution"].replace(row["answer"], rng.choice(wrong))})
        if len(out) >= limit:
            break
    return out


def math_pairs(limit: int) -> list[dict]:
    out = []
    for line in (DATA / "math" / "gsm8k-test.jsonl").read_text().splitlines():
        row = json.loads(line)
        solution = re.sub(r"<<[^>]*>>", "", row["answer"])  # the calculator annotations models do not write
        answer = solution.rsplit("####", 1)[1].strip()
        lines = solution.split("\n")
        if not answer.isdigit() or len(lines) < 3 or not re.search(rf"\b{answer}\b", lines[-2]):
            continue
        wrong = str(int(answer) + 1)
        lines[-2] = re.sub(rf"\b{answer}\b", wrong, lines[-2])
        lines[-1] = f"#### {wrong}"
        out.append({"prompt": row["question"], "chosen": solution, "answer": answer, "rejected": "\n".join(lines)})
        if len(out) >= limit:
            break
    return out


def structured_edits(rejected: str, target: str) -> list[dict]:
    """The segments of y_l that differ from the target's (the pairs keep y_l's segmentation)."""
    a, b = segment(rejected), segment(target)
    assert len(a) == len(b), "the corrupted pairs change text inside segments only"
    return [{"segment": x.text, "replacement": y.text} for x, y in zip(a, b) if x.text != y.text]


def clean_reply(fmt: str, pair: dict) -> str:
    verdict = "<verdict>REVISE</verdict>\n"
    if fmt == "full":
        return f"{verdict}<revised>\n{pair['chosen']}\n</revised>"
    return verdict + format_edits(edits_between(pair["rejected"], pair["chosen"]))


def malformed(fmt: str, pair: dict, behaviour: str) -> str:
    reply = clean_reply(fmt, pair)
    block = "revised" if fmt == "full" else "edits"
    if behaviour == "preamble":
        return "Sure! Here is the corrected solution.\n\n" + reply
    if behaviour == "fenced":
        return f"```\n{reply}\n```"
    if behaviour == "unclosed_tag":
        return reply.replace(f"</{block}>", "")
    if behaviour == "bold_verdict":
        return reply.replace("<verdict>REVISE</verdict>", "**Verdict:** REVISE")
    if behaviour == "renamed_tags":
        return reply.replace(f"<{block}>", f"<{block}_solution>").replace(f"</{block}>", f"</{block}_solution>")
    if behaviour == "no_tags":
        return pair["chosen"] if fmt == "full" else "Replace the wrong answer with the reference's answer."
    if behaviour == "rambling":
        return reply + "\n" + RAMBLE
    return reply


def run_format(fmt: str, pairs: list[dict], task: str, max_tokens: int, seed: int, count) -> dict:
    by_prompt = {p["prompt"]: i for i, p in enumerate(pairs)}
    names, weights = list(BEHAVIOURS), list(BEHAVIOURS.values())
    sent: list[str] = []
    drawn: dict[str, int] = {}

    def behaviour_of(messages) -> tuple[dict, str]:
        question = messages[1]["content"]
        index = next(i for p, i in by_prompt.items() if p in question)
        turn = 1 if len(messages) <= 2 else 2
        # the same draw for every format: each format meets the same replies
        choice = random.Random(f"{seed}-{index}-{turn}").choices(names, weights)[0]
        drawn[choice] = drawn.get(choice, 0) + 1
        return pairs[index], choice

    def tag_reply(messages):
        pair, behaviour = behaviour_of(messages)
        text = malformed(fmt, pair, behaviour)
        sent.append(text)
        return text

    def structured_reply(messages, schema):
        pair, behaviour = behaviour_of(messages)
        edits = structured_edits(pair["rejected"], pair["chosen"])
        if behaviour == "rambling":  # the one malformation a grammar still lets through: a string that goes on
            edits[-1] = {**edits[-1], "replacement": edits[-1]["replacement"] + " " + RAMBLE}
        reply = {"verdict": "REVISE", "edits": edits, "final_answer": pair["answer"]}
        sent.append(json.dumps(reply, ensure_ascii=False))
        return reply

    limits = ProviderLimits(max_concurrency=8, timeout_s=30, max_retries=0)
    with tempfile.TemporaryDirectory() as cache, LLMServer(reply=tag_reply, structured_reply=structured_reply) as server:
        provider = OpenAIProvider("scripted-editor", base_url=server.openai_base_url, limits=limits)
        start = time.perf_counter()
        ds, summary = bridge_dataset(pairs, task=task, provider=provider, cache_dir=cache, reply_format=fmt,
                                     max_tokens=max_tokens, progress=False, return_summary=True)
        seconds = time.perf_counter() - start
    tokens = [min(count(text), max_tokens) for text in sent]
    reasons = summary.reasons.get("failed", {})
    calls = summary.usage["calls"]
    return {
        "prompt_version": summary.prompt_version,
        "rows": len(pairs),
        "status_counts": summary.counts,
        "bridged_share": round(summary.counts.get("bridged", 0) / len(pairs), 3),
        "first_replies_unparsable": calls - len(pairs),  # each such row got exactly one repair turn
        "first_reply_unparsable_rate": round((calls - len(pairs)) / len(pairs), 3),
        "repair_turns": calls - len(pairs),
        "unparsable_after_repair": sum(n for r, n in reasons.items() if r.startswith("unparsable reply")),
        "truncated": sum(n for r, n in reasons.items() if r.startswith("reply truncated")),
        "calls": calls,
        "output_tokens": sum(tokens),
        "output_tokens_per_row": round(sum(tokens) / len(pairs), 1),
        "output_tokens_median_reply": statistics.median(tokens),
        "server_output_words": summary.usage["output_tokens"],
        "behaviours_drawn": dict(sorted(drawn.items())),
        "failure_reasons": reasons,
        "editor": summary.editor,
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100, help="pairs per set (ECQA, GSM8K)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "structured_replies.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from bmc_data.providers.embedded import embedded_model_file

    path = embedded_model_file()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731

    result = {"command": f"python bench/structured_replies.py --pairs {args.pairs} --max-tokens {args.max_tokens} "
                         f"--seed {args.seed}",
              "behaviour_mix": BEHAVIOURS, "tokenizer": "SmolLM2-135M-Instruct (embedded GGUF)", "sets": {}}
    rng = random.Random(args.seed)
    for name, task, pairs in (("ecqa", "qa", qa_pairs(args.pairs, rng)), ("gsm8k", "math", math_pairs(args.pairs))):
        result["sets"][name] = {fmt: run_format(fmt, pairs, task, args.max_tokens, args.seed, count)
                                for fmt in ("full", "edits", "structured")}
        for fmt, numbers in result["sets"][name].items():
            print(name, fmt, {k: numbers[k] for k in ("bridged_share", "first_reply_unparsable_rate", "repair_turns",
                                                      "unparsable_after_repair", "truncated", "output_tokens_per_row")},
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
