"""The Bridging Phase (paper §3.1): synthesize a pseudo-winning response ỹ_w by targeted modification of y_l.

For every pair (x, y_w, y_l) an editor LLM rewrites y_l only where it is wrong, with y_w as reference. For QA and
math it first says whether y_l is already good enough (such pairs are *filtered*), and ỹ_w must reach the known
final answer (else the row *fails*, with the reason). Every call goes through an on-disk cache, so a killed run
started again finishes with no row lost and no paid call repeated.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from bmc_data.errors import InputError, SystemicFailure, UsageError
from bmc_data.pairs import schema as S
from bmc_data.pairs.answers import known_answer
from bmc_data.pairs.loading import (
    InvalidRowError,
    Layout,
    LoadedPairs,
    OnInvalid,
    check_known_answer,
    load_pairs,
    unencodable,
)
from bmc_data.pairs.options import DEFAULT_MAX_INPUT_TOKENS, check_count, parse_task
from bmc_data.pairs.schema import PreferencePair, Status, Task
from bmc_data.providers.accounting import usage_since
from bmc_data.providers.base import (
    ChatRequest,
    ChatResponse,
    Provider,
    ProviderError,
    ResponseSchema,
    schema_support_problem,
)
from bmc_data.providers.throttle import estimate_tokens
from bmc_data.redaction import redact, redact_new, redact_obj
from bmc_data.runner import check_writable_folder

from .checks import good_verdict_problem, revision_problem
from .concurrency import map_concurrently, run_sync
from .parsing import ParsedReply, ReplyFormatError, Verdict, parse_reply
from .templates import Template, load_template

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class RowResult:
    status: Status
    reason: str
    pseudo_chosen: str | None = None  # ỹ_w when bridged
    calls: int = 0


@dataclass
class BridgeSummary:
    """What a bridging run did: counts by status, top reasons, calls, tokens and cost."""

    total: int
    counts: dict[str, int]
    reasons: dict[str, dict[str, int]]
    provider: dict[str, Any]
    prompt_version: str
    usage: dict[str, Any]
    elapsed_s: float
    skipped_input_rows: int = 0
    notes: list[str] = field(default_factory=list)
    #: every input row left out with on_invalid="skip": {"index", "field", "problem"}
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    #: with make_pairs first: the y_l sampling calls, apart from the bridging calls in `usage`
    sampling_usage: dict[str, Any] | None = None
    #: what the editor did (`bmc_data.tokens.stats.editor_statistics`): bridged share, median word edit
    #: distances y_w↔y_l and ỹ_w↔y_l, rows whose only change is the final-answer line
    editor: dict[str, Any] | None = None
    #: QA/math: was ỹ_w checked against the known final answer? (False: the user turned the check off)
    answer_check: bool = True

    @property
    def all_failed(self) -> bool:
        """Not one row bridged or filtered (and there were rows)."""
        return self.total > 0 and self.counts.get(Status.FAILED.value, 0) == self.total

    def to_dict(self) -> dict[str, Any]:
        return redact_obj({k: v for k, v in self.__dict__.items()})

    def headline(self) -> str:
        """'processed 4 pairs: 0 bridged, 0 filtered, 4 failed'."""
        parts = ", ".join(f"{self.counts.get(status.value, 0)} {status.value}" for status in Status)
        return f"processed {self.total} pair{'s' if self.total != 1 else ''}: {parts}"

    def __str__(self) -> str:
        return redact(self._text())

    def _text(self) -> str:
        lines = [f"{self.headline()} in {self.elapsed_s:.1f}s with {self.provider.get('provider')}:"
                 f"{self.provider.get('model')} (prompt {self.prompt_version})"]
        for status in Status:
            n = self.counts.get(status.value, 0)
            pct = 100.0 * n / self.total if self.total else 0.0
            lines.append(f"  {status.value:<9}{n:>7}  ({pct:5.1f}%)")
            for reason, count in list(self.reasons.get(status.value, {}).items())[:3]:
                lines.append(f"      {count:>5} × {reason[:100]}")
        for label, u in (("bridging", self.usage), ("y_l sampling", self.sampling_usage)):
            if u is None:
                continue
            lines.append(f"  {label} calls: {u.get('calls', 0)} made, {u.get('cached_calls', 0)} from cache, "
                         f"{u.get('retries', 0)} retries, {u.get('failures', 0)} failed; tokens in/out: "
                         f"{u.get('input_tokens', 0)}/{u.get('output_tokens', 0)}; "
                         f"estimated cost ${u.get('cost_usd', 0.0):.4f}")
        if self.editor:
            from bmc_data.tokens.stats import editor_statistics_lines

            lines += [f"  editor: {line}" for line in editor_statistics_lines(self.editor)]
        u = self.usage or {}
        if u.get("by_endpoint"):  # a pool of endpoints
            lines.append("  calls per endpoint: " + ", ".join(f"{url} {n}" for url, n in u["by_endpoint"].items()))
        if "batches" in u:  # a batch API
            states = ", ".join(f"{n} {state}" for state, n in u["batches"].items()) or "none ended"
            lines.append(f"  batches: {states}; {u.get('batch_requests_submitted', 0)} request(s) submitted, "
                         f"{u.get('resubmitted', 0)} resubmitted; cost at {u.get('price_basis', 'batch')}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.skipped_input_rows:
            lines.append(f"  {self.skipped_input_rows} invalid input row(s) skipped (listed in summary.json)")
            for row in self.skipped_rows[:3]:
                lines.append(f"      row {row['index']} field {row['field']!r}: {row['problem'][:100]}")
        return "\n".join(lines)


class _TruncatedReply(ProviderError):
    """The editor's reply hit max_tokens: it was paid for (and is cached) but cannot be used."""


