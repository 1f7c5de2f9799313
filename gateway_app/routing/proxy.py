"""One client call: choose a backend, forward, fail over, and hand back what to relay.

Backends are tried in priority order, skipping those cooling down. A 429 cools the backend for
its retry-after and the next one is tried at once; a fault (connection error, timeout, 5xx, a
stream that breaks before its first byte) benches it briefly and the next one is tried. Any
other answer, including a client error, goes back to the client as it is.

With headroom routing on, a backend whose latest reading says the call would not fit is passed
over too, without a cooldown; when the readings say it fits nowhere, those backends are tried
in order anyway: a reading is an estimate and may be stale, so it never refuses a call.
"""

from __future__ import annotations

import enum
import http.client
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qs, urlsplit

import urllib3

from ..errors import error_body
from ..logs import Fields, log_fields
from ..settings import Settings
from .headers import backend_headers, client_headers
from .headroom import Headroom
from .registry import Lease, PoolEntry, Registry, Skip
from .retry_after import retry_after_seconds, whole_seconds
from .sse import EventSplitter, Usage, is_usage_only, usage_of
from .telemetry import Telemetry, status_class
from .transport import BackendReply

if TYPE_CHECKING:
    from ..usage import Ticket

log = logging.getLogger("apirouter.call")

READ_SIZE = 64 * 1024
# Azure accepts stream_options from this api-version on; older ones reject the field.
STREAM_OPTIONS_SINCE = "2024-09-01"
STREAM_ERRORS = (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException)
# Content-Encodings urllib3 decodes with the standard library; an answer in one of them is
# decoded here (and relayed without the header), any other is relayed with its header.
DECODED = frozenset(urllib3.HTTPResponse.CONTENT_DECODERS) - {"br", "zstd"}


class DeadlinePassed(Exception):
    """An attempt took longer than API_GATEWAY_CALL_TIMEOUT in all."""


class ResponseTooLarge(Exception):
    """A non-streamed answer, or one pending stream event, over API_GATEWAY_MAX_RESPONSE_BYTES."""


@dataclass
class Call:
    """What the client sent, decoded once by the route."""

    body: bytes
    payload: dict
    headers: Mapping[str, str]  # the client's headers to pass on (headers.FORWARDED)
    request_id: str
    client: str | None = None  # the client key's name, when keys are required
    content_type: str | None = None  # a body that is not JSON is passed on with its type
    cost: int = 0  # Azure's admission estimate in tokens (routing/cost.py); 0 when not JSON
    started: float = field(default_factory=time.monotonic)
    ticket: Ticket | None = None  # its client's usage count (usage.py), settled by the answer

    @property
    def stream(self) -> bool:
        return self.payload.get("stream") is True


