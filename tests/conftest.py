"""Fixtures: fake deployments and a gateway served by waitress, all on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway_app import create_app
from gateway_app.gateway import Gateway
from gateway_app.server import GracefulServer
from gateway_app.settings import Settings
from tests.fakes import FakeBackend

GATEWAY_KEY = "test-gateway-key-6f1e"


def base_env(config_file: Path) -> dict[str, str]:
    return {
        "API_GATEWAY_KEY": GATEWAY_KEY,
        "API_GATEWAY_CONFIG_FILE": str(config_file),
        "API_GATEWAY_NAME": "test-gw",
        "API_GATEWAY_ENV": "test",
        "API_GATEWAY_METRICS_CINTERVAL": "60",
        "API_GATEWAY_METRICS_CHISTORY": "5",
        "API_GATEWAY_LOG_LEVEL": "warn",
    }


def endpoint_entries(endpoints: list[Any]) -> list[dict[str, Any]]:
    """FakeBackends become ``{"uri", "apikey"}`` entries; dicts and strings pass as they are."""
    entries = []
    for i, e in enumerate(endpoints):
        if isinstance(e, FakeBackend):
            e = e.uri()
        entries.append({"uri": e, "apikey": f"backend-key-{i}"} if isinstance(e, str) else e)
    return entries


def write_config(path: Path, endpoints: list[Any], sections: dict[str, Any] | None = None
                 ) -> Path:
    """A configuration file with ``endpoints`` (if any) and extra top-level ``sections``."""
    doc = {"endpoints": endpoint_entries(endpoints)} if endpoints else {}
    path.write_text(json.dumps({**doc, **(sections or {})}))
    return path


class RunningGateway:
    """A gateway app served by waitress on a free loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.gateway: Gateway = self.app.extensions["apirouter"]
        self.server = GracefulServer(self.app, settings)
        _host, port = self.server.address
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}{settings.route_prefix}"
        self.config_file = Path(settings.config_file)
        self.http = requests.Session()
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()

    def lb(self, payload: Any = None, **kwargs: Any) -> requests.Response:
        if payload is None and "data" not in kwargs:
            payload = {"messages": [{"role": "user", "content": "hi"}]}
        return self.http.post(f"{self.url}/lb", json=payload, timeout=30, **kwargs)

    def get(self, route: str, **kwargs: Any) -> requests.Response:
        return self.http.get(f"{self.url}/{route}", timeout=30, **kwargs)

    def metrics(self) -> dict[str, Any]:
        return self.get("metrics").json()

    def rewrite_config(self, endpoints: list[Any]) -> None:
        write_config(self.config_file, endpoints)

    def stop(self) -> None:
        self.server.grace = 0
        self.server.request_stop()
        self._thread.join(10)
        self.gateway.stop()
        self.http.close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeBackend]]:
    """Factory of fake deployments, closed after the test."""
    made: list[FakeBackend] = []

    def make(*args: Any, **kwargs: Any) -> FakeBackend:
        backend = FakeBackend(*args, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test gateway in front of ``endpoints``; keyword overrides apply."""

    def make(endpoints: list[Any], env: dict[str, str] | None = None,
             sections: dict[str, Any] | None = None, **overrides: Any) -> Settings:
        config = write_config(tmp_path / "config.json", endpoints, sections)
        settings = Settings.from_env({**base_env(config), **(env or {})})
        return replace(settings, **{"port": 0, "host": "127.0.0.1", "threads": 64, **overrides})

    return make


@pytest.fixture
def start_gateway(gateway_settings: Callable[..., Settings]
                  ) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway served by waitress in front of ``endpoints``."""
    running: list[RunningGateway] = []

    def start(endpoints: list[Any], **kwargs: Any) -> RunningGateway:
        gw = RunningGateway(gateway_settings(endpoints, **kwargs))
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.stop()
