"""A bounded async worker pool with a progress bar, and a sync entry point that also works in notebooks."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from tqdm.auto import tqdm

from bmc_data.errors import SystemicFailure

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


async def map_concurrently(
    items: Sequence[T],
    fn: Callable[[T], Awaitable[R]],
    *,
    concurrency: int,
    on_error: Callable[[int, BaseException], R],
    desc: str = "",
    progress: bool = True,
    status_of: Callable[[R], str] | None = None,
) -> list[R]:
    """`[await fn(x) for x in items]` with at most `concurrency` in flight, results in input order.

    An exception in one item becomes `on_error(index, exc)`: one bad row never loses the others. A
    `SystemicFailure` (the server refused, the key was rejected, ...) is not a row's problem: it cancels every
    item in flight and is raised at once.
    """
    results: list[Any] = [None] * len(items)
    next_index = iter(range(len(items)))
    counts: Counter[str] = Counter()
    bar = tqdm(total=len(items), desc=desc, unit="row", disable=not progress, dynamic_ncols=True)
    show_counts = status_of is not None and not bar.disable
    postfix_at = 0.0  # formatting the postfix costs more than a row's own bookkeeping: at most 10 times a second

    async def worker() -> None:
        nonlocal postfix_at
        for i in next_index:  # a shared iterator: each index is taken by exactly one worker
            try:
                result = await fn(items[i])
            except SystemicFailure:
                raise
            except Exception as error:
                logger.exception("row %d: unexpected error", i)
                result = on_error(i, error)
            results[i] = result
            if show_counts:
                counts[status_of(result)] += 1  # type: ignore[misc]
                now = time.monotonic()
                if now >= postfix_at or bar.n + 1 >= len(items):
                    postfix_at = now + 0.1
                    bar.set_postfix(counts, refresh=False)
            bar.update(1)

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(concurrency, len(items))))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # stop the other workers now, not after their retries
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        bar.close()
    return results


def run_sync(coro: Awaitable[R]) -> R:
    """`asyncio.run`, also inside an already running loop (Jupyter) by using a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)  # type: ignore[arg-type]
        except BaseException as error:  # re-raised in the caller's thread
            box["error"] = error

    thread = threading.Thread(target=target, name="bmc-async")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
