"""One client call: choose a backend, forward, fail over, and hand back what to relay.

Backends are tried in priority order, skipping those cooling down. A 429 cools the backend for
its retry-after and the next one is tried at once; a fault (connection error, timeout, 5xx, a
stream that breaks before its first byte) benches it briefly and the next one is tried. Any
other answer, including a client error, goes back to the client as it is.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import urllib3

from ..errors import error_body
from ..logs import Fields, log_fields
from ..settings import Settings
from .headers import backend_headers, client_headers
from .registry import Backend, Registry
from .retry_after import retry_after_seconds, whole_seconds
from .sse import EventSplitter, Usage, is_usage_only, usage_of
from .telemetry import Telemetry, status_class
from .transport import Reply

log = logging.getLogger("apirouter.call")

READ_SIZE = 64 * 1024
# Azure accepts stream_options from this api-version on; older ones reject the field.
STREAM_OPTIONS_SINCE = "2024-09-01"
STREAM_ERRORS = (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException)


@dataclass
class Call:
    """What the client sent, decoded once by the route."""

    body: bytes
    payload: dict
    headers: Mapping[str, str]  # the client's headers to pass on (headers.FORWARDED)
    request_id: str
    client: str | None = None  # the client key's name, when keys are required
    content_type: str | None = None  # a body that is not JSON is passed on with its type
    started: float = field(default_factory=time.monotonic)

    @property
    def stream(self) -> bool:
        return self.payload.get("stream") is True


@dataclass
class Answer:
    """What the route turns into an HTTP response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | Iterable[bytes]


class Outcome:
    """Attempts of one call, for the log line and the response headers."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def tried(self, backend: Backend, result: str) -> None:
        self.attempts.append(f"{backend.priority}:{result}")


def _supports_stream_options(uri: str) -> bool:
    parts = urlsplit(uri)
    version = parse_qs(parts.query).get("api-version", [""])[0]
    return parts.path.endswith("completions") and version[:10] >= STREAM_OPTIONS_SINCE


def _body_for(url: str, call: Call) -> tuple[bytes, bool]:
    """The body to send, and whether we asked for a usage chunk the client did not want."""
    if not call.stream or not _supports_stream_options(url):
        return call.body, False
    options = call.payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return call.body, False
    payload = dict(call.payload)
    payload["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                 "include_usage": True}
    return json.dumps(payload, separators=(",", ":")).encode(), True


class Proxy:
    """Forwards calls through the registry's backends; holds no per-call state."""

    def __init__(self, registry: Registry, settings: Settings, telemetry: Telemetry) -> None:
        self.registry = registry
        self.settings = settings
        self.telemetry = telemetry

    def forward(self, call: Call, client_gone: Callable[[], bool] = lambda: False,
                backends: Sequence[Backend] | None = None,
                target: Callable[[Backend], str] = lambda b: b.uri) -> Answer:
        """Try ``backends`` (by default the /lb list) in order; ``target`` gives each one's URL."""
        outcome = Outcome()
        backends = self.registry.backends() if backends is None else backends
        for backend in backends:
            if not self.registry.acquire(backend):
                continue
            answer = self._attempt(backend, target(backend), call, outcome, client_gone)
            if answer is not None:
                self.registry.count_client_call(served=True)
                return answer
        self.registry.count_client_call(served=False)
        return self._unavailable(call, outcome, backends)

    def _attempt(self, backend: Backend, url: str, call: Call, outcome: Outcome,
                 client_gone: Callable[[], bool]) -> Answer | None:
        """One try on an acquired backend: an Answer to relay, or None to fail over."""
        body, injected = _body_for(url, call)
        timeout = (self.settings.connect_timeout,
                   backend.read_timeout or self.settings.read_timeout)
        started = time.monotonic()
        try:
            response = backend.transport.post(
                url, body, backend_headers(call.headers, backend.api_key, call.request_id,
                                           call.content_type), timeout)
        except STREAM_ERRORS as exc:
            return self._fault(backend, outcome, type(exc).__name__)
        status = response.status_code
        if status == 429:
            cooldown = retry_after_seconds(response.headers, self.settings.default_retry_after,
                                           self.settings.max_retry_after)
            response.close()
            self.registry.throttled(backend, cooldown)
            self.telemetry.refused(backend, "429", "throttled")
            outcome.tried(backend, "429")
            return None
        if status >= 500:
            response.close()
            return self._fault(backend, outcome, str(status))
        streamed = "text/event-stream" in response.headers.get("content-type", "")
        try:
            if streamed:
                content = response.raw.read1(READ_SIZE)
                if not content:
                    raise http.client.IncompleteRead(b"")
            else:
                content = response.raw.read(decode_content=False)
        except STREAM_ERRORS as exc:
            response.close()
            return self._fault(backend, outcome, type(exc).__name__)
        outcome.tried(backend, str(status))
        headers = client_headers(response.raw.headers.iteritems(), call.request_id,
                                 backend.priority, len(outcome.attempts))
        if streamed:
            relay = StreamRelay(self, backend, response, call, outcome, started, content,
                                injected, client_gone)
            return Answer(status, [*headers, ("x-accel-buffering", "no")], relay)
        response.close()
        self.finished(call, backend, outcome, status, started,
                      usage_of(content) if status < 300 else None)
        return Answer(status, headers, content)

    def finished(self, call: Call, backend: Backend, outcome: Outcome, status: int,
                 started: float, usage: Usage | None, ttft: float | None = None,
                 stream: str = "") -> None:
        """An answer was relayed: count it, time it, log it."""
        seconds = time.monotonic() - started
        self.registry.succeeded(backend, seconds * 1000, usage)
        self.telemetry.answered(backend, status, seconds, usage, ttft)
        log_call(call, outcome, status, seconds, backend=backend, usage=usage, ttft=ttft,
                 stream=stream)

    def broken(self, call: Call, backend: Backend, outcome: Outcome, status: int,
               started: float, usage: Usage | None, ttft: float | None) -> None:
        """A stream broke after its first byte: too late to fail over, but a fault."""
        self.registry.failed(backend)
        self.telemetry.refused(backend, "stream_broken", "failed")
        log_call(call, outcome, status, time.monotonic() - started, backend=backend,
                 usage=usage, ttft=ttft, stream="broken")

    def _fault(self, backend: Backend, outcome: Outcome, reason: str) -> None:
        self.registry.failed(backend)
        self.telemetry.refused(backend, status_class(int(reason)) if reason.isdigit() else "error",
                               "failed")
        outcome.tried(backend, reason)
        return None

    def _unavailable(self, call: Call, outcome: Outcome,
                     backends: Sequence[Backend]) -> Answer:
        """Every backend is cooling down or failed: 429 or 503 with when to come back."""
        busy = self.registry.busy(backends)
        wait = busy.retry_after or self.settings.failure_cooldown
        throttled = busy.throttled or any(a.endswith(":429") for a in outcome.attempts)
        status = 429 if throttled else 503
        if throttled:
            message = "All endpoints are busy (throttled or cooling down)"
        else:
            message = "No endpoint could answer (connection errors, timeouts or 5xx)"
        message += f"; retry after {whole_seconds(wait)} seconds."
        headers = [("retry-after", str(whole_seconds(wait))),
                   ("retry-after-ms", str(max(1, round(wait * 1000)))),
                   ("x-request-id", call.request_id),
                   ("content-type", "application/json")]
        code = "AllEndpointsBusy" if throttled else "NoEndpointAvailable"
        log_call(call, outcome, status, time.monotonic() - call.started, retry_after=wait)
        return Answer(status, headers, error_body(code, message))


