"""The stack's floor: the least CPU per call a proxy built from the gateway's own parts costs.

One Flask view at the gateway's /lb path reads the body, posts it to the fake through
``gateway_app.routing.transport.Transport`` (the gateway's requests Session and urllib3
pool) with the
four headers the gateway sends, reads the answer and returns it. Waitress serves it with
``gateway_app.server.waitress_options``, so threads, poll, lookahead and proxy-header clearing
are the gateway's. No logging, metrics, failover or header relay: what the gateway spends above
this is its own work.

Two lower rungs of the same stack, served the same way, show where the floor's CPU goes:
``waitress``, a bare WSGI callable that reads the body and answers nginx's fixed JSON (no
Flask, no backend call), and ``flask``, the floor's Flask view answering that JSON itself (no
backend call).

``python -P -m bench.floor [waitress|flask|floor]`` serves one of them (the floor by default),
run like the gateway (:class:`FloorProcess`): from the tree under test, with the gateway's
environment and configuration file.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import waitress
from flask import Flask, Response, request

from .gateway import GatewayProcess
from .nginx import body_bytes

ROOT = Path(__file__).resolve().parent.parent
RUNGS = ("waitress", "flask")  # the floor's lower rungs, bottom up
KINDS = (*RUNGS, "floor")
ANSWER = body_bytes()

# What a view does with the body it read: (status, answer).
Send = Callable[[bytes], tuple[int, bytes]]


def create_app(path: str, send: Send) -> Flask:
    """A Flask app whose one POST route answers with what ``send`` makes of the body."""
    app = Flask(__name__)

    @app.post(path)
    def view() -> Response:
        status, content = send(request.get_data())
        return Response(content, status=status, content_type="application/json")

    return app


def forwarder(backend_url: str, api_key: str, max_connections: int,
              timeout: tuple[float, float]) -> Send:
    """Posts the body to ``backend_url`` through the gateway's Transport; the answer read whole."""
    import urllib3

    from gateway_app.routing.transport import Transport

    transport = Transport(max_connections)
    connect, read = timeout
    per_call = urllib3.Timeout(connect=connect, read=read)  # as a pool entry holds it
    headers = {"content-type": "application/json", "accept-encoding": "identity",
               "api-key": api_key, "x-request-id": "0" * 32}

    def send(body: bytes) -> tuple[int, bytes]:
        reply = transport.post(backend_url, body, headers, per_call)
        content = reply.raw.read(decode_content=False)
        reply.close()
        return reply.status_code, content

    return send


def bare_app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    """WSGI alone: read the body, answer nginx's fixed JSON, whatever the path."""
    environ["wsgi.input"].read()
    start_response("200 OK", [("content-type", "application/json"),
                              ("content-length", str(len(ANSWER)))])
    return [ANSWER]


def build(kind: str, settings: Any) -> Callable:
    """The WSGI app of ``kind`` (one of :data:`KINDS`) for the gateway's ``settings``."""
    if kind == "waitress":
        return bare_app
    path = f"{settings.route_prefix}/lb"
    if kind == "flask":
        return create_app(path, lambda _body: (200, ANSWER))
    endpoint = json.loads(Path(settings.config_file).read_text())["endpoints"][0]
    return create_app(path, forwarder(endpoint["uri"], endpoint["apikey"], settings.threads,
                                      (settings.connect_timeout, settings.read_timeout)))


def main() -> None:
    """Serve the app named on the command line with the gateway's settings, from the environment."""
    kind = sys.argv[1] if len(sys.argv) > 1 else "floor"
    if kind not in KINDS:
        raise SystemExit(f"usage: python -P -m bench.floor [{'|'.join(KINDS)}]")
    sys.path.insert(0, os.getcwd())  # gateway_app from the tree under test (-P left it out)
    from gateway_app.server import waitress_options
    from gateway_app.settings import Settings

    settings = Settings.from_env(os.environ)
    waitress.create_server(build(kind, settings), **waitress_options(settings)).run()


class FloorProcess(GatewayProcess):
    """The floor, or the rung ``kind``, in a subprocess started as the gateway is.

    Same tree, environment and config file as the gateway. ``-P`` keeps the tree's own
    ``bench/`` (a worktree has one) from shadowing this one; ``main`` then puts the tree first
    for ``gateway_app``.
    """

    def __init__(self, *args: Any, kind: str = "floor", **kwargs: Any) -> None:
        assert kind in KINDS
        self.name = kind
        self.command = ("-P", "-m", "bench.floor", kind)
        super().__init__(*args, **kwargs)

    def environment(self, config: Path) -> dict[str, str]:
        env = super().environment(config)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return env

    def probe(self) -> urllib.request.Request:
        """A real call (through the floor: to the fake), so a broken chain is not benchmarked."""
        return urllib.request.Request(self.url, data=b"{}", method="POST",
                                      headers={"content-type": "application/json"})


if __name__ == "__main__":
    main()
