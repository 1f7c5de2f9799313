"""Serving with waitress: the adjustments a gateway needs, and a graceful stop on SIGTERM.

On SIGTERM (or Ctrl-C) the listening socket closes at once, so no new connection is accepted,
and calls in flight, streamed ones included, get up to ``shutdown_grace`` seconds to finish. A
second signal stops at once. As PID 1 in a container Python ignores SIGTERM unless a handler
is installed, which is what this module does.
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

from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

from .settings import MIB, Settings

log = logging.getLogger("apirouter")

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def waitress_options(settings: Settings) -> dict[str, Any]:
    """Adjustments for waitress, each explained in the README's tuning section."""
    options = {
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
        # our own limit answers first with a JSON 413; waitress's is only a backstop
        "max_request_body_size": settings.max_body_bytes + MIB,
        "ident": "apirouter",
        "clear_untrusted_proxy_headers": True,
    }
    if settings.reuse_port:  # several processes on one port: bind it ourselves, shared
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((options.pop("host"), options.pop("port")))
        options["sockets"] = [listener]
    return options


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
        return _Closing(result, lambda: self._add(-1))


class _Closing:
    """Passes an app's response through and runs ``done`` once when the server closes it."""

    def __init__(self, result: Iterable[bytes], done: Callable[[], None]) -> None:
        self.result = result
        self.done = done

    def __iter__(self):
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            done, self.done = self.done, lambda: None
            done()


class GracefulServer:
    """A waitress server whose loop we run, so that a signal can drain it before it stops."""

    def __init__(self, app: WSGIApp, settings: Settings) -> None:
        self.in_flight = InFlight(app)
        self.grace = settings.shutdown_grace
        self.server = create_server(self.in_flight, **waitress_options(settings))
        self.map = getattr(self.server, "map", None) or self.server._map
        self.adj = self.server.adj
        self.deadline: float | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.server.effective_host, self.server.effective_port

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
        for listener in self._listeners():
            # wake the loop now rather than at its next timeout; called from another thread,
            # the loop may already have ended and closed the trigger
            with contextlib.suppress(OSError):
                listener.pull_trigger()

    def _listeners(self) -> list[BaseWSGIServer]:
        return [c for c in list(self.map.values()) if isinstance(c, BaseWSGIServer)]

    def _close_listeners(self) -> None:
        """Close the listening sockets (between loop passes: poll must not see them go)."""
        for listener in self._listeners():
            wasyncore.dispatcher.close(listener)

    def _drained(self) -> bool:
        if self.in_flight.count:
            return False
        return all(not c.total_outbufs_len for c in self.map.values()
                   if isinstance(c, HTTPChannel))

    def run(self) -> None:
        """Serve until a stop was requested and calls drained (or the grace ran out)."""
        listening = True
        while self.deadline is None or not (self._drained() or time.monotonic() >= self.deadline):
            if listening and self.deadline is not None:
                self._close_listeners()
                listening = False
            # short passes while draining, so the end is noticed quickly
            timeout = self.adj.asyncore_loop_timeout if listening else 0.05
            wasyncore.loop(timeout=timeout, map=self.map, use_poll=self.adj.asyncore_use_poll,
                           count=1)
        if self.in_flight.count:
            log.warning("grace period over: %d call(s) cut off", self.in_flight.count)
        self.server.task_dispatcher.shutdown(timeout=1)
        wasyncore.close_all(self.map)


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


def serve(app: WSGIApp, settings: Settings) -> None:
    """Serve ``app`` in the foreground until SIGTERM or SIGINT, then drain and return."""
    raise_file_limit(settings)
    server = GracefulServer(app, settings)
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    host, port = server.address
    log.info("listening on http://%s:%s with %d threads", host, port, settings.threads)
    server.run()
    log.info("stopped")
