"""Real HTTP servers on 127.0.0.1 that speak the OpenAI and Anthropic wire formats, with scriptable faults.

    with LLMServer(reply=lambda messages: "<revised>x</revised>") as server:
        server.add_faults(Fault.rate_limited(retry_after=1), Fault.server_error())
        provider = OpenAIProvider("test-model", base_url=server.openai_base_url)
        ...
        assert server.call_count == 3

One server answers both `POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic). Each
request takes the next scripted fault (or asks `fault_fn(index, body)`); with none it is answered by
`reply(messages)` (default: echo the last message). Token counts are whitespace word counts, and replies
longer than `max_tokens` words are cut with finish_reason "length" / stop_reason "max_tokens".

Also a script, for subprocess use (benchmarks, kill tests):
    python tests/llm_servers.py --port 0 --latency-ms 200 [--reply tests.llm_servers:bridge_reply]
prints `READY http://127.0.0.1:PORT` once it accepts connections and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]
ReplyFn = Callable[[Messages], str]


@dataclass(frozen=True)
class Fault:
    """What to do to one request instead of answering it normally."""

    kind: str  # "status" | "hang" | "drop" | "malformed" | "truncate" | "delay"
    status: int = 500
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    message: str = "injected fault"

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1.0, *, retry_after_ms: float | None = None) -> Fault:
        headers = []
        if retry_after is not None:
            headers.append(("Retry-After", f"{retry_after:g}"))
        if retry_after_ms is not None:
            headers.append(("retry-after-ms", f"{retry_after_ms:g}"))
        return cls("status", 429, tuple(headers), message="Rate limit reached")

    @classmethod
    def error(cls, status: int, message: str = "injected error", *, retry_after: float | None = None) -> Fault:
        headers = (("Retry-After", f"{retry_after:g}"),) if retry_after is not None else ()
        return cls("status", status, headers, message=message)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls("status", status, message="internal server error")

    @classmethod
    def overloaded(cls) -> Fault:
        return cls("status", 529, message="Overloaded")

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        """Read the request, then send nothing for `seconds` (longer than the client's timeout)."""
        return cls("hang", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """Read the request and close the connection without a reply."""
        return cls("drop")

    @classmethod
    def malformed(cls) -> Fault:
        """HTTP 200, `Content-Type: application/json`, a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def truncated(cls) -> Fault:
        """A normal reply cut short: finish_reason "length" / stop_reason "max_tokens"."""
        return cls("truncate")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """A normal reply, `seconds` late."""
        return cls("delay", seconds=seconds)


@dataclass
class RecordedRequest:
    index: int
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any
    fault: str | None
    received_at: float = field(default_factory=time.monotonic)


def echo_reply(messages: Messages) -> str:
    return messages[-1]["content"] if messages else ""


def _section(text: str, title: str) -> str:
    match = re.search(rf"### {re.escape(title)}\n(.*?)(?:\n\n### |\Z)", text, flags=re.S)
    return match.group(1).strip() if match else ""


def bridge_reply(messages: Messages) -> str:
    """A well-formed editor reply to the bundled templates: revise y_l by appending one sentence.

    Instruction template: `<revised>y_l + edit</revised>`; QA/math template: REVISE with the reference
    solution's text (so its final answer checks out).
    """
    text = messages[-1]["content"] if messages else ""
    if "### Student solution" in text:
        return f"<verdict>REVISE</verdict>\n<revised>\n{_section(text, 'Reference solution (correct)')}\n</revised>"
    rejected = _section(text, "Dispreferred response")
    return f"<revised>\n{rejected} (revised)\n</revised>"


def _words(text: str) -> int:
    return len(text.split())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs do
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms a reply
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logs
        return

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        owner._enter()
        try:
            self._serve(owner, body)
        finally:
            owner._leave()

    def _serve(self, owner: LLMServer, body: Any) -> None:
        route = self.path.split("?", 1)[0].rstrip("/")  # the query (`?api_key=...`) is not part of the route
        api = "openai" if route.endswith("/chat/completions") else ("anthropic" if route.endswith("/messages") else None)
        index, fault = owner._next(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        if api is None:
            return self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        if owner.api_key is not None and self._key(api) != owner.api_key:
            return self._error(api, 401, "invalid api key", ())
        if owner.latency_s:
            owner._stopping.wait(owner.latency_s)
        if fault is not None:
            if fault.kind == "status":
                return self._error(api, fault.status, fault.message, fault.headers)
            if fault.kind == "hang":
                owner._stopping.wait(fault.seconds)
                self.close_connection = True
                return None
            if fault.kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            if fault.kind == "malformed":
                return self._raw(200, b'{"id": "broken", "choices": [', "application/json")
            if fault.kind == "delay":
                owner._stopping.wait(fault.seconds)
        messages = _messages(api, body)
        text = owner.reply(messages)
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30
        words = text.split()
        truncated = fault is not None and fault.kind == "truncate"
        if len(words) > limit:
            text, truncated = " ".join(words[:limit]), True
        elif truncated:
            text = " ".join(words[: max(1, len(words) // 2)])
        usage_in = sum(_words(m["content"]) for m in messages)
        self._json(200, _completion(api, body.get("model", ""), index, text, truncated, usage_in, _words(text)))

    def _key(self, api: str) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            return auth[7:]
        return self.headers.get("x-api-key") if api == "anthropic" else None

    def _error(self, api: str, status: int, message: str, headers: Iterable[tuple[str, str]]) -> None:
        if api == "anthropic":
            kind = {529: "overloaded_error", 429: "rate_limit_error", 401: "authentication_error"}.get(status, "api_error")
            payload: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            payload = {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                                 "code": None, "param": None}}
        self._json(status, payload, headers)

    def _json(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(self, status: int, data: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _messages(api: str, body: dict[str, Any]) -> Messages:
    messages: Messages = []
    if api == "anthropic" and body.get("system"):
        system = body["system"]
        if isinstance(system, list):
            system = "".join(part.get("text", "") for part in system)
        messages.append({"role": "system", "content": system})
    for message in body.get("messages", []):
        content = message.get("content", "")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        messages.append({"role": message.get("role", "user"), "content": content})
    return messages


def _completion(api: str, model: str, index: int, text: str, truncated: bool, n_in: int, n_out: int) -> dict[str, Any]:
    if api == "anthropic":
        return {
            "id": f"msg_{index}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if truncated else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": n_in, "output_tokens": n_out},
        }
    return {
        "id": f"chatcmpl-{index}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "length" if truncated else "stop", "logprobs": None}],
        "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 makes concurrent connects wait for SYN retries
    owner: LLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up (a stopped run): not news
            return
        super().handle_error(request, client_address)


class LLMServer:
    """A loopback OpenAI + Anthropic compatible server; see the module docstring.

    Args:
        reply: text of the assistant reply, from the request's messages (Anthropic's `system` comes first).
        faults: faults for the next requests, in order (None: answer that one normally).
        fault_fn: alternatively `fault_fn(index, body) -> Fault | None`, asked when the queue is empty.
        latency_s: added to every request (before any fault), for benchmarks.
        api_key: when set, requests without this key get 401.
    """

    def __init__(self, *, reply: ReplyFn | None = None, faults: Iterable[Fault | None] = (),
                 fault_fn: Callable[[int, Any], Fault | None] | None = None, latency_s: float = 0.0,
                 api_key: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self.reply: ReplyFn = reply or echo_reply
        self.faults: deque[Fault | None] = deque(faults)
        self.fault_fn = fault_fn
        self.latency_s = latency_s
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # --- scripting and inspection ------------------------------------------------------------
    def add_faults(self, *faults: Fault | None) -> None:
        with self._lock:
            self.faults.extend(faults)

    @property
    def call_count(self) -> int:
        return len(self.requests)

    @property
    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self.max_in_flight = self.in_flight

    def _next(self, path: str, headers: dict[str, str], body: Any) -> tuple[int, Fault | None]:
        with self._lock:
            index = len(self.requests)
            if self.faults:
                fault = self.faults.popleft()
            else:
                fault = self.fault_fn(index, body) if self.fault_fn else None
            self.requests.append(RecordedRequest(index, path, headers, body, fault.kind if fault else None))
            return index, fault

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url  # the Anthropic SDK appends /v1/messages itself

    def start(self) -> LLMServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"llm-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging and sleeping handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def server_subprocess(*, latency_ms: float = 0.0, reply: str | None = None) -> Iterator[str]:
    """Run the server in a child process (so its CPU time is not the caller's); yields its base URL."""
    command = [sys.executable, str(Path(__file__).resolve()), "--port", "0", "--latency-ms", str(latency_ms)]
    if reply:
        command += ["--reply", reply]
    root = str(Path(__file__).resolve().parent.parent)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"test server did not start: {line!r}")
        yield line.split()[1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _load_reply(spec: str) -> ReplyFn:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--reply", default=None, help="module:function building the reply from the messages")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    server = LLMServer(reply=_load_reply(args.reply) if args.reply else None, latency_s=args.latency_ms / 1000,
                       host=args.host, port=args.port).start()
    serve_until_signalled(server)


def serve_until_signalled(server: Any) -> None:
    """A started server as a subprocess: print its URL, then serve until SIGTERM/SIGINT."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"READY {server.url}", flush=True)
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
