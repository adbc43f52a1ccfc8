"""Build QA/math preference pairs the way the paper does (App. A.2): y_w is the ground-truth solution and
y_l is the SFT model's own answer to the problem."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import datasets

from bmc_data.errors import InputError, SystemicFailure, UsageError
from bmc_data.pairs.answers import check_answer, extract_answer
from bmc_data.pairs.loading import answer_text, read_records, unencodable
from bmc_data.pairs.options import check_count, parse_task
from bmc_data.pairs.schema import Task
from bmc_data.providers.base import ChatRequest, Provider, ProviderError
from bmc_data.redaction import redact_new

from .concurrency import map_concurrently, run_sync

logger = logging.getLogger(__name__)

ANSWER_INSTRUCTION = "Solve the problem step by step. End your reply with a line of the form 'The answer is <answer>'."
_NAMESPACE = "make_pairs-v1"


def _problem_fields(row: dict[str, Any], index: int) -> tuple[str, str, str | None]:
    """(problem, solution, answer) from the QA layout (problem/solution/answer), GSM8K (question/answer
    with '#### X') or MAWPS (input/target)."""
    if "problem" in row and "solution" in row:
        return row["problem"], row["solution"], answer_text(row.get("answer")) or extract_answer(row["solution"])
    if "question" in row and "answer" in row:
        return row["question"], row["answer"], extract_answer(row["answer"])
    if "input" in row and "target" in row:
        answer = answer_text(row["target"])
        return row["input"], f"The answer is {answer}", answer
    raise InputError(f"row {index}: expected problem/solution/answer, question/answer (GSM8K) or input/target "
                     f"(MAWPS) fields, got {sorted(row)}")


def make_pairs(
    problems: Any,
    *,
    model: Provider | str | None = None,
    task: Task | str = Task.QA,
    keep: Literal["all", "wrong"] = "all",
    instruction: str = ANSWER_INSTRUCTION,
    max_tokens: int = 512,
    temperature: float = 0.0,
    seed: int | None = 0,
    concurrency: int = 8,
    limit: int | None = None,
    split: str = "train",
    cache_dir: str | Path | None | bool = None,
    progress: bool = True,
    answer_check: bool = True,
    shots: int = 0,
) -> datasets.Dataset:
    """Sample y_l from `model` for each problem and pair it with the ground-truth solution y_w.

    `model` is a provider, a provider name ("embedded", "openai", ...), a local transformers model path, or None
    for the embedded SmolLM2. Returns a standard-layout dataset (prompt, chosen, rejected, answer, task, id)
    plus `rejected_correct` (does y_l reach the known answer?) ready for `bridge_dataset`. With keep="wrong",
    pairs whose y_l is already correct are left out (the count is logged), as in the paper's QA setup; rows
    whose generation failed are always left out and logged. A problem without a known final answer is an
    `InputError` before any call unless `answer_check=False`.

    `shots`: the first `shots` problems of the source are not paired; they are shown to the model as worked
    examples (earlier chat turns: the problem, then its ground-truth solution), so that y_l takes the data's form
    (a few lines of reasoning, then "The answer is X") the way the paper's SFT model's answers do. A small model
    asked for that form in words answers with the answer line alone: SmolLM2-135M did on 10 of 10 ECQA problems,
    and on 0 of 12 with two shots (`docs/embedded-editor.md`). With shots, `instruction` is not added: the
    examples show the form, and given both, the model copied the examples' sentences more often (4 vs 1 of 12).
    `limit` counts the problems after the shots.
    """
    task = parse_task(task, allowed=[t for t in Task if t.has_ground_truth],
                      why="make_pairs builds QA/math pairs from ground truth; ")
    if keep not in ("all", "wrong"):
        raise UsageError(f"keep must be 'all' or 'wrong', got {keep!r}")
    check_count("limit", limit, none_means="every problem")
    check_count("concurrency", concurrency)
    check_count("max_tokens", max_tokens)
    if shots != 0:
        check_count("shots", shots)
    table = read_records(problems, split=split)  # CSV cells as written, NaN as missing
    if shots and len(table) <= shots:
        raise InputError(f"shots={shots} leaves no problem to pair: the source has {len(table)} problem(s), and the "
                         "first `shots` of them are the worked examples")
    examples = [_problem_fields(row, i)[:2] for i, row in enumerate(table[:shots])]
    if limit is not None:
        table = table[:shots + limit]
    records = [(i, *_problem_fields(row, i)) for i, row in enumerate(table) if i >= shots]
    missing = next((i for i, _, _, gold in records if not gold), None)
    if answer_check and missing is not None:  # found before the first paid call, not when bridging its pair
        raise InputError(f"row {missing}: no known final answer (no 'answer', and the solution states none as "
                         "'The answer is X', '#### X' or \\boxed{X}); add one, or pass answer_check=False "
                         "(--no-answer-check) to sample and bridge without the ground-truth check")
    provider = _resolve_model(model)
    if cache_dir is not False:
        from bmc_data.providers.cache import (
            CachedProvider,
            CallCache,
            default_cache_dir,
        )

        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        provider = CachedProvider(provider, CallCache(folder / "calls.sqlite"), namespace=_NAMESPACE)

    async def answer(record: tuple[int, str, str, str | None]) -> str | ProviderError:
        _, problem, _, _ = record
        request = ChatRequest(messages=_messages(problem, examples, instruction), max_tokens=max_tokens,
                              temperature=temperature, seed=seed)
        try:
            # y_l becomes the row's rejected response: a secret the model or server added is masked here
            return redact_new((await provider.complete(request)).text.strip(), given="\n".join(map(str, record)))
        except SystemicFailure:
            raise  # stops the run (map_concurrently cancels the rest)
        except ProviderError as error:
            return error

    async def answer_all() -> list[str | ProviderError]:
        try:
            return await map_concurrently(records, answer, concurrency=concurrency, desc="Sampling y_l",
                                          progress=progress, on_error=lambda i, e: ProviderError(str(e)))
        finally:
            await provider.aclose()  # its connections belong to this event loop

    outputs = run_sync(answer_all())
    rows, failed, correct_dropped = [], 0, 0
    for (index, problem, solution, gold), output in zip(records, outputs):
        if isinstance(output, ProviderError) or not output or unencodable(output):  # unwritable text fails its row
            failed += 1
            continue
        correct = check_answer(output, gold, task)[0] if gold else False
        if keep == "wrong" and correct:
            correct_dropped += 1
            continue
        rows.append({"id": str(table[index].get("id", table[index].get("idx", index))), "prompt": problem,
                     "chosen": solution, "rejected": output, "answer": gold, "task": task.value,
                     "rejected_correct": correct})
    if failed:
        logger.warning("make_pairs: generation failed for %d of %d problem(s); they are not in the result", failed, len(records))
    if correct_dropped:
        logger.info("make_pairs: %d of %d model answer(s) were already correct and were left out (keep='wrong')",
                    correct_dropped, len(records))
    features = datasets.Features({"id": datasets.Value("string"), "prompt": datasets.Value("string"),
                                  "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "task": datasets.Value("string"),
                                  "rejected_correct": datasets.Value("bool")})
    return datasets.Dataset.from_list(rows, features=features)


def _messages(problem: str, examples: list[tuple[str, str]], instruction: str) -> tuple[dict[str, str], ...]:
    """The y_l request: the problem and the instruction, or, with worked examples, those as earlier turns."""
    if not examples:
        return ({"role": "user", "content": f"{problem}\n\n{instruction}"},)
    turns = [{"role": role, "content": text} for example in examples
             for role, text in zip(("user", "assistant"), example)]
    return (*turns, {"role": "user", "content": problem})


def _resolve_model(model: Provider | str | None) -> Provider:
    if isinstance(model, Provider):
        return model
    from bmc_data.providers import get_provider

    if model is None or model in ("embedded", "openai", "anthropic"):
        return get_provider(model)
    return get_provider("transformers", model=model)
