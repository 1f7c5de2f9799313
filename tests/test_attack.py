"""Hostile traffic against a real gateway: odd cooldowns, hostile configuration files, deeply
nested and malformed bodies, and a flood of wrong gateway keys.

Everything runs on 127.0.0.1 against a gateway served by waitress (the start_gateway fixture)
and fake deployments. Every case is bounded in count and time, and nothing sleeps. The cases
that misbehaved in the attack (issue 17) failed here before their fix; the others (unreadable
retry-after values, malformed, non-object and huge bodies) passed already and stay as guards.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest
import requests

from gateway_app.json_depth import MAX_JSON_DEPTH
from tests.conftest import GATEWAY_KEY, RunningGateway, endpoint_entries
from tests.fakes import FakeBackend, chat_body, reply, throttle

JSON = {"content-type": "application/json"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def is_json_error(response: requests.Response) -> bool:
    """The documented error shape, sent as JSON."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return False
    error = response.json().get("error")
    return isinstance(error, dict) and {"code", "message"} <= error.keys()


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """An array nested ``depth`` levels deep."""
    return b"[" * depth + inner + b"]" * depth


def pooled(start_gateway: Callable[..., RunningGateway], backend: FakeBackend,
           **kwargs: Any) -> RunningGateway:
    """A gateway with ``backend`` as /lb's endpoint and as the pool ``pool``."""
    pool = {"backends": [{"endpoint": backend.base, "deployment": "dep", "apikey": "pool-key"}]}
    return start_gateway([backend], sections={"deployments": {"pool": pool}}, **kwargs)


def reconfig(gw: RunningGateway, key: str = GATEWAY_KEY) -> requests.Response:
    return gw.http.post(f"{gw.url}/reconfig", headers={"x-api-gateway-key": key}, timeout=30)


# --- 429s with odd retry-after values ------------------------------------------------------

NOW = time.time()  # the dates are made when the tests are collected
ODD_RETRY_AFTER = {
    "negative": {"retry-after": "-5"},
    "negative ms": {"retry-after-ms": "-1000"},
    "zero": {"retry-after": "0"},
    "zero ms": {"retry-after-ms": "0"},
    "negative fraction": {"retry-after": "-0.5"},
    "past date": {"retry-after": formatdate(NOW - 3600, usegmt=True)},
    "date of now": {"retry-after": formatdate(NOW, usegmt=True)},
    "both negative": {"retry-after-ms": "-1", "retry-after": "-1"},
    "both not finite": {"retry-after-ms": "nan", "retry-after": "-inf"},
    "text": {"retry-after": "abc"},
    "nan": {"retry-after": "nan"},
    "inf": {"retry-after": "inf"},
    "overflow": {"retry-after": "1e309"},
    "-inf ms": {"retry-after-ms": "-inf"},
    "empty": {"retry-after": ""},
    "whitespace": {"retry-after": "   "},
}


@pytest.mark.parametrize("headers", ODD_RETRY_AFTER.values(), ids=ODD_RETRY_AFTER.keys())
def test_a_throttled_deployment_gets_no_call_whatever_its_retry_after(
        headers: dict[str, str], fake: Callable[..., FakeBackend],
        start_gateway: Callable[..., RunningGateway]) -> None:
    """A 429 always benches the deployment: a negative, zero, past or unreadable retry-after
    is treated as absent, so the default cooldown (10 s) applies."""
    throttled = fake().script(reply(429, {"error": {"code": "429", "message": "slow"}}, headers))
    spare = fake()
    gw = start_gateway([throttled, spare])
    answers = [gw.lb() for _ in range(10)]
    assert [r.status_code for r in answers] == [200] * 10
    assert throttled.calls == 1, f"{headers}: the throttled deployment got {throttled.calls} calls"
    assert spare.calls == 10


def test_a_huge_retry_after_is_capped(fake: Callable[..., FakeBackend],
                                      start_gateway: Callable[..., RunningGateway]) -> None:
    throttled = fake().script(throttle("1e308"))
    gw = start_gateway([throttled], max_retry_after=40.0)
    assert gw.lb().status_code == 429
    r = gw.lb()
    assert r.status_code == 429 and 39 <= int(r.headers["retry-after"]) <= 40
    assert throttled.calls == 1


# --- hostile configuration files on /reconfig ---------------------------------------------