class Bridger:
    """Runs targeted modification for one task with one provider and template."""

    def __init__(self, provider: Provider, template: Template, task: Task, *, max_tokens: int = 2048,
                 temperature: float = 0.0, seed: int | None = 0, check_answers: bool = True,
                 max_input_tokens: int | None = DEFAULT_MAX_INPUT_TOKENS):
        self.provider, self.template, self.task = provider, template, task
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self.check_answers = check_answers
        self.max_input_tokens = max_input_tokens

    def precheck(self, pair: PreferencePair, messages: list[dict[str, str]]) -> RowResult | None:
        """A degenerate row named before any call is paid for, or None when the row is worth sending."""
        if pair.chosen.strip() == pair.rejected.strip():
            return RowResult(Status.FILTERED, "chosen and rejected are identical: no preference to bridge")
        if self.max_input_tokens is not None:
            estimate = estimate_tokens(messages, 0)
            if estimate > self.max_input_tokens:
                return RowResult(Status.FAILED, f"editor prompt is about {estimate} tokens, over max_input_tokens="
                                 f"{self.max_input_tokens} (raise --max-input-tokens if your editor's context fits it)")
        return None

    def _request(self, messages: list[dict[str, str]], schema: ResponseSchema | None = None) -> ChatRequest:
        return ChatRequest(messages=tuple(messages), max_tokens=self.max_tokens, temperature=self.temperature,
                           seed=self.seed, response_schema=schema)

    async def _call(self, messages: list[dict[str, str]], schema: ResponseSchema | None = None) -> ChatResponse:
        response = await self.provider.complete(self._request(messages, schema))
        if response.truncated:
            raise _TruncatedReply(f"reply truncated at max_tokens={self.max_tokens} (finish_reason=length)")
        return response

    def _checked_answer(self, pair: PreferencePair) -> str | None:
        """The known answer ỹ_w must reach, when answers are checked (a structured reply's `final_answer` is
        constrained to it); else None."""
        return self._gold_answer(pair) if self.check_answers else None

    def response_schema(self, pair: PreferencePair) -> ResponseSchema | None:
        """The JSON Schema this pair's reply must follow (structured templates), else None."""
        if self.template.reply_format != "structured":
            return None
        from .protocol import SCHEMA_NAME, reply_schema

        return ResponseSchema(SCHEMA_NAME, reply_schema(pair.rejected, requires_verdict=self.template.requires_verdict,
                                                        answer=self._checked_answer(pair), task=self.task))

    def _parse(self, text: str, pair: PreferencePair) -> ParsedReply:
        if self.template.reply_format == "edits":  # a list of replacements, applied to y_l here
            from .edits import parse_edit_reply

            return parse_edit_reply(text, pair.rejected, requires_verdict=self.template.requires_verdict)
        if self.template.reply_format == "structured":  # JSON, edits anchored to segments of y_l
            from .protocol import parse_structured_reply

            return parse_structured_reply(text, pair.rejected, requires_verdict=self.template.requires_verdict,
                                          answer=self._checked_answer(pair), task=self.task)
        return parse_reply(text, requires_verdict=self.template.requires_verdict, rejected=pair.rejected)

    async def bridge(self, pair: PreferencePair) -> RowResult:
        messages = self.template.render(prompt=pair.prompt_text(), chosen=pair.chosen, rejected=pair.rejected)
        degenerate = self.precheck(pair, messages)
        if degenerate is not None:
            return degenerate
        try:
            schema = self.response_schema(pair)
        except ValueError as error:
            return RowResult(Status.FAILED, f"no structured reply possible: {error}")
        calls = 0
        try:
            calls += 1
            reply = await self._call(messages, schema)
            try:
                parsed = self._parse(reply.text, pair)
            except ReplyFormatError as first_error:
                # one repair turn: show the model its reply and why it could not be used
                repair = messages + [{"role": "assistant", "content": reply.text},
                                     {"role": "user", "content": self.template.render_repair(str(first_error))}]
                calls += 1
                reply = await self._call(repair, schema)
                try:
                    parsed = self._parse(reply.text, pair)
                except ReplyFormatError as error:
                    return RowResult(Status.FAILED, f"unparsable reply after one repair: {error}", calls=calls)
        except _TruncatedReply as error:
            return RowResult(Status.FAILED, str(error), calls=calls)
        except SystemicFailure:
            raise  # not this row's problem: the run stops (map_concurrently cancels the others)
        except ProviderError as error:
            return RowResult(Status.FAILED, f"provider error: {error}", calls=calls)

        gold = self._checked_answer(pair)
        if parsed.verdict is Verdict.GOOD:
            why = good_verdict_problem(pair.rejected, gold=gold, task=self.task)
            if why:
                return RowResult(Status.FAILED, why, calls=calls)
            return RowResult(Status.FILTERED, "editor judged the rejected response already good enough", calls=calls)
        assert parsed.revised is not None
        why = revision_problem(parsed.revised, pair.rejected, gold=gold, task=self.task)
        if why:
            return RowResult(Status.FAILED, why, calls=calls)
        return RowResult(Status.BRIDGED, "", parsed.revised, calls=calls)

    def _gold_answer(self, pair: PreferencePair) -> str | None:
        if not self.task.has_ground_truth:
            return None
        return known_answer(pair)


