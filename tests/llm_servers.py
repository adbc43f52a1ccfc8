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

Structured replies (a JSON schema in the request) are checked as the real APIs check them, and answered with
`structured_reply(messages, schema)` (default: `schema_instance`), which must conform to the schema (a
constrained decoder cannot write anything else; a test reply that does not is answered with HTTP 500):
* OpenAI `response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}`: the name
  must match [a-zA-Z0-9_-]{1,64} and the schema OpenAI's strict subset (`strict_schema_problems`), else 400;
* vLLM `guided_json: schema` or `structured_outputs: {"json": schema}` (only where `vllm_fields=True`; else,
  as api.openai.com does, an unknown field is a 400);
* Anthropic `tools: [{"name", "input_schema"}]` with `tool_choice: {"type": "tool", "name"}` naming one of them:
  answered with a `tool_use` block holding the reply as its input, stop_reason "tool_use".
`server.structured` records (api, field, schema) for each such request.

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
#: (messages, schema) -> the reply object (or a string, sent as it is: a server that ignored the schema)
StructuredReplyFn = Callable[[Messages, dict[str, Any]], Any]

#: the JSON Schema keywords of OpenAI's strict subset that bmc's schemas may use
_STRICT_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "description"}
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def strict_schema_problems(schema: Any, where: str = "schema") -> list[str]:
    """Why OpenAI's strict structured outputs would refuse `schema` (restricted to the keywords bmc uses)."""
    if not isinstance(schema, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}: keyword {k!r} is not supported" for k in schema if k not in _STRICT_KEYWORDS]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False:
            problems.append(f"{where}: 'additionalProperties' must be false")
        if sorted(schema.get("required") or []) != sorted(properties):
            problems.append(f"{where}: 'required' must list every property")
        for name, sub in properties.items():
            problems += strict_schema_problems(sub, f"{where}.{name}")
    elif kind == "array":
        problems += strict_schema_problems(schema.get("items"), f"{where}[]")
    elif kind not in ("string", "number", "integer", "boolean"):
        problems.append(f"{where}: unsupported type {kind!r}")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        problems.append(f"{where}: 'enum' must be a non-empty list")
    return problems


def conformance_problems(value: Any, schema: dict[str, Any], where: str = "reply") -> list[str]:
    """Where `value` breaks `schema` (the subset of `strict_schema_problems`)."""
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    kind = schema.get("type")
    if kind in kinds and not isinstance(value, kinds[kind]):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of the enum values"]
    problems: list[str] = []
    if kind == "object":
        properties = schema.get("properties") or {}
        problems += [f"{where}: missing {k!r}" for k in schema.get("required") or [] if k not in value]
        if schema.get("additionalProperties") is False:
            problems += [f"{where}: unexpected {k!r}" for k in value if k not in properties]
        for name, sub in properties.items():
            if name in value:
                problems += conformance_problems(value[name], sub, f"{where}.{name}")
    elif kind == "array":
        for i, item in enumerate(value):
            problems += conformance_problems(item, schema.get("items") or {}, f"{where}[{i}]")
    return problems


def schema_instance(messages: Messages, schema: dict[str, Any]) -> Any:
    """A reply a constrained decoder could write: the first enum value, "REVISE" for a verdict, one edit of the
    first segment appending " (revised)" for bmc's edit list, "x" for other strings."""
    def build(node: dict[str, Any], name: str = "") -> Any:
        kind = node.get("type")
        if "enum" in node:
            return "REVISE" if "REVISE" in node["enum"] else node["enum"][0]
        if kind == "object":
            props = node.get("properties") or {}
            if set(props) == {"segment", "replacement"}:
                first = props["segment"]["enum"][0]
                return {"segment": first, "replacement": f"{first} (revised)"}
            return {k: build(v, k) for k, v in props.items()}
        if kind == "array":
            return [build(node.get("items") or {})]
        return {"string": "x", "boolean": True, "integer": 0, "number": 0}.get(kind, None)
    return build(schema)


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


@dataclass(frozen=True)
class Refusal:
    """A `structured_reply` result: the model refused (OpenAI: `message.refusal` with no content)."""

    message: str