def test_duplicate_uris_are_refused_and_the_old_list_keeps_serving(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    a, b = fake(), fake()
    gw = start_gateway([a, b])
    assert gw.lb().status_code == 200
    gw.rewrite_config([a, b, a])
    r = reconfig(gw)
    assert r.status_code == 400 and is_json_error(r)
    assert "endpoints[2].uri: same as endpoints[0].uri" in r.json()["error"]["message"]
    assert gw.get("instanceinfo").json()["oaiEndpoints"] == {"0": a.uri(), "1": b.uri()}
    assert gw.lb().status_code == 200
    # the counters were not reset by a reload that never happened
    assert gw.metrics()["endpointMetrics"][0]["metrics"]["apiCalls"] == 2


def test_the_same_deployment_twice_in_a_pool_is_refused(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    backend = fake()
    gw = pooled(start_gateway, backend)
    twice = {"endpoint": backend.base + "/", "deployment": "dep", "apikey": "other-key"}
    doc = {"endpoints": endpoint_entries([backend]),
           "deployments": {"pool": {"backends": [
               {"endpoint": backend.base, "deployment": "dep", "apikey": "pool-key"}, twice]}}}
    gw.config_file.write_text(json.dumps(doc))
    r = reconfig(gw)
    assert r.status_code == 400 and is_json_error(r)
    assert ("deployments.pool.backends[1]: same endpoint and deployment as "
            "deployments.pool.backends[0]") in r.json()["error"]["message"]


def test_a_10000_endpoint_list_is_refused(fake: Callable[..., FakeBackend],
                                          start_gateway: Callable[..., RunningGateway]) -> None:
    """Each call could otherwise try every one of them (5.1 s, 10,000 attempts)."""
    a = fake()
    gw = start_gateway([a])
    many = [f"http://127.0.0.1:9/openai/deployments/d{i}/chat/completions?api-version=1"
            for i in range(10_000)]
    gw.rewrite_config(many)
    r = reconfig(gw)
    assert r.status_code == 400 and is_json_error(r)
    assert "endpoints: at most 1000 endpoints" in r.json()["error"]["message"]
    assert gw.get("instanceinfo").json()["oaiEndpoints"] == {"0": a.uri()}


@pytest.mark.parametrize("depth", [100, 100_000])
def test_a_deeply_nested_configuration_file_is_a_400_not_a_500(
        depth: int, fake: Callable[..., FakeBackend],
        start_gateway: Callable[..., RunningGateway]) -> None:
    a = fake()
    gw = start_gateway([a])
    gw.config_file.write_bytes(b'{"endpoints": ' + nested(depth, b"") + b"}")
    for r in (reconfig(gw), gw.get(f"reconfig/{GATEWAY_KEY}")):
        assert r.status_code == 400 and is_json_error(r), r.text[:200]
        assert r.json()["error"]["code"] == "InvalidConfiguration"
        assert f"more than {MAX_JSON_DEPTH} levels" in r.json()["error"]["message"]
    assert gw.lb().status_code == 200 and a.calls == 1


# --- deeply nested, malformed, non-object and huge bodies ---------------------------------

ROUTES = ["lb", "/v1/chat/completions",
          "/openai/deployments/pool/chat/completions?api-version=2024-10-21"]


def post(gw: RunningGateway, route: str, data: bytes) -> requests.Response:
    url = f"{gw.base}{route}" if route.startswith("/") else f"{gw.url}/{route}"
    return gw.http.post(url, data=data, headers=JSON, timeout=30)


@pytest.mark.parametrize("route", ROUTES)
def test_bodies_nested_beyond_the_bound_are_a_400_on_every_route(
        route: str, fake: Callable[..., FakeBackend],
        start_gateway: Callable[..., RunningGateway]) -> None:
    backend = fake()
    gw = pooled(start_gateway, backend)
    shallow = b'{"model": "pool", "messages": [], "x": ' + nested(MAX_JSON_DEPTH - 1) + b"}"
    assert post(gw, route, shallow).status_code == 200  # exactly at the bound: served
    for depth in (MAX_JSON_DEPTH, 100, 900, 100_000):
        body = b'{"model": "pool", "messages": [], "x": ' + nested(depth) + b"}"
        r = post(gw, route, body)
        assert r.status_code == 400 and is_json_error(r), (depth, r.status_code, r.text[:200])
        assert "nested" in r.json()["error"]["message"]
    assert backend.calls == 1


def test_a_streamed_body_nested_just_under_the_recursion_limit_is_no_500(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    """Before the bound, such a body parsed in the handler, then the proxy's re-encoding
    (adding stream_options) hit the recursion limit a few frames deeper: a 500."""
    backend = fake()
    gw = start_gateway([backend])
    for depth in range(940, 1000):
        body = b'{"stream": true, "messages": [], "x": ' + nested(depth) + b"}"
        r = gw.lb(data=body, headers=JSON)
        assert r.status_code == 400 and is_json_error(r), (depth, r.status_code)
    assert backend.calls == 0
    assert gw.lb().status_code == 200


MALFORMED = [b"{bad", b'{"messages": [}', b'{"a": 1,}', b"{'a': 1}", b'{"a": 1} x',
             b"\xff\xfe\xfd", b'{"a": "\xc3\x28"}', b"\x00" * 16, b"", b" \r\n\t ",
             b"[" * 10_000, b'{"a": ' * 10_000]
NOT_OBJECTS = [b"null", b"true", b"42", b'"a string"', b"[]", b'[{"messages": []}]']


@pytest.mark.parametrize("route", ROUTES)
def test_malformed_and_non_object_bodies_get_a_json_400(
        route: str, fake: Callable[..., FakeBackend],
        start_gateway: Callable[..., RunningGateway]) -> None:
    backend = fake()
    gw = pooled(start_gateway, backend)
    for body in MALFORMED + NOT_OBJECTS:
        r = post(gw, route, body)
        assert r.status_code == 400 and is_json_error(r), (body[:20], r.status_code)
    assert backend.calls == 0
    assert post(gw, route, json.dumps({**CHAT, "model": "pool"}).encode()).status_code == 200


def test_huge_but_legal_bodies_are_relayed_whole(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    """Wide is not deep: many messages, a long string, long arrays of numbers all pass."""
    backend = fake()
    gw = start_gateway([backend], max_body_bytes=16 * 1024 * 1024)
    bodies = [
        {"messages": [{"role": "user", "content": f"message {i}"} for i in range(50_000)]},
        {"messages": [{"role": "user", "content": "x" * (12 * 1024 * 1024)}]},
        {"input": [[i % 50_000 for i in range(8_000)] for _ in range(200)]},
        {"messages": [], "tools": [{"type": "function", "function": {
            "name": f"f{i}", "parameters": {"type": "object", "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "array", "items": {
                    "type": "string"}}}}}}}} for i in range(2_000)]},
    ]
    for index, body in enumerate(bodies):
        data = json.dumps(body).encode()
        r = gw.lb(data=data, headers=JSON)
        assert r.status_code == 200 and r.json() == chat_body(), index
        assert backend.received[-1].body == data
    assert backend.calls == len(bodies)


