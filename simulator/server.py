"""The HTTP side: a threaded HTTP/1.1 server with keep-alive, and the request handler.

One daemon thread serves each connection, so a call can sleep to model latency, stream with
a flush per event, or drop its connection, without any event loop. A thread costs little
memory while it sleeps; ``request_queue_size`` (the listen backlog) is large so a burst of a
thousand new connections is queued, not refused.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import re
import socket
import socketserver
import sys
import threading
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from simulator import responses
from simulator.config import SimulatorConfig, load_config, parse_config
from simulator.deployment import Deployment
from simulator.faults import Fault
from simulator.limits import Decision
from simulator.operations import BadRequest, Call, Operation, parse_call

MAX_BODY_BYTES = 16 * 1024 * 1024  # far above any real prompt; refuses runaway uploads
DEFAULT_IDLE_TIMEOUT = 120.0  # seconds an idle keep-alive connection is kept (as waitress)
_ROUTE = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)/?$")
_DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


class _Stopped(Exception):
    """The server is stopping: give up the call and close its connection."""


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a big backlog, tracked connections and quiet errors."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        deployments: dict[str, Deployment],
        idle_timeout: float,
        verbose: bool,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.deployments = deployments
        self.idle_timeout = idle_timeout
        self.verbose = verbose
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, conn: socket.socket, open_: bool) -> None:
        """Remember (or forget) an open connection so that stop() can close it."""
        with self._connections_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Shut down every open connection (idle keep-alive ones included)."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report a handler's exception: always for bugs, for network errors with --verbose."""
        if self.verbose or not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Serves /healthz and the three deployment operations."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "azure-openai-simulator/1.0"
    disable_nagle_algorithm = True  # headers and body are two writes: neither may wait

    # --- connection life ------------------------------------------------------------------

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.track(self.connection, False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # --- routes ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self._read_body() is None:
            return
        if urlsplit(self.path).path.rstrip("/") == "/healthz":
            names = list(self.server.deployments)
            self._send_json(200, {"status": "OK", "deployments": names})
        else:
            self._send_json(404, responses.NOT_FOUND)

    def do_PUT(self) -> None:
        if self._read_body() is not None:
            self._send_json(404, responses.NOT_FOUND)

    do_DELETE = do_PATCH = do_PUT

    def do_POST(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        url = urlsplit(self.path)
        route = _ROUTE.match(url.path)
        if route is None:
            self._send_json(404, responses.NOT_FOUND)
            return
        api_version = parse_qs(url.query).get("api-version", [""])[0]
        if not api_version:
            self._send_json(400, responses.MISSING_API_VERSION)
            return
        deployment = self.server.deployments.get(route.group(1))
        if deployment is None:
            self._send_json(404, responses.DEPLOYMENT_NOT_FOUND)
            return
        operation = Operation.from_path(route.group(2))
        assert operation is not None  # the route only matches the three operations
        try:
            self._serve(deployment, operation, api_version, raw)
        except _Stopped:
            self.close_connection = True
        except _DISCONNECTED:
            self.close_connection = True

    # --- one deployment call --------------------------------------------------------------

    def _serve(
        self, deployment: Deployment, operation: Operation, api_version: str, raw: bytes
    ) -> None:
        limits = _limit_headers(deployment, deployment.limiter.remaining())
        rtt = deployment.config.rtt_ms / 1000  # every answer takes the round trip
        key = self.headers.get("api-key", "")
        if not hmac.compare_digest(key.encode(), deployment.config.apikey.encode()):
            self._sleep(rtt)
            self._send_json(401, responses.UNAUTHORIZED, limits)
            return
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._sleep(rtt)
            self._send_json(400, responses.error(
                "BadRequest", "We could not parse the JSON body of your request."), limits)
            return
        try:
            call = parse_call(operation, body, deployment.config.default_max_tokens)
        except BadRequest as exc:
            self._sleep(rtt)
            self._send_json(400, responses.error("BadRequest", str(exc)), limits)
            return

        fault = deployment.faults.draw()
        if fault is Fault.DROP:
            self.close_connection = True  # no answer: the socket is closed after return
            return
        if fault is Fault.ERROR_500:
            self._sleep(rtt)
            self._send_json(500, responses.SERVER_ERROR, limits)
            return
        decision = deployment.limiter.acquire(call.cost)  # admitted (or not) on arrival
        if not decision.admitted:
            self._sleep(rtt)
            self._send_throttled(deployment, call, api_version, decision)
            return

        delay = rtt + deployment.first_token_delay()
        if fault is Fault.SLOW:
            delay += deployment.config.slow_seconds
        if call.stream:
            self._stream(deployment, call, decision, delay)
        else:
            self._answer(deployment, call, decision, delay)

    def _answer(self, deployment: Deployment, call: Call, decision: Decision, delay: float) -> None:
        model = deployment.config.model
        if call.operation is Operation.EMBEDDINGS:
            self._sleep(delay)
            body = responses.embeddings(call, model, deployment.config.embedding_dimensions)
        else:
            self._sleep(delay + max(call.max_tokens - 1, 0) * deployment.token_delay())
            body = responses.completion(call, model)
        self._send_json(200, body, _limit_headers(deployment, decision))

    def _stream(self, deployment: Deployment, call: Call, decision: Decision, delay: float) -> None:
        self._sleep(delay)
        chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        for name, value in _limit_headers(deployment, decision).items():
            self.send_header(name, value)
        self.send_header("x-request-id", str(uuid.uuid4()))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:  # HTTP/1.0 has no chunks: the end of the body is the end of the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

        maker = responses.ChunkMaker(call, deployment.config.model)
        for i, piece in enumerate(responses.words(call)):
            if i:
                self._sleep(deployment.token_delay())
            self._event(_dumps(maker.first(piece) if i == 0 else maker.token(piece)), chunked)
        self._event(_dumps(maker.last()), chunked)
        if call.include_usage:
            self._event(_dumps(maker.usage()), chunked)
        self._event(b"[DONE]", chunked)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _send_throttled(self, deployment: Deployment, call: Call, api_version: str,
                        decision: Decision) -> None:
        millis = max(1, math.ceil(decision.retry_after * 1000))
        seconds = math.ceil(millis / 1000)  # whole seconds, rounded up: never too early
        headers = _limit_headers(deployment, decision)
        headers["retry-after"] = str(seconds)
        headers["retry-after-ms"] = str(millis)
        body = responses.rate_limit_error(call, api_version, decision.limit, seconds)
        self._send_json(429, body, headers)

    # --- plumbing -------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.server.stopping.wait(seconds):
            raise _Stopped
        if self.server.stopping.is_set():
            raise _Stopped

    def _event(self, data: bytes, chunked: bool) -> None:
        """Write one server-sent event and send it now (the socket writer is unbuffered)."""
        payload = b"data: " + data + b"\n\n"
        if chunked:
            payload = b"%x\r\n%s\r\n" % (len(payload), payload)
        self.wfile.write(payload)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering a body the server will not read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send_json(411, responses.error("411", "A Content-Length header is required."))
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_json(413, responses.error(
                "413", f"The request body must be at most {MAX_BODY_BYTES} bytes."))
            return None
        try:
            return self.rfile.read(length) if length else b""
        except OSError:  # the client went away (or timed out) while sending
            self.close_connection = True
            return None

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = _dumps(body)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", str(uuid.uuid4()))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except _DISCONNECTED:
            self.close_connection = True


def _limit_headers(deployment: Deployment,
                   left: Decision | tuple[int, int]) -> dict[str, str]:
    """What is left after this call, from a decision or a (requests, tokens) pair: the
    x-ratelimit-remaining-* headers of a standard deployment, or a provisioned one's
    azure-openai-deployment-utilization (the share of the window's tokens in use)."""
    if isinstance(left, Decision):
        left = (left.remaining_requests, left.remaining_tokens)
    requests_left, tokens_left = left
    if deployment.config.provisioned:
        tokens = deployment.limiter.tokens
        return {"azure-openai-deployment-utilization":
                f"{(tokens - tokens_left) * 100 / tokens:.1f}%"}
    return {
        "x-ratelimit-remaining-requests": str(requests_left),
        "x-ratelimit-remaining-tokens": str(tokens_left),
    }


class SimulatorServer:
    """A simulator serving its deployments from a background thread.

    ``config`` is a SimulatorConfig, the decoded JSON of a configuration file (a mapping), or
    the path of one. ``host`` and ``port`` override the configuration's; port 0 picks a free
    port, readable from ``port`` once started.
    """

    def __init__(
        self,
        config: SimulatorConfig | Mapping[str, Any] | str | Path,
        host: str | None = None,
        port: int | None = None,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        verbose: bool = False,
    ) -> None:
        if isinstance(config, (str, Path)):
            config = load_config(config)
        elif not isinstance(config, SimulatorConfig):
            config = parse_config(config)
        self.config = config
        self.deployments = {d.name: Deployment.build(d) for d in config.deployments}
        self._address = (host if host is not None else config.host,
                         port if port is not None else config.port)
        self._idle_timeout = idle_timeout
        self._verbose = verbose
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SimulatorServer:
        """Bind the socket (OSError if taken) and serve from a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._httpd = _HTTPServer(self._address, self.deployments, self._idle_timeout,
                                  self._verbose)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"simulator-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end calls in progress and close every connection."""
        httpd = self._httpd
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    @property
    def host(self) -> str:
        """The address listened on."""
        return self._require().server_name

    @property
    def port(self) -> int:
        """The port listened on (the real one when 0 was asked)."""
        return self._require().server_port

    @property
    def url(self) -> str:
        """``http://host:port``, usable as an Azure OpenAI endpoint."""
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def _require(self) -> _HTTPServer:
        if self._httpd is None:
            raise RuntimeError("the simulator is not started")
        return self._httpd

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

