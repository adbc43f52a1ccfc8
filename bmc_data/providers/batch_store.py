"""The on-disk ledger of submitted batch jobs, so a killed run resumes its batches and never pays twice.

It lives in the same SQLite file as the call cache (`<cache_dir>/calls.sqlite`), in two tables of its own:

* `batches`: one row per batch job: which API and endpoint, our submission token, the provider's batch id,
  its state and request counts. The row and its requests are committed *before* the upload starts, and
  the provider's id as soon as the create call returns; the token is also sent as batch metadata where the
  API has it (OpenAI), so a process killed between "create" and "record the id" finds its batch again.
* `batch_requests`: one row per (request, batch): the request's `custom_id` (a hash of the request), and
  once the batch is collected, its reply (JSON) or the reason it failed.

Nothing here holds credentials: endpoints are stored without keys, and keys come from the environment.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmc_data.redaction import redact

from .base import ChatResponse
from .cache import (  # the same file and reply format
    open_cache_db,
    response_from_json,
    response_to_json,
)

#: batch states after which the provider does nothing more with the job
TERMINAL_STATES = frozenset({"completed", "ended", "expired", "cancelled", "canceled", "failed"})
#: our own states: recorded but not yet created at the provider; results read and stored
PREPARING, COLLECTED = "preparing", "collected"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    local_id INTEGER PRIMARY KEY AUTOINCREMENT,
    api TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    batch_id TEXT,
    input_file_id TEXT,
    state TEXT NOT NULL,
    remote_state TEXT,
    request_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS batch_requests (
    custom_id TEXT NOT NULL,
    local_id INTEGER NOT NULL,
    response TEXT,
    error TEXT,
    PRIMARY KEY (custom_id, local_id)
);
CREATE INDEX IF NOT EXISTS batch_requests_by_batch ON batch_requests (local_id);
"""


@dataclass(frozen=True)
class BatchRecord:
    local_id: int
    api: str
    endpoint: str
    model: str
    token: str
    batch_id: str | None
    input_file_id: str | None
    state: str
    remote_state: str | None
    request_count: int
    created_at: float
    updated_at: float
    detail: str

    @property
    def open(self) -> bool:
        """Submitted (or being submitted) and not yet collected."""
        return self.state != COLLECTED


@dataclass(frozen=True)
class RequestHistory:
    """What the ledger knows of one request: its reply, the batch it waits in, and its failed attempts."""

    response: ChatResponse | None
    open_batch: int | None  # local_id of an uncollected batch holding it
    errors: tuple[str, ...]  # reasons of attempts that came back without a reply


