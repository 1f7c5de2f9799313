"""Serving with waitress: the adjustments a gateway needs, an admin listener, deadlines for slow
clients, JSON for waitress's own errors, and a graceful stop on SIGTERM.

On SIGTERM (or Ctrl-C) the listening socket closes at once, so no new connection is accepted,
and calls in flight, streamed ones included, get up to ``shutdown_grace`` seconds to finish. A
second signal stops at once. As PID 1 in a container Python ignores SIGTERM unless a handler
is installed, which is what this module does.

With ``API_GATEWAY_ADMIN_PORT`` set, a second waitress server with its own loop thread and
worker threads serves the admin routes only (see ``gateway_app.web.admin``), so probes and
metrics answer while every worker of the main port is busy. It keeps answering while the main
port drains, and stops with it.

Waitress parses requests in its loop, and its ``channel_timeout`` only measures silence: a
client sending a byte every few seconds keeps a connection forever. :class:`GatewayServer`
also gives each request a deadline from its first byte to its last
(``API_GATEWAY_REQUEST_READ_TIMEOUT``), checked at each of waitress's cleanup passes.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from .admission import Closing
from .errors import error_body, too_large
from .settings import MIB, Settings
from .web.admin import admin_only

log = logging.getLogger("apirouter")

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

# seconds a connection ended by an error keeps reading (and dropping) what the client still
# sends, so that the client reads our answer instead of a reset (a close with unread input
# makes the kernel send RST, which may discard the answer on its way)
LINGER_SECONDS = 2.0
# our codes for the errors waitress answers itself, before the app sees the request
_WAITRESS_CODES = {413: "PayloadTooLarge", 431: "RequestHeaderFieldsTooLarge",
                   500: "InternalError", 501: "NotImplemented"}


def _cleanup_interval(settings: Settings) -> int:
    """Seconds between waitress's cleanup passes: a quarter of the request deadline, so a
    request is cut off at most 25% late (waitress's own default, 30 s, at most)."""
    return max(1, min(30, int(settings.request_read_timeout / 4)))


def _options(settings: Settings) -> dict[str, Any]:
    """Adjustments for waitress, each explained in the README's tuning section."""
    return {
        "host": settings.host,
        "port": settings.port,
        "threads": settings.threads,
        "connection_limit": settings.connection_limit,
        "backlog": 2048,
        # select() cannot watch file descriptors above 1023, so ~1,000 connections would
        # crash the loop; poll() has no such limit
        "asyncore_use_poll": True,
        # lets waitress notice a client that hangs up while its call runs
        "channel_request_lookahead": 1,
        # Flask's limit answers bodies up to this size, waitress's beyond it, both with our
        # JSON 413 (JsonErrorTask); the margin is for chunk framing, which waitress counts
        "max_request_body_size": settings.max_body_bytes + MIB,
        "cleanup_interval": _cleanup_interval(settings),
        "ident": "apirouter",
        "clear_untrusted_proxy_headers": True,
    }


def waitress_options(settings: Settings) -> dict[str, Any]:
    """The main listener's adjustments; with API_GATEWAY_REUSE_PORT, its socket bound here."""
    options = _options(settings)
    if settings.reuse_port:  # several processes on one port: bind it ourselves, shared
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((options.pop("host"), options.pop("port")))
        options["sockets"] = [listener]
    return options


def admin_options(settings: Settings) -> dict[str, Any]:
    """Adjustments for the admin listener: a kubelet, Prometheus and operators, few at once."""
    return {**_options(settings),
            "port": settings.admin_port,
            "threads": settings.admin_threads,
            "connection_limit": 100,
            "backlog": 128,
            "channel_request_lookahead": 0}


class JsonErrorTask(ErrorTask):
    """Waitress's own error answers (400, 413, 431 ...) in the gateway's JSON shape."""

    def execute(self) -> None:
        error = self.request.error
        message = (too_large(self.channel.server.body_limit) if error.code == 413
                   else f"{error.reason}: {error.body}")
        body = error_body(_WAITRESS_CODES.get(error.code, "InvalidRequest"), message)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.channel.drain_input = True  # the rest of the request may still be on its way
        self.write(body)


class GatewayChannel(HTTPChannel):
    """A waitress connection that knows when its current request began, and that lingers
    after an answer that ends the connection before its request was read."""

    error_task_class = JsonErrorTask
    # monotonic time of the first byte of ``request`` (the request being read), or None
    request_started: float | None = None
    _timed: object = None  # the request ``request_started`` belongs to
    drain_input = False  # the connection ends before its input was read whole
    linger_until = 0.0  # while set: answered, write side shut, input read and dropped

    def received(self, data: bytes) -> bool:
        result = super().received(data)
        if self.request is not self._timed:  # a request began (or ended) in this data
            self._timed = self.request
            self.request_started = None if self.request is None else time.monotonic()
        return result

    def request_timed_out(self, seconds: float) -> None:
        """Answer 408 and close: the request took more than ``seconds`` to arrive.

        Called from the loop thread, and only while no task runs for this connection.
        """
        body = error_body("RequestTimeout",
                          f"The request was not received whole within {seconds:g} s.")
        answer = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        with self.requests_lock:
            if self.request is not None:
                self.request.close()  # its body buffer may be a temporary file
            self.request = self._timed = self.request_started = None
            self.close_when_flushed = True
        with self.outbuf_lock:
            self.outbufs[-1].append(answer)
            self.current_outbuf_count += len(answer)
            self.total_outbufs_len += len(answer)
        self.drain_input = True

    def readable(self) -> bool:
        return bool(self.linger_until) or super().readable()

    def handle_read(self) -> None:
        if not self.linger_until:
            super().handle_read()
            return
        data = self.recv(self.adj.recv_bytes)  # dropped; b"" when the client closed
        if data and time.monotonic() >= self.linger_until:
            self.handle_close()

    def handle_close(self) -> None:
        if self.drain_input and not self.linger_until and not self.total_outbufs_len:
            # Answered; shut our side (the client sees the end of the answer) and read what
            # it still sends until it closes or LINGER_SECONDS pass (GatewayServer checks).
            self.linger_until = time.monotonic() + LINGER_SECONDS
            self.will_close = self.close_when_flushed = False
            try:
                self.socket.shutdown(socket.SHUT_WR)
                return
            except OSError:
                pass
        super().handle_close()


class GatewayServer(TcpWSGIServer):
    """Waitress's TCP server with :class:`GatewayChannel` connections and a deadline per
    request, checked at each cleanup pass (``cleanup_interval``)."""

    channel_class = GatewayChannel

    def __init__(self, application: WSGIApp, map: dict, *, read_timeout: float,
                 body_limit: int, **kw: Any) -> None:
        self.read_timeout = read_timeout
        self.body_limit = body_limit
        super().__init__(application, map, **kw)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # waitress: connections silent for channel_timeout
        mono = time.monotonic()
        cutoff = mono - self.read_timeout
        timed_out = 0
        for channel in list(self.active_channels.values()):
            if channel.linger_until:
                if mono >= channel.linger_until:
                    channel.will_close = True
            elif (channel.request_started is not None and channel.request_started < cutoff
                  # a running task owns the connection; its pipelined successor waits
                  and not channel.requests
                  and not (channel.will_close or channel.close_when_flushed)):
                channel.request_timed_out(self.read_timeout)
                timed_out += 1
        if timed_out:
            log.warning("%d connection(s) closed: request not received whole within %g s",
                        timed_out, self.read_timeout)
            self.pull_trigger()  # send the 408s now rather than after the next poll timeout


class Listener:
    """One waitress loop: its listening socket(s), connections and worker threads."""

    def __init__(self, app: WSGIApp, options: dict[str, Any], settings: Settings) -> None:
        self.map: dict[int, Any] = {}
        self.adj = Adjustments(**options)
        self.dispatcher = ThreadedTaskDispatcher()
        common = {"dispatcher": self.dispatcher, "adj": self.adj,
                  "read_timeout": settings.request_read_timeout,
                  "body_limit": settings.max_body_bytes}
        if self.adj.sockets:  # bound beforehand (API_GATEWAY_REUSE_PORT): use them as they are
            self.servers = [GatewayServer(app, self.map, _sock=sock, bind_socket=False,
                                          sockinfo=(sock.family, sock.type, sock.proto,
                                                    sock.getsockname()), **common)
                            for sock in self.adj.sockets]
        else:
            self.servers = [GatewayServer(app, self.map, sockinfo=sockinfo, **common)
                            for sockinfo in self.adj.listen]
        self.dispatcher.set_thread_count(self.adj.threads)

    @property
    def address(self) -> tuple[str, int]:
        return self.servers[0].effective_host, self.servers[0].effective_port

    def loop_once(self, timeout: float) -> None:
        wasyncore.loop(timeout=timeout, map=self.map, use_poll=self.adj.asyncore_use_poll,
                       count=1)

    def wake(self) -> None:
        """Interrupt the loop's wait; safe from any thread, even once the loop has ended."""
        for server in self.servers:
            with contextlib.suppress(OSError, AttributeError):
                server.pull_trigger()

    def close_listeners(self) -> None:
        """Stop accepting (from the loop's thread, between passes: poll must not see it)."""
        for server in self.servers:
            wasyncore.dispatcher.close(server)  # the socket only; the trigger stays

    def flushed(self) -> bool:
        return all(not c.total_outbufs_len for c in list(self.map.values())
                   if isinstance(c, HTTPChannel))

    def close(self) -> None:
        self.dispatcher.shutdown(timeout=1)
        wasyncore.close_all(self.map)


class InFlight:
    """WSGI middleware counting requests whose response has not ended yet."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.count = 0
        self._lock = threading.Lock()

    def _add(self, delta: int) -> None:
        with self._lock:
            self.count += delta

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        self._add(1)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self._add(-1)
            raise
        return Closing(result, lambda: self._add(-1))


class GracefulServer:
    """The gateway's waitress servers, whose loops we run, so that a signal can drain them."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.in_flight = InFlight(app)
        self.grace = settings.shutdown_grace
        self.main = Listener(self.in_flight, waitress_options(settings), settings)
        self.admin = (Listener(admin_only(app), admin_options(settings), settings)
                      if settings.admin_port else None)
        self.deadline: float | None = None
        self._admin_stop = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        return self.main.address

    @property
    def admin_address(self) -> tuple[str, int] | None:
        return self.admin.address if self.admin else None

    def request_stop(self, signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        """Stop accepting; a second request stops without waiting."""
        now = time.monotonic()
        if self.deadline is not None:
            log.warning("second stop signal: stopping now")
            self.deadline = now
            return
        self.deadline = now + self.grace
        log.info("signal %s: no new connections; waiting up to %.0f s for %d call(s) in flight",
                 signal.Signals(signum).name, self.grace, self.in_flight.count)
        self.main.wake()  # now rather than at the loop's next timeout

    def _drained(self) -> bool:
        return not self.in_flight.count and self.main.flushed()

    def _serve_admin(self) -> None:
        assert self.admin is not None
        try:
            while not self._admin_stop.is_set():
                self.admin.loop_once(self.admin.adj.asyncore_loop_timeout)
        finally:
            self.admin.close()

    def run(self) -> None:
        """Serve until a stop was requested and calls drained (or the grace ran out)."""
        admin_thread = None
        if self.admin is not None:
            admin_thread = threading.Thread(target=self._serve_admin, name="apirouter-admin",
                                            daemon=True)
            admin_thread.start()
        listening = True
        while self.deadline is None or not (self._drained() or time.monotonic() >= self.deadline):
            if listening and self.deadline is not None:
                self.main.close_listeners()
                listening = False
            # short passes while draining, so the end is noticed quickly
            timeout = self.main.adj.asyncore_loop_timeout if listening else 0.05
            self.main.loop_once(timeout)
        if self.in_flight.count:
            log.warning("grace period over: %d call(s) cut off", self.in_flight.count)
        self.main.close()
        if admin_thread is not None:
            self._admin_stop.set()
            self.admin.wake()
            admin_thread.join(5)


def raise_file_limit(settings: Settings) -> None:
    """Let the process open a socket per client connection plus one per backend call.

    The soft limit is often 1,024, below what the connection limit allows; raising it up to
    the hard limit needs no privilege.
    """
    needed = 2 * settings.connection_limit + settings.threads + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            log.warning("open files limited to %d; %d connections need about %d",
                        target, settings.connection_limit, needed)


def serve(app: Flask, settings: Settings) -> None:
    """Serve ``app`` in the foreground until SIGTERM or SIGINT, then drain and return."""
    raise_file_limit(settings)
    server = GracefulServer(app, settings)
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    host, port = server.address
    log.info("listening on http://%s:%s with %d threads; calls beyond %d in progress get 503",
             host, port, settings.threads, app.extensions["apirouter"].admission.limit)
    if server.admin_address:
        host, port = server.admin_address
        log.info("admin listener (probes, metrics, administration) on http://%s:%s with %d "
                 "threads", host, port, settings.admin_threads)
    server.run()
    log.info("stopped")