@dataclass
class ClientAnswer:
    """What the route turns into the HTTP response to the client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | Iterable[bytes]
    served: bool = True  # False: the gateway answers for a backend that could not


class Attempt(NamedTuple):  # a tuple: one is made per try, and a dataclass costs 4x more
    """One try of one backend: its HTTP status, or the error that stood for an answer; or a
    backend passed over by headroom routing (nothing was sent)."""

    priority: int
    status: int = 0  # 0: the backend gave no status
    error: str = ""  # then, the exception that stood for it (its class name)
    skip: Skip | None = None  # passed over, and why

    @property
    def kind(self) -> str:
        """The class Prometheus counts it under: 2xx, 4xx, 429, 5xx, or error."""
        return status_class(self.status) if self.status else "error"

    def __str__(self) -> str:  # what the log line shows, e.g. "0:429" or "0:skip-headroom"
        if self.skip is not None:
            return f"{self.priority}:skip-{self.skip.value}"
        return f"{self.priority}:{self.status or self.error}"


class Attempts(list[Attempt]):
    """The attempts of one call, in order."""

    @property
    def throttled(self) -> bool:
        return any(a.status == 429 for a in self)

    @property
    def sent(self) -> int:
        """Attempts that reached a backend (not passed over)."""
        return sum(1 for a in self if a.skip is None)

    def __str__(self) -> str:
        return ",".join(map(str, self)) or "-"


class StreamEnd(enum.Enum):
    """How a relayed stream ended."""

    DONE = "done"
    CLIENT_GONE = "client-gone"
    BROKEN = "broken"


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


def _own_url(entry: PoolEntry) -> str:
    return entry.url


class Proxy:
    """Forwards calls through the registry's backends; holds no per-call state."""

    def __init__(self, registry: Registry, settings: Settings, telemetry: Telemetry) -> None:
        self.registry = registry
        self.settings = settings
        self.telemetry = telemetry
        self.headroom = settings.headroom_on

    def forward(self, call: Call, entries: Sequence[PoolEntry],
                target: Callable[[PoolEntry], str] = _own_url,
                client_gone: Callable[[], bool] = lambda: False) -> ClientAnswer:
        """Try ``entries`` in order; ``target`` gives each one's URL (by default its own).

        At most API_GATEWAY_MAX_ATTEMPTS are tried, and none is started after
        API_GATEWAY_FAILOVER_TIMEOUT from the call's arrival, so a long list of failing
        deployments cannot hold a worker for the sum of their timeouts.
        """
        attempts = Attempts()
        for lease in self._leases(call, entries, attempts):
            answer = self._try(lease, target(lease.entry), call, attempts, client_gone)
            if answer is not None:
                self._count(call, entries, answer.served)
                return answer
        self._count(call, entries, served=False)
        return self._unavailable(call, attempts, entries)

    def _leases(self, call: Call, entries: Sequence[PoolEntry],
                attempts: Attempts) -> Iterator[Lease]:
        """Leases on ``entries`` in order, skipping those cooling down; then on those headroom
        routing passed over. Stops at the bounds on attempts and failover time, which it
        checks before each lease as ``attempts`` grows."""
        cost = call.cost if self.headroom else None
        deadline = call.started + self.settings.failover_timeout
        passed: list[PoolEntry] = []
        for entry in entries:
            if self._out_of_tries(attempts, deadline):
                return
            lease = self.registry.acquire(entry, cost)
            if isinstance(lease, Skip):
                attempts.append(Attempt(entry.priority, skip=lease))
                self.telemetry.skipped(entry, lease.value)
                passed.append(entry)
            elif lease is not None:
                yield lease
        # The readings said these could not take the call, but they are estimates and may be
        # stale: try them in order rather than refuse a call that one of them may serve.
        for entry in passed:
            if self._out_of_tries(attempts, deadline):
                return
            lease = self.registry.acquire(entry, cost, fit=False)
            if isinstance(lease, Lease):
                yield lease

    def _count(self, call: Call, entries: Sequence[PoolEntry], served: bool) -> None:
        """Count a client call, and its estimate as demand on the pool's first entry (the
        pool-level series the capacity report and replay read; a weighted pool's order
        varies per call, so the first by priority, then URL)."""
        head = min(entries, key=lambda e: (e.priority, e.url)) if entries else None
        arrived = time.time() - (time.monotonic() - call.started)
        self.registry.count_client_call(served, head, call.cost, arrived)

    def _try(self, lease: Lease, url: str, call: Call, attempts: Attempts,
             client_gone: Callable[[], bool]) -> ClientAnswer | None:
        """One attempt on a lease: the answer to relay, or None; the lease is given back
        whatever the attempt raises."""
        try:
            answer = self._attempt(lease, url, call, attempts, client_gone)
        except BaseException:
            lease.abandon()  # the in-flight count is given back whatever went wrong
            raise
        return answer

    def _out_of_tries(self, attempts: Attempts, deadline: float) -> bool:
        """API_GATEWAY_MAX_ATTEMPTS backends were sent the call, or FAILOVER_TIMEOUT passed."""
        return attempts.sent >= self.settings.max_attempts or time.monotonic() > deadline

    def _attempt(self, lease: Lease, url: str, call: Call, attempts: Attempts,
                 client_gone: Callable[[], bool]) -> ClientAnswer | None:
        """One try on a leased entry: an answer to relay, or None to fail over."""
        entry = lease.entry
        body, injected = _body_for(url, call)
        started = time.monotonic()
        try:
            response = lease.backend.transport.post(
                url, body, backend_headers(call.headers, entry.api_key, call.request_id,
                                           call.content_type), entry.timeout)
        except STREAM_ERRORS as exc:
            return self._fault(lease, attempts, Attempt(entry.priority, error=type(exc).__name__))
        status = response.status_code
        if lease.cost is not None:  # headroom routing: every answer says how much room is left
            reading = Headroom.from_headers(response.headers, time.monotonic(), lease.sent_at)
            if reading is not None:
                self.registry.observe(lease.backend, reading)
        if status == 429:
            cooldown = retry_after_seconds(response.headers, self.settings.default_retry_after,
                                           self.settings.max_retry_after)
            response.close()
            lease.throttled(cooldown)
            attempt = Attempt(entry.priority, status)
            self.telemetry.refused(entry, attempt.kind, "throttled")
            attempts.append(attempt)
            return None
        if status >= 500:
            response.close()
            return self._fault(lease, attempts, Attempt(entry.priority, status))
        encoding = response.headers.get("content-encoding", "").strip().lower()
        decode = encoding in DECODED
        relayed_encoding = encoding if encoding not in ("", "identity") and not decode else ""
        # events can only be split when they can be read: an undecodable stream goes whole
        streamed = "text/event-stream" in response.headers.get("content-type", "") \
            and not relayed_encoding
        deadline = started + self.settings.call_timeout
        try:
            if streamed:
                content = response.raw.read1(READ_SIZE, decode_content=decode)
                if not content:
                    raise http.client.IncompleteRead(b"")
            else:
                content = self._read_whole(response, decode, deadline)
        except ResponseTooLarge:
            response.close()
            return self._too_large(lease, call, attempts, started)
        except (*STREAM_ERRORS, DeadlinePassed) as exc:
            response.close()
            return self._fault(lease, attempts, Attempt(entry.priority, error=type(exc).__name__))
        attempts.append(Attempt(entry.priority, status))
        headers = client_headers(response.raw.headers.iteritems(), call.request_id,
                                 entry.priority, attempts.sent)
        if relayed_encoding:
            headers.append(("content-encoding", relayed_encoding))
        if streamed:
            relay = StreamRelay(self, lease, response, call, attempts, started, content,
                                injected, client_gone, decode, deadline)
            return ClientAnswer(status, [*headers, ("x-accel-buffering", "no")], relay)
        response.close()
        self.finished(call, lease, attempts, status, started,
                      usage_of(content) if status < 300 else None)
        return ClientAnswer(status, headers, content)

    def _read_whole(self, response: BackendReply, decode: bool, deadline: float) -> bytes:
        """A non-streamed answer, bounded in size and in time.

        Read a chunk at a time rather than whole: a backend trickling its body would
        otherwise hold the worker for as long as each byte beats the read timeout.
        """
        limit = self.settings.max_response_bytes
        length = response.headers.get("content-length", "")
        if not decode and length.isdigit() and int(length) > limit:
            raise ResponseTooLarge
        raw = response.raw
        chunks, size = [], 0
        while chunk := raw.read1(READ_SIZE, decode_content=decode):
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge
            if time.monotonic() > deadline:
                raise DeadlinePassed
            chunks.append(chunk)
            if raw.length_remaining == 0 and not decode:  # whole: spare a read that finds EOF
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, lease: Lease, call: Call, attempts: Attempts,
                   started: float) -> ClientAnswer:
        """An answer over the size limit: the backend counts as failed, the client gets a 502
        (another deployment would send the same answer, so there is no failover)."""
        entry = lease.entry
        lease.failed()
        if call.ticket is not None:  # the deployment did the work: the estimate stands
            call.ticket.settle(None)
        self.telemetry.refused(entry, "error", "failed")
        attempts.append(Attempt(entry.priority, error="ResponseTooLarge"))
        limit = self.settings.max_response_bytes
        log_call(call, attempts, 502, time.monotonic() - started, pool=entry.pool)
        return ClientAnswer(502, [("x-request-id", call.request_id),
                                  ("content-type", "application/json")],
                            error_body("ResponseTooLarge",
                                       f"The deployment's answer is larger than {limit} bytes "
                                       "(API_GATEWAY_MAX_RESPONSE_BYTES)."), served=False)

    def finished(self, call: Call, lease: Lease, attempts: Attempts, status: int,
                 started: float, usage: Usage | None, ttft: float | None = None,
                 stream: StreamEnd | None = None) -> None:
        """An answer was relayed: count it, time it, log it."""
        seconds = time.monotonic() - started
        lease.succeeded(seconds * 1000, usage)
        if call.ticket is not None:
            call.ticket.settle(usage)
        self.telemetry.answered(lease.entry, status, seconds, usage, ttft)
        log_call(call, attempts, status, seconds, entry=lease.entry, usage=usage, ttft=ttft,
                 stream=stream)

    def broken(self, call: Call, lease: Lease, attempts: Attempts, status: int,
               started: float, usage: Usage | None, ttft: float | None) -> None:
        """A stream broke after its first byte: too late to fail over, but a fault."""
        lease.failed()
        if call.ticket is not None:  # the tokens it streamed were spent
            call.ticket.settle(usage)
        self.telemetry.refused(lease.entry, "stream_broken", "failed")
        log_call(call, attempts, status, time.monotonic() - started, entry=lease.entry,
                 usage=usage, ttft=ttft, stream=StreamEnd.BROKEN)

    def _fault(self, lease: Lease, attempts: Attempts, attempt: Attempt) -> None:
        lease.failed()
        self.telemetry.refused(lease.entry, attempt.kind, "failed")
        attempts.append(attempt)
        return None

    def _unavailable(self, call: Call, attempts: Attempts,
                     entries: Sequence[PoolEntry]) -> ClientAnswer:
        """Every backend is cooling down or failed: 429 or 503 with when to come back."""
        if call.ticket is not None:  # nothing was served: the client's tokens are given back
            call.ticket.settle(None, served=False)
        busy = self.registry.busy(entries)
        wait = busy.retry_after or self.settings.failure_cooldown
        throttled = busy.throttled or attempts.throttled
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
        log_call(call, attempts, status, time.monotonic() - call.started, retry_after=wait,
                 pool=entries[0].pool if entries else "-")
        return ClientAnswer(status, headers, error_body(code, message))


