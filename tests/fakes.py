"""Fake Azure OpenAI deployments: real HTTP servers on 127.0.0.1 whose answers a test scripts."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = Callable[["_Handler"], None]


@dataclass
class Received:
    """One request as the fake deployment saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


def chat_body(tokens: int = 30, content: str = "Hello!") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": tokens - 10, "completion_tokens": 10,
                      "total_tokens": tokens}}


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
          delay: float = 0.0) -> Behaviour:
    """Answer with JSON (or raw bytes) after ``delay`` seconds."""
    payload = body if isinstance(body, bytes) else json.dumps(
        chat_body() if body is None else body).encode()

    def act(h: _Handler) -> None:
        if delay:
            h.fake.stopping.wait(delay)
        h.send_response(status)
        h.send_header("content-type", "application/json")
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
    return act


def throttle(retry_after: str | None = "10", retry_after_ms: str | None = None) -> Behaviour:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    return reply(429, {"error": {"code": "429", "message": "Rate limit is exceeded."}}, headers)


def sse_event(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


DONE_EVENT = b"data: [DONE]\n\n"


def chunk(index: int, text: str, usage_null: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                            "model": "gpt-4o",
                            "choices": [{"index": 0, "delta": {"content": text},
                                         "finish_reason": None}]}
    if usage_null:
        body["usage"] = None
    return body


def stream(events: list[bytes], gap: float = 0.0, break_after: int | None = None,
           first_delay: float = 0.0, chunked: bool = True) -> Behaviour:
    """Send server-sent events, ``gap`` seconds apart; optionally die after ``break_after``.

    Chunked (one event a chunk) like Azure, or delimited by closing the connection.
    """

    def act(h: _Handler) -> None:
        if first_delay:
            h.fake.stopping.wait(first_delay)
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        if chunked:
            h.send_header("transfer-encoding", "chunked")
        else:
            h.send_header("connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.flush()
        for i, event in enumerate(events):
            if break_after is not None and i == break_after:
                h.reset()
                return
            if i and gap:
                h.fake.stopping.wait(gap)
            framed = f"{len(event):x}\r\n".encode() + event + b"\r\n" if chunked else event
            try:
                h.wfile.write(framed)
                h.wfile.flush()
            except OSError:
                h.fake.client_gone.set()
                return
        if chunked:
            h.wfile.write(b"0\r\n\r\n")
    return act


def hang(seconds: float) -> Behaviour:
    """Accept the request and say nothing for ``seconds``."""
    def act(h: _Handler) -> None:
        h.fake.stopping.wait(seconds)
        h.close_connection = True
    return act


def reset() -> Behaviour:
    """Reset the connection without answering."""
    def act(h: _Handler) -> None:
        h.reset()
    return act


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    fake: FakeBackend

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = self.rfile.read(length)
        self.fake.record(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                  body))
        self.fake.next_behaviour()(self)


class FakeBackend:
    """A fake deployment; ``script`` queues behaviours, ``default`` answers when none is left."""

    def __init__(self, default: Behaviour | None = None) -> None:
        self.default = default or reply()
        self.received: list[Received] = []
        self.stopping = threading.Event()
        self.client_gone = threading.Event()
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 512})
        self.server = server_class(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        """The resource's base URL, as a pool backend's ``endpoint``."""
        return f"http://127.0.0.1:{self.port}"

    def uri(self, deployment: str = "dep", operation: str = "chat/completions",
            api_version: str = "2024-10-21") -> str:
        return (f"http://127.0.0.1:{self.port}/openai/deployments/{deployment}/{operation}"
                f"?api-version={api_version}")

    def script(self, *behaviours: Behaviour) -> FakeBackend:
        with self._lock:
            self._queue.extend(behaviours)
        return self

    def next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.received)

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def refused_uri() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/openai/deployments/gone/chat/completions?api-version=2024-10-21"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
               interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