class StreamRelay:
    """Relays a backend's server-sent events to the client as they arrive.

    Only whole events are passed on, so a backend that breaks mid-stream leaves the client
    with a clean end: an error event instead of half an event. The backend's connection and
    the registry's in-flight count are released once, when the relay ends for whatever reason
    (done, backend fault, client gone), even if the server never started iterating.
    """

    def __init__(self, proxy: Proxy, backend: Backend, response: Reply,
                 call: Call, outcome: Outcome, started: float, first: bytes,
                 injected: bool, client_gone: Callable[[], bool]) -> None:
        self.proxy = proxy
        self.backend = backend
        self.response = response
        self.call = call
        self.outcome = outcome
        self.started = started
        self.first = first
        self.injected = injected
        self.client_gone = client_gone
        self.ttft = time.monotonic() - started
        self.usage: Usage | None = None
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        splitter = EventSplitter()
        data = self.first
        try:
            while data:
                out = [event for event in map(self._filter, splitter.feed(data)) if event]
                if out:
                    yield b"".join(out)
                if self.client_gone():
                    self._release("client-gone")
                    return
                data = self.response.raw.read1(READ_SIZE)
        except STREAM_ERRORS as exc:
            log.warning("call %s: stream from endpoint %d broke: %s", self.call.request_id,
                        self.backend.priority, type(exc).__name__)
            self._release("broken")
            yield _stream_error_event()
        self._release("done")

    def _filter(self, event: bytes) -> bytes:
        """Read usage; hide the usage chunk and null usage fields the client did not ask for."""
        if b'"total_tokens"' in event:
            self.usage = usage_of(event)
            if self.injected and is_usage_only(event):
                return b""
        if self.injected:
            event = event.replace(b',"usage":null', b"")
        return event

    def close(self) -> None:
        """Called by the server when the response ends; a no-op after a normal end."""
        self._release("client-gone")

    def _release(self, how: str) -> None:
        if self._released:
            return
        self._released = True
        self.response.close()
        args = (self.call, self.backend, self.outcome, self.response.status_code, self.started,
                self.usage, self.ttft)
        if how == "broken":
            self.proxy.broken(*args)
        else:  # a client that hangs up is not the backend's fault
            self.proxy.finished(*args, stream=how)


def _stream_error_event() -> bytes:
    payload = {"error": {"code": "StreamInterrupted",
                         "message": "The endpoint's stream broke before it was complete."}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def log_call(call: Call, outcome: Outcome, status: int, seconds: float,
             backend: Backend | None = None, usage: Usage | None = None,
             ttft: float | None = None, stream: str = "",
             retry_after: float | None = None) -> None:
    """One structured line per client call (info when served, warning when not)."""
    level = logging.INFO if backend is not None else logging.WARNING
    if not log.isEnabledFor(level):
        return
    fields: Fields = {"request_id": call.request_id, "client": call.client or "-",
                      "endpoint": backend.priority if backend else "-",
                      "attempts": ",".join(outcome.attempts) or "-", "status": status,
                      "latency_ms": round(seconds * 1000, 1)}
    if ttft is not None:
        fields["ttft_ms"] = round(ttft * 1000, 1)
    if usage is not None:
        fields.update(prompt_tokens=usage.prompt, completion_tokens=usage.completion,
                      total_tokens=usage.total)
    if stream:
        fields["stream"] = stream
    if retry_after is not None:
        fields["retry_after_s"] = round(retry_after, 3)
    log_fields(log, level, "call served" if backend else "call unserved", fields)