class StreamRelay:
    """Relays a backend's server-sent events to the client as they arrive.

    Only whole events are passed on, so a backend that breaks mid-stream leaves the client
    with a clean end: an error event instead of half an event. The backend's connection and
    the lease are released once, when the relay ends for whatever reason (done, backend
    fault, client gone), even if the server never started iterating.
    """

    def __init__(self, proxy: Proxy, lease: Lease, response: BackendReply,
                 call: Call, attempts: Attempts, started: float, first: bytes,
                 injected: bool, client_gone: Callable[[], bool], decode: bool = False,
                 deadline: float = float("inf")) -> None:
        self.proxy = proxy
        self.lease = lease
        self.response = response
        self.call = call
        self.attempts = attempts
        self.started = started
        self.first = first
        self.injected = injected
        self.client_gone = client_gone
        self.decode = decode
        self.deadline = deadline
        self.ttft = time.monotonic() - started
        self.usage: Usage | None = None
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        splitter = EventSplitter()
        data = self.first
        limit = self.proxy.settings.max_response_bytes
        try:
            while data:
                out = [event for event in map(self._filter, splitter.feed(data)) if event]
                if out:
                    yield b"".join(out)
                if self.client_gone():
                    self._release(StreamEnd.CLIENT_GONE)
                    return
                if splitter.pending > limit:  # no event boundary in sight: not an SSE stream
                    raise ResponseTooLarge
                if time.monotonic() > self.deadline:
                    raise DeadlinePassed
                data = self.response.raw.read1(READ_SIZE, decode_content=self.decode)
        except (*STREAM_ERRORS, DeadlinePassed, ResponseTooLarge) as exc:
            log.warning("call %s: stream from %s (pool %s) broke: %s", self.call.request_id,
                        self.lease.backend.name, self.lease.entry.pool,
                        type(exc).__name__)
            self._release(StreamEnd.BROKEN)
            yield _stream_error_event()
        self._release(StreamEnd.DONE)

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
        self._release(StreamEnd.CLIENT_GONE)

    def _release(self, how: StreamEnd) -> None:
        if self._released:
            return
        self._released = True
        self.response.close()
        args = (self.call, self.lease, self.attempts, self.response.status_code, self.started,
                self.usage, self.ttft)
        if how is StreamEnd.BROKEN:
            self.proxy.broken(*args)
        else:  # a client that hangs up is not the backend's fault
            self.proxy.finished(*args, stream=how)