# --- wrong gateway keys, and the operator ------------------------------------------------

def test_the_operator_gets_in_during_a_wrong_key_flood(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    """Behind an ingress every client shares one address: an attacker repeating wrong keys
    from it must not keep the operator out. Every right key reloads; wrong keys are 401, then
    429 once the address is over its allowance, and never reload."""
    a, b = fake(), fake()
    gw = start_gateway([a], env={"API_GATEWAY_RECONFIG_MAX_FAILURES": "3"})
    wrong: list[int] = []
    stop = threading.Event()

    def attacker() -> None:
        with requests.Session() as http:
            for i in range(300):  # bounded, whatever happens
                if stop.is_set():
                    return
                r = http.post(f"{gw.url}/reconfig", headers={"x-api-gateway-key": f"guess-{i}"},
                              timeout=30)
                wrong.append(r.status_code)

    flood = threading.Thread(target=attacker)
    flood.start()
    try:
        right = []
        for i in range(30):
            order = [a, b] if i % 2 else [b, a]  # a new list each time: each reload shows
            gw.rewrite_config(order)
            for _ in range(3):  # interleaved from the same address, in this thread too
                wrong.append(gw.get(f"reconfig/guess-x{i}").status_code)
            r = reconfig(gw) if i % 2 else gw.get(f"reconfig/{GATEWAY_KEY}")
            right.append(r.status_code)
            assert r.json().get("oaiEndpoints") == {"0": order[0].uri(), "1": order[1].uri()}
            assert gw.get("instanceinfo").json()["oaiEndpoints"] == r.json()["oaiEndpoints"]
    finally:
        stop.set()
        flood.join(30)
    assert right == [200] * 30
    assert len(wrong) > 3 * 30  # the flood ran alongside
    assert set(wrong) <= {401, 429}
    assert wrong.count(401) == 3  # the allowance per minute; the rest were 429


def test_a_throttled_address_still_reloads_with_the_right_key(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    backend = fake()
    gw = start_gateway([backend], env={"API_GATEWAY_RECONFIG_MAX_FAILURES": "1"})
    codes = {gw.get(f"reconfig/wrong-{i}").status_code for i in range(50)}
    assert codes == {401, 429}
    assert gw.lb().status_code == 200 and gw.get("healthz").status_code == 200
    assert gw.get(f"reconfig/{GATEWAY_KEY}").status_code == 200
