"""Counters stay exact when many calls run at once through the served gateway."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from tests.fakes import chat_body, reply, throttle


def test_concurrent_calls_add_up_exactly(fake, start_gateway):
    calls = 300
    first = fake(default=reply(200, chat_body(tokens=7), delay=0.005))
    gw = start_gateway([first], threads=64)

    def one(_: int) -> int:
        return requests.post(f"{gw.url}/lb", json={"messages": []}, timeout=30).status_code

    with ThreadPoolExecutor(48) as pool:
        statuses = list(pool.map(one, range(calls)))
    assert statuses == [200] * calls
    body = gw.metrics()
    m = body["endpointMetrics"][0]["metrics"]
    assert (m["apiCalls"], m["failedCalls"], m["totalCalls"]) == (calls, 0, calls)
    assert m["kInferenceTokens"] == calls * 7 / 1000
    assert (body["successApiCalls"], body["totalApiCalls"]) == (calls, calls)
    assert first.calls == calls


def test_concurrent_throttling_and_failover_add_up(fake, start_gateway):
    calls = 200
    # the first endpoint throttles with a zero cooldown, so every call may try it again
    first = fake(default=throttle(retry_after="0"))
    second = fake(default=reply(200, chat_body(tokens=3)))
    gw = start_gateway([first, second], threads=64)

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(
            lambda _: requests.post(f"{gw.url}/lb", json={}, timeout=30).status_code,
            range(calls)))
    assert statuses == [200] * calls
    m0, m1 = (e["metrics"] for e in gw.metrics()["endpointMetrics"])
    assert m0["failedCalls"] == first.calls
    assert m1["apiCalls"] == second.calls == calls
