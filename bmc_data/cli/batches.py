"""`python -m bmc_data batches`: the batch jobs a cache knows, their state, and cancelling them.

    python -m bmc_data batches --cache-dir ~/.cache/bmc                 # list (as last seen)
    python -m bmc_data batches --cache-dir ~/.cache/bmc --refresh       # ask the providers for open ones
    python -m bmc_data batches --cache-dir ~/.cache/bmc --cancel batch_abc123   # or --cancel all

API keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY; endpoints are the ones recorded at submission.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from bmc_data.errors import UsageError
from bmc_data.providers.batch_store import (
    COLLECTED,
    TERMINAL_STATES,
    BatchRecord,
    BatchStore,
)
from bmc_data.redaction import redact


def add_parser(sub: Any, cache_default: str) -> None:
    parser = sub.add_parser("batches", help="list or cancel the batch jobs recorded in a cache",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help=f"the cache folder (default: {cache_default})")
    parser.add_argument("--refresh", action="store_true", help="ask the providers for the state of open batches")
    parser.add_argument("--cancel", metavar="BATCH_ID", default=None,
                        help="cancel this batch (the provider's id), or 'all' open ones")


def _provider(record: BatchRecord, store: BatchStore) -> Any:
    from bmc_data.providers import get_provider
    from bmc_data.redaction import public_url

    # the ledger keeps endpoints without credentials: those come back from the environment's URL, when it is the
    # same endpoint (as keys come from the environment)
    env_url = os.environ.get(f"{record.api.upper()}_BASE_URL")
    base_url = env_url if env_url and public_url(env_url) == record.endpoint else record.endpoint
    provider = get_provider(f"{record.api}-batch", record.model, base_url=base_url, progress=False)
    provider.store = store
    return provider


def _table(records: list[BatchRecord], store: BatchStore) -> str:
    counts = store.request_counts()
    header = ("#", "api", "batch id", "state", "requests", "answered", "no reply", "submitted (UTC)", "endpoint")
    rows = [header]
    for r in records:
        ok, bad = counts.get(r.local_id, (0, 0))
        when = dt.datetime.fromtimestamp(r.created_at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        state = f"{r.remote_state or 'ended'}, collected" if r.state == COLLECTED else r.state
        rows.append((str(r.local_id), r.api, r.batch_id or "-", state, str(r.request_count), str(ok), str(bad), when,
                     r.endpoint))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def run(args: argparse.Namespace) -> int:
    from bmc_data.bridging.concurrency import run_sync
    from bmc_data.providers.cache import default_cache_dir

    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if not (cache_dir / "calls.sqlite").is_file():
        raise UsageError(f"--cache-dir {cache_dir}: no calls.sqlite there (is it the folder bridging used?)")
    store = BatchStore.in_cache_dir(cache_dir)
    records = store.batches()
    status = 0
    if args.cancel:
        targets = [r for r in records if r.state != COLLECTED and r.state not in TERMINAL_STATES
                   and (args.cancel == "all" or r.batch_id == args.cancel)]
        if not targets and args.cancel != "all":
            raise UsageError(f"--cancel {args.cancel}: no open batch with that id in {cache_dir}")
        for record in targets:
            try:
                state = run_sync(_provider(record, store).cancel_batch(record))
                print(f"{record.batch_id}: {state}")
            except Exception as error:  # noqa: BLE001 - one line per batch, keep going
                print(f"{record.batch_id}: could not cancel: {redact(str(error))}", file=sys.stderr)
                status = 1
    elif args.refresh:
        for record in records:
            if record.state == COLLECTED or record.state in TERMINAL_STATES or record.batch_id is None:
                continue
            try:
                run_sync(_refresh(_provider(record, store), record))
            except Exception as error:  # noqa: BLE001
                print(f"{record.batch_id}: could not refresh: {redact(str(error))}", file=sys.stderr)
                status = 1
    records = store.batches()
    print(_table(records, store) if records else f"no batches recorded in {cache_dir}")
    return status


async def _refresh(provider: Any, record: BatchRecord) -> str:
    try:
        return await provider.refresh(record)
    finally:
        await provider.aclose()
