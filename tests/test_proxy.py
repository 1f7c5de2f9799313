"""The proxy without HTTP: a stub transport answers, the real registry keeps the state."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
import urllib3

from gateway_app.config import EndpointConfig, GatewayConfig
from gateway_app.keys import ClientKeys
from gateway_app.routing.proxy import Attempt, Attempts, Call, Proxy
from gateway_app.routing.registry import Registry, Skip
from gateway_app.routing.telemetry import Telemetry
from gateway_app.routing.transport import BackendReply
from gateway_app.settings import Settings
from tests.fakes import chat_body

URL = "https://{}.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21"


class StubTransport:
    """Answers each post with the next scripted reply, or raises the scripted exception."""

    def __init__(self, *script: BackendReply | Exception) -> None:
        self.script = list(script)
        self.sent: list[str] = []

    def post(self, url: str, *_args: object) -> BackendReply:
        self.sent.append(url)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def close(self) -> None:
        pass


def answer(status: int, body: dict | None = None, **headers: str) -> BackendReply:
    data = json.dumps(chat_body() if body is None else body).encode()
    raw = urllib3.HTTPResponse(body=io.BytesIO(data), status=status, preload_content=False,
                               headers={"content-type": "application/json", **headers})
    return BackendReply(raw)


@pytest.fixture
def make_proxy(tmp_path) -> Callable[..., tuple[Proxy, Registry]]:
    def make(*transports: StubTransport) -> tuple[Proxy, Registry]:
        settings = Settings.from_env({
            "API_GATEWAY_KEY": "unit-test-gateway-key-1",
            "API_GATEWAY_CONFIG_FILE": str(tmp_path / "c.json"),
            "API_GATEWAY_NAME": "unit", "API_GATEWAY_ENV": "unit",
            "API_GATEWAY_METRICS_CINTERVAL": "1", "API_GATEWAY_METRICS_CHISTORY": "2"})
        registry = Registry(4, 2, settings.failure_cooldown, settings.failure_cooldown_max,
                            settings.connect_timeout, settings.read_timeout)
        endpoints = [EndpointConfig(URL.format(f"r{i}"), f"key-{i}", i)
                     for i in range(len(transports))]
        snapshot = registry.publish(GatewayConfig(endpoints), ClientKeys({}))
        for entry, transport in zip(snapshot.lb, transports, strict=True):
            entry.backend.transport = transport
        return Proxy(registry, replace(settings, log_level="warn"), Telemetry(registry)), registry

    return make


def call() -> Call:
    return Call(body=b'{"messages": []}', payload={"messages": []}, headers={},
                request_id="r-1")


def test_a_429_fails_over_and_each_attempt_is_typed(make_proxy):
    proxy, registry = make_proxy(StubTransport(answer(429, {}, **{"retry-after": "7"})),
                                 StubTransport(answer(200)))
    result = proxy.forward(call(), registry.current.lb)
    assert result.status == 200
    assert dict(result.headers)["x-apirouter-attempts"] == "2"
    first, second = registry.current.lb
    assert registry.acquire(first) is None  # cooling down for the 7 s it asked
    assert 6 < first.backend.remaining(time.monotonic()) <= 7
    assert first.backend.in_flight == 0 and second.backend.in_flight == 0


def test_an_unexpected_exception_gives_the_in_flight_count_back(make_proxy):
    proxy, registry = make_proxy(StubTransport(RuntimeError("a bug")))
    with pytest.raises(RuntimeError):
        proxy.forward(call(), registry.current.lb)
    assert registry.current.lb[0].backend.in_flight == 0


def test_faults_fail_over_and_all_failing_is_a_503(make_proxy):
    proxy, registry = make_proxy(
        StubTransport(urllib3.exceptions.NewConnectionError(None, "refused")),
        StubTransport(answer(502, {})))
    result = proxy.forward(call(), registry.current.lb)
    assert result.status == 503
    assert json.loads(result.body)["error"]["code"] == "NoEndpointAvailable"
    assert all(e.backend.fault_streak == 1 for e in registry.current.lb)


def test_attempts_print_as_the_log_shows_them():
    attempts = Attempts([Attempt(0, 429), Attempt(1, error="ReadTimeoutError"),
                         Attempt(2, 200)])
    assert str(attempts) == "0:429,1:ReadTimeoutError,2:200"
    assert attempts.throttled
    assert [a.kind for a in attempts] == ["429", "error", "2xx"]
    assert str(Attempts()) == "-" and not Attempts().throttled
    passed = Attempts([Attempt(0, skip=Skip.HEADROOM), Attempt(1, skip=Skip.UTILIZATION),
                       Attempt(2, 200)])
    assert str(passed) == "0:skip-headroom,1:skip-utilization,2:200"
    assert passed.sent == 1 and not passed.throttled