async def abridge_pairs(pairs: list[PreferencePair], bridger: Bridger, *, concurrency: int = 16,
                        progress: bool = True) -> list[RowResult]:
    """Bridge `pairs` with at most `concurrency` rows in flight; results come back in input order.

    The provider's connections belong to this event loop, so they are closed when it is done."""
    try:
        return await map_concurrently(
            pairs, bridger.bridge, concurrency=concurrency, desc="Bridging", progress=progress,
            on_error=lambda i, error: RowResult(Status.FAILED, f"unexpected error: {type(error).__name__}: {error}"),
            status_of=lambda r: r.status.value,
        )
    finally:
        await bridger.provider.aclose()


def _user_text(pair: PreferencePair) -> str:
    """Everything the user gave for this row, as written and JSON-escaped, to look secrets up in."""
    raw = "\n".join(str(v) for v in (pair.chosen, pair.rejected, pair.answer,
                                      *(m["content"] for m in pair.prompt_messages())))
    return raw + json.dumps(raw, ensure_ascii=False)


def _wrap_response(value: str, conversational: bool) -> Any:
    return [{"role": "assistant", "content": value}] if conversational else value


def results_to_dataset(pairs: LoadedPairs | list[PreferencePair], results: list[RowResult], *, task: Task,
                       template: Template, provider: Provider) -> datasets.Dataset:
    pair_list = list(pairs)
    conversational = {p.is_conversational for p in pair_list}
    if len(conversational) > 1:
        raise ValueError("the pairs mix plain-text and chat-message prompts; convert them to one layout first")
    conv = conversational.pop() if conversational else False
    identity = provider.identity()
    indices = getattr(pairs, "source_indices", None) or list(range(len(pair_list)))
    rows = []
    for pair, result, index in zip(pair_list, results, indices):
        result = _writable(result)
        chosen = pair.chosen
        if result.status is Status.BRIDGED:  # the editor's text: a secret it added is masked, one the user wrote kept
            chosen = redact_new(result.pseudo_chosen, given=_user_text(pair))
        rows.append({  # the user's own fields as given: redaction never rewrites data
            S.PROMPT: pair.prompt_messages() if conv else pair.prompt,
            S.CHOSEN: _wrap_response(chosen, conv),
            S.REJECTED: _wrap_response(pair.rejected, conv),
            S.ORIGINAL_CHOSEN: _wrap_response(pair.chosen, conv),
            S.STATUS: result.status.value,
            S.REASON: redact(result.reason),  # bmc's own words, which may quote a server
            S.PROMPT_VERSION: template.version_id,
            S.PROVIDER: redact(str(identity.get("provider", provider.name))),
            S.MODEL: redact(str(identity.get("model", provider.model))),
            S.ID: pair.id if pair.id is not None else str(index),
            S.TASK: task.value,
            S.ANSWER: pair.answer,
            "bmc_source_index": index,
        })
    if not rows:  # from_list cannot build an empty table with columns
        features = datasets.Features({c: datasets.Value("string") for c in (*S.BRIDGED_COLUMNS, S.ID, S.TASK, S.ANSWER)})
        return datasets.Dataset.from_dict({c: [] for c in features}, features=features)
    return datasets.Dataset.from_list(rows)