class BatchStore:
    """The `batches` / `batch_requests` tables of one cache file; safe across threads and processes."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0):
        self.path, self._lock, self._conn = open_cache_db(path, timeout_s)
        with self._lock:
            self._conn.executescript(_SCHEMA)

    @classmethod
    def in_cache_dir(cls, cache_dir: str | Path) -> BatchStore:
        return cls(Path(cache_dir).expanduser() / "calls.sqlite")

    # --- writing ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing: the statements inside are committed together, or rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def record_submission(self, *, api: str, endpoint: str, model: str, custom_ids: list[str]) -> BatchRecord:
        """Commit a new batch (state `preparing`) with its requests, before anything is sent."""
        token = f"bmc-{uuid.uuid4().hex}"
        now = time.time()
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO batches (api, endpoint, model, token, state, request_count, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (api, endpoint, model, token, PREPARING, len(custom_ids), now, now))
            local_id = int(cursor.lastrowid)
            conn.executemany("INSERT INTO batch_requests (custom_id, local_id) VALUES (?, ?)",
                             ((cid, local_id) for cid in custom_ids))
        return self.get(local_id)  # type: ignore[return-value]

    def update(self, local_id: int, **fields: Any) -> None:
        allowed = {"batch_id", "input_file_id", "state", "remote_state", "detail"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"can only update {sorted(allowed)}, got {sorted(fields)}")
        names = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            self._conn.execute(f"UPDATE batches SET {names}, updated_at = ? WHERE local_id = ?",
                               (*fields.values(), time.time(), local_id))

    def store_results(self, local_id: int, responses: dict[str, ChatResponse], errors: dict[str, str], *,
                      detail: str = "") -> None:
        """Store a finished batch's replies and per-request errors and mark it collected, in one transaction."""
        with self._transaction() as conn:
            conn.executemany("UPDATE batch_requests SET response = ? WHERE custom_id = ? AND local_id = ?",
                             ((redact(response_to_json(r)), cid, local_id) for cid, r in responses.items()))
            conn.executemany("UPDATE batch_requests SET error = ? WHERE custom_id = ? AND local_id = ?",
                             ((redact(e), cid, local_id) for cid, e in errors.items()))
            # what a server sends back may echo the key (docs/errors.md): the ledger is scrubbed like the cache
            conn.execute("UPDATE batches SET state = ?, detail = ?, updated_at = ? WHERE local_id = ?",
                         (COLLECTED, redact(detail), time.time(), local_id))

    def forget_unsent(self, local_id: int) -> None:
        """A batch that never reached the provider is no attempt: close it (`never created`) and forget its
        requests, so they are submitted again as if for the first time."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM batch_requests WHERE local_id = ?", (local_id,))
            conn.execute("UPDATE batches SET state = ?, detail = ?, request_count = 0, updated_at = ? "
                         "WHERE local_id = ?", (COLLECTED, "never created", time.time(), local_id))

    # --- reading ------------------------------------------------------------------------------------
    def get(self, local_id: int) -> BatchRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM batches WHERE local_id = ?", (local_id,)).fetchone()
        return BatchRecord(*row) if row else None

    def batches(self, *, api: str | None = None, endpoint: str | None = None, open_only: bool = False) -> list[BatchRecord]:
        query, params = "SELECT * FROM batches WHERE 1=1", []
        if api is not None:
            query += " AND api = ?"
            params.append(api)
        if endpoint is not None:
            query += " AND endpoint = ?"
            params.append(endpoint)
        if open_only:
            query += " AND state != ?"
            params.append(COLLECTED)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY local_id", params).fetchall()
        return [BatchRecord(*row) for row in rows]

    def custom_ids(self, local_id: int) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT custom_id FROM batch_requests WHERE local_id = ? ORDER BY rowid", (local_id,))]

    def history(self, custom_ids: list[str], *, api: str, endpoint: str) -> dict[str, RequestHistory]:
        """What is known of each of `custom_ids` in this API/endpoint's batches (absent: never submitted)."""
        out: dict[str, dict[str, Any]] = {}
        query = ("SELECT r.custom_id, r.local_id, r.response, r.error, b.state FROM batch_requests r "
                 "JOIN batches b ON b.local_id = r.local_id WHERE b.api = ? AND b.endpoint = ? AND r.custom_id IN ({})")
        with self._lock:
            for start in range(0, len(custom_ids), 500):  # SQLite's bound-parameter limit
                chunk = custom_ids[start:start + 500]
                rows = self._conn.execute(query.format(",".join("?" * len(chunk))), (api, endpoint, *chunk)).fetchall()
                for cid, local_id, response, error, state in rows:
                    entry = out.setdefault(cid, {"response": None, "open": None, "errors": []})
                    if response is not None:
                        entry["response"] = response
                    elif state != COLLECTED:
                        entry["open"] = local_id
                    else:
                        entry["errors"].append(error or "no result")
        return {cid: RequestHistory(response_from_json(e["response"]) if e["response"] else None, e["open"],
                                    tuple(e["errors"])) for cid, e in out.items()}

    def request_counts(self) -> dict[int, tuple[int, int]]:
        """local_id -> (requests with a reply, requests that came back without one) over the whole ledger."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT local_id, SUM(response IS NOT NULL), SUM(response IS NULL AND error IS NOT NULL) "
                "FROM batch_requests GROUP BY local_id").fetchall()
        return {local_id: (int(ok or 0), int(bad or 0)) for local_id, ok, bad in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
