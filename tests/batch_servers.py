"""A loopback server speaking the OpenAI files + batches API and the Anthropic message-batches API.

    with BatchServer(reply=bridge_reply) as server:
        server.script(BatchScript(polls=2, final="expired", finished=3))     # the next batch's fate
        provider = OpenAIBatchProvider("m", base_url=server.openai_base_url, poll_interval_s=0.01, ...)

Each created batch takes the next queued `BatchScript` (default: completes at the first poll). A script says
how many polls answer `in_progress`, how the batch ends (`completed`, `expired`, `cancelled`, `failed`), how
many requests got a result before an expiry or cancellation, which requests get an error line, and whether
a malformed line is slipped into the results. `upload_faults` queues HTTP statuses for the next uploads /
creates (e.g. 429). `hold = True` keeps every batch `in_progress` until cleared. Replies come from
`reply(messages)` with the same wire bodies as tests/llm_servers.py.

Also a script for subprocess use (benchmarks): `python tests/batch_servers.py --port 0` prints
`READY http://127.0.0.1:PORT` and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_servers import (  # noqa: E402
    _completion,
    _messages,
    _words,
    bridge_reply,
    schema_instance,
    serve_until_signalled,
    structured_request,
)


@dataclass
class BatchScript:
    polls: int = 0  # polls answered in_progress before the batch ends
    final: str = "completed"  # completed | expired | cancelled | failed
    finished: int | None = None  # expired/cancelled: the first N requests have results (None: all)
    error_every: int = 0  # every k-th request (1-based) gets an error line instead of a reply
    malformed_line: bool = False  # one result line cut in half (unreadable)
    unfinished_in_error_file: bool = True  # OpenAI lists unfinished requests (batch_expired) in the error file


@dataclass
class _Batch:
    id: str
    api: str
    requests: list[dict[str, Any]]
    script: BatchScript
    created_at: int
    metadata: dict[str, Any] = field(default_factory=dict)
    input_file_id: str = ""
    polls: int = 0
    status: str = "in_progress"
    cancel_requested: bool = False
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: bytes = b""  # anthropic results JSONL
    counts: dict[str, int] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:  # noqa: N802
        self.server.owner._route(self, "GET", b"")

    def do_POST(self) -> None:  # noqa: N802
        self.server.owner._route(self, "POST", self._body())

    def send(self, status: int, payload: Any, *, raw: bytes | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: BatchServer


def _multipart_file(body: bytes, content_type: str) -> bytes:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not boundary:
        raise ValueError("no multipart boundary")
    for part in body.split(b"--" + boundary.group(1).encode()):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data[:-2] if data.endswith(b"\r\n") else data
    raise ValueError("no file part")


class BatchServer:
    def __init__(self, *, reply: Any = None, host: str = "127.0.0.1", port: int = 0):
        self.reply = reply or bridge_reply
        self.scripts: deque[BatchScript] = deque()
        self.upload_faults: deque[int] = deque()
        self.hold = False
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # --- scripting / inspection ----------------------------------------------------------------------
    def script(self, *scripts: BatchScript) -> None:
        self.scripts.extend(scripts)

    def created(self, api: str | None = None) -> list[_Batch]:
        return [b for b in self.batches.values() if api is None or b.api == api]

    def submitted_custom_ids(self) -> list[str]:
        return [r["custom_id"] for b in self.batches.values() for r in b.requests]

    # --- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> BatchServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> BatchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- routing -----------------------------------------------------------------------------------
    def _route(self, h: _Handler, method: str, raw: bytes) -> None:
        parsed = urlparse(h.path)
        path = parsed.path.rstrip("/")
        with self._lock:
            self.log.append((method, path))
        try:
            if method == "POST" and path == "/v1/files":
                return self._upload(h, raw)
            if method == "GET" and (m := re.fullmatch(r"/v1/files/([^/]+)/content", path)):
                data = self.files.get(m.group(1))
                return h.send(200, None, raw=data) if data is not None else h.send(404, {"error": {"message": "no such file"}})
            if method == "POST" and path == "/v1/batches":
                return self._create_openai(h, json.loads(raw))
            if method == "GET" and path == "/v1/batches":
                return self._list_openai(h, parse_qs(parsed.query))
            if m := re.fullmatch(r"/v1/batches/([^/]+)(/cancel)?", path):
                return self._batch_openai(h, m.group(1), cancel=bool(m.group(2)) and method == "POST")
            if method == "POST" and path == "/v1/messages/batches":
                return self._create_anthropic(h, json.loads(raw))
            if m := re.fullmatch(r"/v1/messages/batches/([^/]+)(/cancel|/results)?", path):
                return self._batch_anthropic(h, m.group(1), m.group(2) or "", method)
            h.send(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
        except Exception as error:  # a bug here must show in the test, not hang it
            h.send(500, {"error": {"message": f"test server error: {type(error).__name__}: {error}"}})

    def _fault(self, h: _Handler) -> bool:
        with self._lock:
            status = self.upload_faults.popleft() if self.upload_faults else None
        if status is None:
            return False
        h.send(status, {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}},
               headers=(("Retry-After", "0"),))
        return True

    def _new_batch(self, api: str, requests: list[dict[str, Any]], **extra: Any) -> _Batch:
        with self._lock:
            prefix = "batch" if api == "openai" else "msgbatch"
            batch = _Batch(id=f"{prefix}_{len(self.batches) + 1}", api=api, requests=requests,
                           script=self.scripts.popleft() if self.scripts else BatchScript(), created_at=int(time.time()),
                           **extra)
            self.batches[batch.id] = batch
        return batch

    def _advance(self, batch: _Batch) -> None:
        """One poll: stay in progress, or end the batch as scripted."""
        if batch.status not in ("in_progress", "cancelling", "canceling"):
            return
        batch.polls += 1
        if batch.cancel_requested:
            self._end(batch, "cancelled")
        elif not self.hold and batch.polls > batch.script.polls:
            self._end(batch, batch.script.final)

    def _answer(self, api: str, request: dict[str, Any], index: int) -> dict[str, Any]:
        body = request["body"] if api == "openai" else request["params"]
        messages = _messages(api, body)
        field, schema, problem = structured_request(api, body, vllm_fields=False)  # batch APIs: the official forms
        tool = field[len("tool:"):] if schema is not None and field.startswith("tool:") else None
        text = json.dumps(schema_instance(messages, schema)) if schema is not None else (
            f"refused: {problem}" if problem else self.reply(messages))
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30
        words = text.split()
        truncated = len(words) > limit
        if truncated:
            text = " ".join(words[:limit])
        return _completion(api, body.get("model", ""), index, text, truncated, sum(_words(m["content"]) for m in messages),
                           _words(text), tool)

    def _end(self, batch: _Batch, final: str) -> None:
        script = batch.script
        finished = len(batch.requests) if final in ("completed", "failed") or script.finished is None else script.finished
        out, err, results = [], [], []
        counts = {"completed": 0, "failed": 0}
        for i, request in enumerate(batch.requests):
            cid = request["custom_id"]
            if final == "failed":
                break
            if i >= finished:
                if batch.api == "openai" and script.unfinished_in_error_file:
                    code = "batch_expired" if final == "expired" else "batch_cancelled"
                    err.append({"id": f"req_{i}", "custom_id": cid, "response": None,
                                "error": {"code": code, "message": f"This request could not be executed before the batch {final}."}})
                elif batch.api == "anthropic":
                    results.append({"custom_id": cid, "result": {"type": "expired" if final == "expired" else "canceled"}})
                continue
            if script.error_every and (i + 1) % script.error_every == 0:
                counts["failed"] += 1
                message = f"injected error for request {i}"
                if batch.api == "openai":
                    err.append({"id": f"req_{i}", "custom_id": cid, "response": {
                        "status_code": 400, "request_id": f"r{i}", "body": {"error": {"message": message, "type": "invalid_request_error"}}},
                        "error": None})
                else:
                    results.append({"custom_id": cid, "result": {"type": "errored", "error": {
                        "type": "error", "error": {"type": "invalid_request_error", "message": message}}}})
                continue
            counts["completed"] += 1
            completion = self._answer(batch.api, request, i)
            if batch.api == "openai":
                out.append({"id": f"req_{i}", "custom_id": cid,
                            "response": {"status_code": 200, "request_id": f"r{i}", "body": completion}, "error": None})
            else:
                results.append({"custom_id": cid, "result": {"type": "succeeded", "message": completion}})
        lines = [json.dumps(x) for x in (out if batch.api == "openai" else results)]
        if script.malformed_line and lines:
            middle = len(lines) // 2  # that request's result line is cut short: it has no readable result
            lines[middle] = lines[middle][: len(lines[middle]) // 2]
        data = ("\n".join(lines) + "\n").encode() if lines else b""
        if batch.api == "openai":
            if data:
                batch.output_file_id = f"file-out-{batch.id}"
                self.files[batch.output_file_id] = data
            if err:
                batch.error_file_id = f"file-err-{batch.id}"
                self.files[batch.error_file_id] = ("\n".join(json.dumps(x) for x in err) + "\n").encode()
            batch.status = final
        else:
            batch.results = data
            batch.status = "ended"
        batch.counts = {**counts, "total": len(batch.requests)}

    # --- OpenAI -------------------------------------------------------------------------------------
    def _upload(self, h: _Handler, raw: bytes) -> None:
        if self._fault(h):
            return
        data = _multipart_file(raw, h.headers.get("Content-Type", ""))
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
        h.send(200, {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                     "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})

    def _openai_json(self, b: _Batch) -> dict[str, Any]:
        counts = b.counts or {"total": len(b.requests), "completed": 0, "failed": 0}
        return {"id": b.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": (
                    {"object": "list", "data": [{"code": "invalid_request", "message": "scripted validation failure"}]}
                    if b.status == "failed" else None),
                "input_file_id": b.input_file_id, "completion_window": "24h", "status": b.status,
                "output_file_id": b.output_file_id, "error_file_id": b.error_file_id, "created_at": b.created_at,
                "request_counts": counts, "metadata": b.metadata}

    def _create_openai(self, h: _Handler, body: dict[str, Any]) -> None:
        if self._fault(h):
            return
        data = self.files.get(body.get("input_file_id", ""))
        if data is None:
            return h.send(400, {"error": {"message": "unknown input_file_id"}})
        requests = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        batch = self._new_batch("openai", requests, metadata=body.get("metadata") or {},
                                input_file_id=body["input_file_id"])
        h.send(200, self._openai_json(batch))

    def _list_openai(self, h: _Handler, query: dict[str, list[str]]) -> None:
        batches = [self._openai_json(b) for b in reversed(list(self.batches.values())) if b.api == "openai"]
        h.send(200, {"object": "list", "data": batches, "first_id": batches[0]["id"] if batches else None,
                     "last_id": batches[-1]["id"] if batches else None, "has_more": False})

    def _batch_openai(self, h: _Handler, batch_id: str, *, cancel: bool) -> None:
        batch = self.batches.get(batch_id)
        if batch is None:
            return h.send(404, {"error": {"message": f"no batch {batch_id}"}})
        with self._lock:
            if cancel:
                if batch.status == "in_progress":
                    batch.cancel_requested, batch.status = True, "cancelling"
            else:
                self._advance(batch)
        h.send(200, self._openai_json(batch))

    # --- Anthropic ----------------------------------------------------------------------------------
    def _anthropic_json(self, b: _Batch) -> dict[str, Any]:
        ended = b.status == "ended"
        counts = {"processing": 0 if ended else len(b.requests), "succeeded": b.counts.get("completed", 0),
                  "errored": b.counts.get("failed", 0), "canceled": 0, "expired": 0}
        stamp = "2026-01-01T00:00:00Z"
        return {"id": b.id, "type": "message_batch", "processing_status": b.status, "request_counts": counts,
                "created_at": stamp, "expires_at": stamp, "ended_at": stamp if ended else None,
                "cancel_initiated_at": stamp if b.cancel_requested else None, "archived_at": None,
                "results_url": f"{self.url}/v1/messages/batches/{b.id}/results" if ended else None}

    def _create_anthropic(self, h: _Handler, body: dict[str, Any]) -> None:
        if self._fault(h):
            return
        batch = self._new_batch("anthropic", list(body["requests"]))
        h.send(200, self._anthropic_json(batch))

    def _batch_anthropic(self, h: _Handler, batch_id: str, tail: str, method: str) -> None:
        batch = self.batches.get(batch_id)
        if batch is None:
            return h.send(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no batch {batch_id}"}})
        with self._lock:
            if tail == "/results":
                if batch.status != "ended":
                    return h.send(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "not ended"}})
                return h.send(200, None, raw=batch.results)
            if tail == "/cancel" and method == "POST":
                if batch.status == "in_progress":
                    batch.cancel_requested, batch.status = True, "canceling"
            else:
                self._advance(batch)
        h.send(200, self._anthropic_json(batch))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    serve_until_signalled(BatchServer(port=args.port).start())


if __name__ == "__main__":
    main()
