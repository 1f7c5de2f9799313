"""Fixtures for the simulator tests: real simulators on 127.0.0.1, spoken to with requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from simulator import SimulatorServer

API_VERSION = "2024-10-21"


def deployment(**overrides: Any) -> dict[str, Any]:
    """A fast, generous deployment named d1 with key k1, changed by ``overrides``."""
    base: dict[str, Any] = {
        "name": "d1", "apikey": "k1", "tpm": 100_000, "rpm": 1000,
        "ttft_ms": 0, "ms_per_token": 0, "embedding_dimensions": 8,
    }
    base.update(overrides)
    return base


class Sim:
    """A started simulator and a requests Session to call it."""

    def __init__(self, server: SimulatorServer) -> None:
        self.server = server
        self.session = requests.Session()

    def url(self, operation: str = "chat/completions", name: str = "d1",
            api_version: str | None = API_VERSION) -> str:
        query = f"?api-version={api_version}" if api_version else ""
        return f"{self.server.url}/openai/deployments/{name}/{operation}{query}"

    def post(self, operation: str = "chat/completions", body: Any = None, *, name: str = "d1",
             key: str | None = "k1", api_version: str | None = API_VERSION,
             stream: bool = False, **kwargs: Any) -> requests.Response:
        """POST an OpenAI body (a small chat by default) to a deployment."""
        if body is None:
            body = {"messages": [{"role": "user", "content": "hi"}]}
        headers = {"api-key": key} if key is not None else {}
        return self.session.post(self.url(operation, name, api_version), json=body,
                                 headers=headers, stream=stream, timeout=10, **kwargs)


@pytest.fixture
def sim() -> Iterator[Any]:
    """``sim({...}, {...})`` starts a simulator with one deployment per dict, each dict
    overriding the fast defaults of ``deployment()``; every simulator is stopped at the end."""
    started: list[Sim] = []

    def start(*overrides: dict[str, Any]) -> Sim:
        config = {"deployments": [deployment(**o) for o in overrides or ({},)]}
        started.append(Sim(SimulatorServer(config, host="127.0.0.1", port=0).start()))
        return started[-1]

    yield start
    for s in started:
        s.session.close()
        s.server.stop()