def _writable(result: RowResult) -> RowResult:
    """A row whose reply cannot be written (a lone surrogate from the server) fails alone: the rows around it, paid
    for too, are still written."""
    where = unencodable([result.pseudo_chosen or "", result.reason])
    if where is None:
        return result
    return RowResult(Status.FAILED, f"the editor's reply contains {where}: text that cannot be encoded as UTF-8",
                     calls=result.calls)


def _checked_pairs(pairs: LoadedPairs, task: Task, check_answers: bool, *, check_text: bool) -> LoadedPairs:
    """Pairs given as objects pass the row checks `load_pairs` makes: a known answer, and (`check_text`, for pairs
    that did not come from `load_pairs`) text that can be written."""
    for position, pair in enumerate(pairs):
        index = pairs.source_indices[position] if pairs.source_indices else position
        where = unencodable(pair.model_dump()) if check_text else None
        if where:
            raise InvalidRowError(index, "row", f"contains {where}: text that cannot be encoded as UTF-8")
        if check_answers:
            check_known_answer(pair, index, task)
    return pairs


def _no_usable_row(pairs: LoadedPairs) -> InputError:
    skipped = f"{len(pairs.skipped)} invalid row(s) skipped" if pairs.skipped else "the source has no rows"
    first = f" (first: row {pairs.skipped[0].index} field {pairs.skipped[0].field!r}: {pairs.skipped[0].message})" \
        if pairs.skipped else ""
    return InputError(f"no usable row: {skipped}{first}; nothing to bridge")


def _wrap_with_cache(provider: Provider, cache_dir: Path | None, template: Template) -> Provider:
    if cache_dir is None:
        return provider
    from bmc_data.providers.cache import CachedProvider, CallCache

    cache_dir.mkdir(parents=True, exist_ok=True)
    return CachedProvider(provider, CallCache(cache_dir / "calls.sqlite"), namespace=template.version_id)


