"""The stack's floor: the least CPU per call a proxy built from the gateway's own parts costs.

One Flask view at the gateway's /lb path reads the body, posts it to the fake through
``gateway_app.transport.Transport`` (the gateway's requests Session and urllib3 pool) with the
four headers the gateway sends, reads the answer and returns it. Waitress serves it with
``gateway_app.server.waitress_options``, so threads, poll, lookahead and proxy-header clearing
are the gateway's. No logging, metrics, failover or header relay: what the gateway spends above
this is its own work.

``python -P -m bench.floor`` serves it, run like the gateway (:class:`FloorProcess`): from the
tree under test, with the gateway's environment and configuration file.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import waitress
from flask import Flask, Response, request

from .gateway import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent


def create_app(path: str, backend_url: str, api_key: str, pool_size: int,
               timeout: tuple[float, float]) -> Flask:
    """A Flask app whose one POST route forwards the body to ``backend_url``."""
    from gateway_app.transport import Transport

    transport = Transport(pool_size)
    headers = {"content-type": "application/json", "accept-encoding": "identity",
               "api-key": api_key, "x-request-id": "0" * 32}
    app = Flask(__name__)

    @app.post(path)
    def forward() -> Response:
        reply = transport.post(backend_url, request.get_data(), headers, timeout)
        content = reply.raw.read(decode_content=False)
        reply.close()
        return Response(content, status=reply.status_code, content_type="application/json")

    return app


def main() -> None:
    """Serve the floor with the gateway's settings, read from the environment."""
    sys.path.insert(0, os.getcwd())  # gateway_app from the tree under test (-P left it out)
    from gateway_app.server import waitress_options
    from gateway_app.settings import Settings

    settings = Settings.from_env(os.environ)
    endpoint = json.loads(Path(settings.config_file).read_text())["endpoints"][0]
    app = create_app(f"{settings.route_prefix}/lb", endpoint["uri"], endpoint["apikey"],
                     settings.threads, (settings.connect_timeout, settings.read_timeout))
    waitress.create_server(app, **waitress_options(settings)).run()


class FloorProcess(GatewayProcess):
    """The floor in a subprocess, started as the gateway is: same tree, environment, config.

    ``-P`` keeps the tree's own ``bench/`` (a worktree has one) from shadowing this one;
    ``main`` then puts the tree first for ``gateway_app``.
    """

    name = "floor"
    command = ("-P", "-m", "bench.floor")

    def environment(self, config: Path) -> dict[str, str]:
        env = super().environment(config)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return env

    def probe(self) -> urllib.request.Request:
        """A real call through the floor to the fake, so a broken chain is not benchmarked."""
        return urllib.request.Request(self.url, data=b"{}", method="POST",
                                      headers={"content-type": "application/json"})


if __name__ == "__main__":
    main()