def _stream_error_event() -> bytes:
    payload = {"error": {"code": "StreamInterrupted",
                         "message": "The endpoint's stream broke before it was complete."}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def log_call(call: Call, attempts: Attempts, status: int, seconds: float,
             entry: PoolEntry | None = None, usage: Usage | None = None,
             ttft: float | None = None, stream: StreamEnd | None = None,
             retry_after: float | None = None, pool: str = "-") -> None:
    """One structured line per client call (info when served, warning when not)."""
    level = logging.INFO if entry is not None else logging.WARNING
    if not log.isEnabledFor(level):
        return
    fields: Fields = {"request_id": call.request_id, "client": call.client or "-",
                      "pool": entry.pool if entry else pool,
                      "backend": entry.backend.name if entry else "-",
                      "endpoint": entry.priority if entry else "-",
                      "attempts": str(attempts), "status": status,
                      "latency_ms": round(seconds * 1000, 1)}
    if ttft is not None:
        fields["ttft_ms"] = round(ttft * 1000, 1)
    if usage is not None:
        fields.update(prompt_tokens=usage.prompt, completion_tokens=usage.completion,
                      total_tokens=usage.total)
    if stream is not None:
        fields["stream"] = stream.value
    if retry_after is not None:
        fields["retry_after_s"] = round(retry_after, 3)
    log_fields(log, level, "call served" if entry else "call unserved", fields)