def _summary(provider: Provider, results: list[RowResult], template: Template, elapsed: float,
             skipped: list[Any], usage_before: dict[str, Any]) -> BridgeSummary:
    counts = Counter(r.status.value for r in results)
    reasons: dict[str, Counter[str]] = {}
    for r in results:
        if r.reason:
            reasons.setdefault(r.status.value, Counter())[S.reason_group(redact(r.reason))] += 1
    usage = usage_since(usage_before, provider.usage)  # this run's own calls, even with a reused provider
    return BridgeSummary(
        total=len(results), counts=dict(counts),
        reasons={k: dict(v.most_common()) for k, v in reasons.items()},
        provider={k: v for k, v in provider.identity().items() if isinstance(v, (str, int, float, bool, type(None)))},
        prompt_version=template.version_id, usage=usage, elapsed_s=elapsed, skipped_input_rows=len(skipped),
        skipped_rows=[{"index": r.index, "field": r.field, "problem": redact(r.message)} for r in skipped],
    )


def require_schema_support(provider: Provider | type[Provider], reply_format: str) -> None:
    """UsageError when `provider` (an instance, or a class: before a local model is loaded) cannot give the reply
    format (`providers.base.schema_support_problem`)."""
    if problem := schema_support_problem(provider, reply_format):
        raise UsageError(problem)


