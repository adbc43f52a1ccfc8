"""An on-disk cache of LLM calls, so a killed or repeated run never pays for the same call twice.

One SQLite row per call, committed as soon as the reply arrives (WAL journal: a SIGKILL loses at most the
call in flight, never a committed row). The key is the SHA-256 of canonical JSON of the provider identity
(model, endpoint; never credentials), a namespace (the prompt template version) and everything in the
request that changes the answer.

    cache = CallCache("~/.cache/bmc/calls.sqlite")
    provider = CachedProvider(OpenAIProvider("gpt-4o-mini"), cache, namespace=template.version_id)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from bmc_data.errors import InputError
from bmc_data.redaction import MASK, redact, replace_secrets

from .base import ChatRequest, ChatResponse, Provider, ProviderError

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def default_cache_dir() -> Path:
    """Where LLM calls are cached unless a `cache_dir` is given: `$BMC_CACHE_DIR`, else `~/.cache/bmc`."""
    return Path(os.environ.get("BMC_CACHE_DIR", Path.home() / ".cache" / "bmc"))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(ChatRequest))


def request_payload(request: ChatRequest, *, reply_only: bool = False) -> dict[str, Any]:
    """`request.cache_payload()` with numbers normalised, so `temperature=0` and `0.0` share a key.

    `reply_only`: also leave out what cannot change the reply: the seed of greedy decoding (temperature 0), so
    that `bridge` (seed 0) and `publish` (seed 42) share their calls."""
    # = request.cache_payload(), built directly: dataclasses.asdict deep-copies, ~10x slower
    payload = {name: getattr(request, name) for name in _REQUEST_FIELDS}
    payload["messages"] = [dict(m) for m in request.messages]
    schema = payload.pop("response_schema")
    if schema is not None:  # absent otherwise: keys of requests without one are those of older caches
        payload["response_schema"] = schema.as_dict()
    for name in ("temperature", "top_p"):
        if isinstance(payload.get(name), (int, float)) and not isinstance(payload.get(name), bool):
            payload[name] = float(payload[name])
    if reply_only and payload.get("temperature") == 0.0:
        payload["seed"] = None
    return payload


def _key_and_request_json(identity: dict[str, Any], namespace: str, request: ChatRequest, *,
                          reply_only: bool = False) -> tuple[str, str]:
    """(cache key, canonical JSON of the request payload), serialising the request once.

    The blob is exactly `_canonical({"identity": ..., "namespace": ..., "request": ...})` (keys in sorted
    order, nested values canonical themselves), so keys stay those of every cache already on disk."""
    request_json = _canonical(request_payload(request, reply_only=reply_only))
    blob = f'{{"identity":{_canonical(identity)},"namespace":{_canonical(namespace)},"request":{request_json}}}'
    # surrogatepass: a repair turn may quote a reply with a lone surrogate; valid text hashes exactly as before
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest(), request_json


def cache_key(identity: dict[str, Any], namespace: str, request: ChatRequest, *, reply_only: bool = False) -> str:
    """SHA-256 hex of canonical JSON of {identity, namespace, request payload} (`reply_only`: see
    `request_payload`; the batch ledger's request ids keep the full payload)."""
    return _key_and_request_json(identity, namespace, request, reply_only=reply_only)[0]


def older_keys(identity: dict[str, Any], namespace: str, request: ChatRequest) -> tuple[str, ...]:
    """Where caches written before the `reply_only` rule keep this call: under its key with the seed, when
    the rule left the seed out (temperature 0)."""
    if float(request.temperature) != 0.0 or request.seed is None:
        return ()
    return (cache_key(identity, namespace, request),)


# A secret in a reply is stored as a reference to the same text in the request's messages (the user's own text,
# echoed), so that a rerun reproduces the reply byte for byte while no secret reaches the disk; one the server
# added (an echoed header) is stored masked.
_SEALED = re.compile("\x00secret:([0-9]+):([0-9]+)\x00")  # a raw NUL never occurs in canonical JSON


def messages_json(request: ChatRequest) -> str:
    return _canonical([dict(m) for m in request.messages])


def seal_secrets(stored_json: str, messages: str) -> str:
    """`stored_json` with each secret replaced by where it is in `messages` (canonical JSON), else masked."""
    def reference(found: str) -> str:
        at = messages.find(found)
        return MASK if at < 0 else f"\x00secret:{at}:{len(found)}\x00"

    return replace_secrets(stored_json, reference)


def unseal_secrets(stored_json: str, messages: str | None) -> str:
    """The reply as the server sent it (references filled from `messages`; without them, masked)."""
    if "\x00" not in stored_json:
        return stored_json
    return _SEALED.sub(lambda m: messages[int(m[1]):int(m[1]) + int(m[2])] if messages else MASK, stored_json)


def response_to_json(response: ChatResponse) -> str:
    """How a reply is stored (the call cache and the batch ledger)."""
    return _canonical({
        "text": response.text, "finish_reason": response.finish_reason, "input_tokens": response.input_tokens,
        "output_tokens": response.output_tokens, "model": response.model,
    })


def _storable(json_text: str) -> str:
    """JSON text SQLite can store: a lone surrogate (a server may send one) becomes its JSON escape, which reads back
    as the same string."""
    try:
        json_text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(json.loads(json_text), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return json_text


def response_from_json(text: str) -> ChatResponse:
    """A stored reply, marked `cached`; malformed JSON or a missing field raises ValueError/KeyError/TypeError."""
    data = json.loads(text)
    return ChatResponse(text=data["text"], finish_reason=data["finish_reason"], input_tokens=data["input_tokens"],
                        output_tokens=data["output_tokens"], model=data.get("model", ""), cached=True)



def open_cache_db(path: str | Path, timeout_s: float = 30.0) -> tuple[Path, threading.Lock, sqlite3.Connection]:
    """The cache's SQLite file (shared by the call cache and the batch ledger): one connection per process,
    guarded by a lock, in autocommit mode (every write is committed when it returns)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    try:
        conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
        with lock:
            # WAL + NORMAL survives a killed process (only an OS crash may lose the last commits); NORMAL first, so
            # that switching a new file to WAL is not synced at FULL
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("SELECT name FROM sqlite_master LIMIT 1")  # reads the header: a corrupt file fails here
    except sqlite3.DatabaseError as error:
        raise unusable_cache(path, str(error)) from None
    return path, lock, conn

def _masked_user_text(stored_request: str, messages: str) -> bool:
    """Whether a stored request shows the user's messages masked where they are now kept: its reply was masked
    the same way (older versions masked every value of a key variable, `password` included)."""
    try:
        stored = _canonical(json.loads(stored_request)["messages"])
    except (ValueError, KeyError, TypeError):
        return False
    return stored != redact(messages)



def unusable_cache(path: Path, problem: str) -> InputError:
    """A cache file that cannot be used: one line naming it and how to move it aside (no call was made)."""
    return InputError(f"{path}: cannot open the call cache ({problem}); move it aside (mv {path} {path}.bad) "
                      "or pass another --cache-dir, and rerun: the calls it held will be made again")

class CallCache:
    """SQLite store of call results, safe to share between asyncio tasks, threads and processes.

    Each write is its own committed transaction. One connection guarded by a lock serves all threads
    of this process; other processes coordinate through SQLite's own locking.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0):
        self.path, self._lock, self._conn = open_cache_db(path, timeout_s)
        with self._lock:
            self._conn.execute(_SCHEMA)
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise unusable_cache(self.path, f"schema version {version}, expected {_SCHEMA_VERSION}")
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.stale = 0  # entries whose masking rewrote the user's text (written by older versions)

    def get(self, key: str, *older_keys: str, messages: str | None = None) -> ChatResponse | None:
        """The cached response for `key` (or else the first of `older_keys` stored), with `cached=True`, or None.

        `messages`: the request's `messages_json`, to restore secrets the reply quoted from it."""
        with self._lock:
            for candidate in (key, *older_keys):
                row = self._conn.execute("SELECT response, request FROM calls WHERE key = ?", (candidate,)).fetchone()
                if row is not None:
                    break
        if row is not None and messages is not None and MASK in row[0] and _masked_user_text(row[1], messages):
            self.stale += 1
            if self.stale == 1:
                logger.warning("%s: a reply cached by an older bmc had the user's own text masked (a dummy key such "
                               "as 'password' was taken for a secret); calling again for such entries", self.path)
            row = None
        if row is not None:
            try:
                response = response_from_json(unseal_secrets(row[0], messages))
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("%s: unreadable cache entry %s (%s); calling again", self.path, key[:12], error)
            else:
                self.hits += 1
                return response
        self.misses += 1
        return None

    def put(self, key: str, response: ChatResponse, *, namespace: str, identity: dict[str, Any],
            request: ChatRequest, request_json: str | None = None) -> None:
        """Store one call result (committed before this returns).

        `request_json`: the request's canonical payload JSON when the caller already has it."""
        if request_json is None:
            request_json = _canonical(request_payload(request))
        # no secret reaches the disk, even inside a prompt or a reply (the key is a hash); the reply is sealed,
        # not masked, so that what the server sent comes back on a rerun (`seal_secrets`)
        values = (key, namespace, str(identity.get("provider", "")), str(identity.get("model", "")),
                  _storable(redact(request_json)),
                  _storable(seal_secrets(response_to_json(response), messages_json(request))), time.time())
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        self.writes += 1

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def stats(self) -> dict[str, Any]:
        """Entries on disk (total and per namespace) and this session's hits, misses and writes."""
        with self._lock:
            rows = self._conn.execute("SELECT namespace, COUNT(*) FROM calls GROUP BY namespace").fetchall()
        return {
            "path": str(self.path),
            "entries": sum(n for _, n in rows),
            "by_namespace": dict(rows),
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
        }

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> CallCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CallCache({str(self.path)!r})"


class CachedProvider(Provider):
    """Serves repeated calls from a `CallCache`; everything else goes to the wrapped provider.

    A hit returns the stored reply with `cached=True` and counts `usage.cached_calls`; a miss calls the
    provider (which counts the call, its tokens and cost) and stores the reply. Truncated replies are
    stored (they were paid for); failed calls are not. Identical requests in flight at the same time
    make one call. `usage` is the wrapped provider's own `Usage`, so one object has the whole account.
    """

    def __init__(self, provider: Provider, cache: CallCache, namespace: str):
        super().__init__(provider.model, pricing=provider.pricing)
        self.name = provider.name
        self.inner = provider
        self.cache = cache
        self.namespace = namespace
        self.usage = provider.usage
        self._in_flight: dict[str, asyncio.Future[ChatResponse]] = {}

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def key(self, request: ChatRequest) -> str:
        return cache_key(self.inner.identity(), self.namespace, request, reply_only=True)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        identity = self.inner.identity()
        key, request_json = _key_and_request_json(identity, self.namespace, request, reply_only=True)
        legacy = older_keys(identity, self.namespace, request)
        messages = messages_json(request)
        while True:
            hit = self.cache.get(key, *legacy, messages=messages)
            if hit is not None:
                self.usage.cached_calls += 1
                return hit
            pending = self._in_flight.get(key)
            if pending is None or pending.get_loop() is not asyncio.get_running_loop():
                break
            try:
                response = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled():  # the caller that made the call gave up: try again ourselves
                    continue
                raise
            self.usage.cached_calls += 1
            return dataclasses.replace(response, cached=True)
        return await self._call_and_store(key, request, request_json)

    async def _call_and_store(self, key: str, request: ChatRequest, request_json: str | None = None) -> ChatResponse:
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            response = await self.inner.complete(request)
            self._store(key, request, response, request_json)
        except ProviderError as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: nobody may be waiting on it
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(response)
            return response
        finally:
            self._in_flight.pop(key, None)

    def _store(self, key: str, request: ChatRequest, response: ChatResponse, request_json: str | None = None) -> None:
        try:
            self.cache.put(key, response, namespace=self.namespace, identity=self.inner.identity(), request=request,
                           request_json=request_json)
        except sqlite3.Error as error:  # the reply is paid for and good: use it, even if it cannot be kept
            logger.error("%s: could not store a call result (%s); it will be made again next run", self.cache.path, error)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def stats(self) -> dict[str, Any]:
        return {**self.cache.stats(), "usage": self.usage.as_dict()}

    def __repr__(self) -> str:
        return f"CachedProvider({self.inner!r}, cache={self.cache!r}, namespace={self.namespace!r})"