def structured_request(api: str, body: Any, vllm_fields: bool) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(field, schema, problem) of a request that asks for a schema-constrained reply; (None, None, None) if none."""
    if not isinstance(body, dict):
        return None, None, None
    if api == "anthropic":
        tools, choice = body.get("tools"), body.get("tool_choice")
        if not tools:
            return None, None, None
        names = {t.get("name"): t for t in tools if isinstance(t, dict)}
        if not isinstance(choice, dict) or choice.get("type") != "tool" or choice.get("name") not in names:
            return "tools", None, "tool_choice must force one of the tools ({'type': 'tool', 'name': ...})"
        schema = names[choice["name"]].get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return "tools", None, "tools.input_schema: the root must be of type 'object'"
        return f"tool:{choice['name']}", schema, None
    if "response_format" in body:
        fmt = body["response_format"]
        spec = fmt.get("json_schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None
        if not isinstance(spec, dict):
            return "response_format", None, "response_format must be {'type': 'json_schema', 'json_schema': {...}}"
        if not _SCHEMA_NAME.fullmatch(str(spec.get("name", ""))):
            return "response_format", None, "json_schema.name must match ^[a-zA-Z0-9_-]{1,64}$"
        problems = strict_schema_problems(spec.get("schema")) if spec.get("strict") is True else ["strict is not true"]
        if problems:
            return "response_format", None, "Invalid schema for response_format: " + "; ".join(problems[:3])
        return "response_format", spec["schema"], None
    for field, schema in (("guided_json", body.get("guided_json")),
                          ("structured_outputs", (body.get("structured_outputs") or {}).get("json"))):
        if field in body:
            if not vllm_fields:
                return field, None, f"Unrecognized request argument supplied: {field}"
            if not isinstance(schema, dict):
                return field, None, f"{field}: expected a JSON schema object"
            return field, schema, None
    return None, None, None


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
        field, schema, problem = structured_request(api, body, owner.vllm_fields)
        if problem is not None:
            return self._error(api, 400, problem, ())
        tool = None
        if schema is not None:
            owner.structured.append((api, field, schema))
            reply = owner.structured_reply(messages, schema)
            if isinstance(reply, Refusal) and api == "openai":
                body_out = _completion(api, body.get("model", ""), index, "", False, 0, 0)
                body_out["choices"][0]["message"].update(content=None, refusal=reply.message)
                return self._json(200, body_out)
            if not isinstance(reply, str):
                problems = conformance_problems(reply, schema)
                if problems:
                    return self._error(api, 500, "test reply does not conform to the schema: " + "; ".join(problems[:3]), ())
                tool = field[len("tool:"):] if field.startswith("tool:") else None
                reply = json.dumps(reply, ensure_ascii=False)
            text = reply
        else:
            text = owner.reply(messages)
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30
        words = text.split()
        truncated = fault is not None and fault.kind == "truncate"
        if len(words) > limit:
            text, truncated = " ".join(words[:limit]), True
        elif truncated:
            text = " ".join(words[: max(1, len(words) // 2)])
        usage_in = sum(_words(m["content"]) for m in messages)
        self._json(200, _completion(api, body.get("model", ""), index, text, truncated, usage_in, _words(text), tool))

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


def _completion(api: str, model: str, index: int, text: str, truncated: bool, n_in: int, n_out: int,
                tool: str | None = None) -> dict[str, Any]:
    if api == "anthropic":
        if tool is not None and not truncated:  # the forced tool's call, the reply as its input
            content: list[dict[str, Any]] = [{"type": "tool_use", "id": f"toolu_{index}", "name": tool,
                                              "input": json.loads(text)}]
        else:
            content = [{"type": "text", "text": text}]
        return {
            "id": f"msg_{index}", "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": "max_tokens" if truncated else ("tool_use" if tool else "end_turn"), "stop_sequence": None,
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
        structured_reply: the reply object to a request with a JSON schema (see the module docstring).
        vllm_fields: accept vLLM's `guided_json` / `structured_outputs` (else they are refused, as OpenAI does).
    """

    def __init__(self, *, reply: ReplyFn | None = None, faults: Iterable[Fault | None] = (),
                 fault_fn: Callable[[int, Any], Fault | None] | None = None, latency_s: float = 0.0,
                 api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 structured_reply: StructuredReplyFn | None = None, vllm_fields: bool = True):
        self.reply: ReplyFn = reply or echo_reply
        self.structured_reply: StructuredReplyFn = structured_reply or schema_instance
        self.vllm_fields = vllm_fields
        self.structured: list[tuple[str, str, dict[str, Any]]] = []
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