def bridge_dataset(
    data: Any,
    *,
    task: Task | str,
    provider: Provider | None = None,
    template: Template | str | Path | None = None,
    reply_format: str = "full",
    cache_dir: str | Path | None | bool = None,
    concurrency: int = 16,
    max_tokens: int = 2048,
    temperature: float = 0.0,
    seed: int | None = 0,
    check_answers: bool = True,
    layout: Layout = "auto",
    split: str = "train",
    limit: int | None = None,
    on_invalid: OnInvalid = "raise",
    progress: bool = True,
    summary_path: str | Path | None = None,
    return_summary: bool = False,
    max_input_tokens: int | None = DEFAULT_MAX_INPUT_TOKENS,
) -> datasets.Dataset | tuple[datasets.Dataset, BridgeSummary]:
    """Bridge every pair of `data` and return one row per (valid) input row, in input order.

    Args:
        data: a `datasets.Dataset`/`DatasetDict`, Hub repo id, local file/folder, DataFrame or list of dicts
            (see `bmc_data.pairs.loading` for the layouts), or a list of `PreferencePair`.
        task: "qa", "math" or "instruction"; QA/math get the good-enough verdict and the ground-truth check.
        provider: any `bmc_data.providers` provider; default: the embedded SmolLM2-135M-Instruct (weak; for
            real data point this at a strong model, see the README).
        template: a `Template`, a path to a template file, or None for the newest bundled one for `task`.
        reply_format: with `template=None`: "full" (the editor writes ỹ_w, as in the paper), "edits" (it lists
            replacements of spans of y_l, which the library applies; see `bmc_data.bridging.edits`) or
            "structured" (a JSON reply constrained by a per-pair schema: edits anchored to y_l's sentences and
            lines, the final answer fixed to the reference; see `bmc_data.bridging.protocol`). "structured"
            needs a provider that enforces a schema (`Provider.supports_response_schema`).
        cache_dir: where LLM calls are cached (default `$BMC_CACHE_DIR` or `~/.cache/bmc`); `False` disables.
        concurrency: rows in flight at once (the provider's own limits also apply).
        check_answers: for QA/math, require ỹ_w to reach the known final answer; every row must then have one
            (an `answer` or a chosen response that states it), else it is invalid. False turns the check off,
            named in the summary.
        on_invalid: "raise" on the first bad input row, or "skip" and report it.
        summary_path: also write the run summary there as JSON.
        return_summary: return `(dataset, BridgeSummary)` instead of the dataset alone.
        max_input_tokens: rows whose editor prompt is estimated (≈4 characters a token) above this fail with
            that reason before any call; None: no budget. Pairs with chosen == rejected are filtered, uncalled.

    Raises:
        UsageError: a bad argument; InputError (`InvalidRowError`): a bad source or row; SystemicFailure: the run
        was stopped because every further call would fail too (replies already received stay in the cache).

    Columns: prompt, chosen (ỹ_w when bridged, else y_w), rejected (y_l), original_chosen (y_w), bmc_status
    (bridged / filtered / failed), bmc_reason, bmc_prompt_version, bmc_provider, bmc_model, id, task, answer,
    bmc_source_index.
    """
    task = parse_task(task)
    check_count("concurrency", concurrency)
    check_count("max_tokens", max_tokens)
    check_count("limit", limit, none_means="every row")
    check_count("max_input_tokens", max_input_tokens, none_means="no budget")
    check_answers = bool(check_answers and task.has_ground_truth)
    if isinstance(data, LoadedPairs):  # already loaded and checked (the CLIs do this before any model or call)
        pairs = data if limit is None else LoadedPairs(data.pairs[:limit], data.layout, data.skipped,
                                                       data.source_indices[:limit])
        pairs = _checked_pairs(pairs, task, check_answers, check_text=False)
    elif isinstance(data, list) and data and all(isinstance(p, PreferencePair) for p in data):
        pairs = LoadedPairs(list(data[:limit] if limit else data), "pairs", [], list(range(len(data))))
        pairs = _checked_pairs(pairs, task, check_answers, check_text=True)
    else:
        pairs = load_pairs(data, task=task, layout=layout, split=split, limit=limit, on_invalid=on_invalid,
                           answer_check=check_answers)
    if not pairs.pairs:
        raise _no_usable_row(pairs)
    if not isinstance(template, Template):
        template = load_template(task, reply_format=reply_format) if template is None else load_template(path=template)
    if task not in template.tasks:
        raise UsageError(f"template {template.version_id} is for tasks {[t.value for t in template.tasks]}, not {task.value!r}")
    if provider is None:
        from bmc_data.providers import get_provider

        provider = get_provider("embedded")
    require_schema_support(provider, template.reply_format)
    if cache_dir is None:
        from bmc_data.providers.cache import default_cache_dir

        cache_dir = default_cache_dir()
    if cache_dir is not False:  # before any call: a cache that cannot be written loses every reply
        check_writable_folder(cache_dir, f"cache_dir {cache_dir}")
    if hasattr(provider, "bind_store"):  # a batch provider: its ledger lives in the cache; rounds fill batches
        provider.bind_store(Path(cache_dir) if cache_dir is not False else None)
        concurrency = max(concurrency, provider.rows_in_flight)
    cached = _wrap_with_cache(provider, Path(cache_dir) if cache_dir is not False else None, template)
    bridger = Bridger(cached, template, task, max_tokens=max_tokens, temperature=temperature, seed=seed,
                      check_answers=check_answers, max_input_tokens=max_input_tokens)
    usage_before = cached.usage.as_dict()
    start = time.perf_counter()
    results = run_sync(abridge_pairs(list(pairs), bridger, concurrency=concurrency, progress=progress))
    results = [_writable(r) for r in results]  # the summary counts what is written
    summary = _summary(cached, results, template, time.perf_counter() - start, pairs.skipped, usage_before)
    if task.has_ground_truth and not check_answers:
        summary.answer_check = False
        summary.notes.append("answer check off (check_answers=False / --no-answer-check): ỹ_w was not checked "
                             "against a known final answer")
    if summary.all_failed:
        logger.warning("every one of the %d pair(s) failed; the first reason: %s", summary.total,
                       redact(results[0].reason))
    dataset = results_to_dataset(pairs, results, task=task, template=template, provider=provider)
    from bmc_data.tokens.stats import editor_statistics

    summary.editor = editor_statistics(dataset)
    if progress:
        tqdm.write(str(summary))
    else:
        logger.info("%s", summary)
    if summary_path is not None:
        Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_path).write_text(json.dumps(summary.to_dict(), indent=2))
    return (dataset, summary) if return_summary else dataset
