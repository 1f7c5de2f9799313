"""POST /lb: priority order, cooldowns, failover, relayed answers; all over real HTTP."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.fakes import hang, refused_uri, reply, reset, throttle, wait_until


def test_highest_priority_endpoint_serves_with_its_key(fake, start_gateway):
    first, second = fake(), fake()
    gw = start_gateway([first, second])
    r = gw.lb({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert r.status_code == 200
    assert r.json()["usage"]["total_tokens"] == 30
    assert (first.calls, second.calls) == (1, 0)
    sent = first.received[0]
    assert sent.headers["api-key"] == "backend-key-0"
    assert sent.json()["max_tokens"] == 5
    assert sent.path.endswith("/chat/completions?api-version=2024-10-21")
    assert r.headers["x-apirouter-endpoint"] == "0"


def test_explicit_priority_overrides_file_order(fake, start_gateway):
    a, b = fake(), fake()
    gw = start_gateway([{"uri": a.uri(), "apikey": "ka", "priority": 5},
                        {"uri": b.uri(), "apikey": "kb", "priority": 1}])
    assert gw.lb().status_code == 200
    assert (a.calls, b.calls) == (0, 1)
    assert gw.get("instanceinfo").json()["oaiEndpoints"] == {"0": b.uri(), "1": a.uri()}


def test_429_cools_endpoint_and_next_is_tried_at_once(fake, start_gateway):
    first = fake().script(throttle(retry_after="30"))
    second = fake()
    gw = start_gateway([first, second])
    started = time.monotonic()
    r = gw.lb()
    assert r.status_code == 200
    assert time.monotonic() - started < 5  # no sleeping in the gateway
    assert r.headers["x-apirouter-endpoint"] == "1"
    assert r.headers["x-apirouter-attempts"] == "2"
    # while cooling, the first endpoint receives nothing
    for _ in range(5):
        assert gw.lb().status_code == 200
    assert (first.calls, second.calls) == (1, 6)
    m = gw.metrics()["endpointMetrics"]
    assert m[0]["metrics"]["failedCalls"] == 1
    assert m[1]["metrics"]["apiCalls"] == 6


def test_cooldown_ends_and_endpoint_serves_again(fake, start_gateway):
    first = fake().script(throttle(retry_after=None, retry_after_ms="300"))
    second = fake()
    gw = start_gateway([first, second])
    assert gw.lb().headers["x-apirouter-endpoint"] == "1"
    assert gw.lb().headers["x-apirouter-endpoint"] == "1"
    wait_until(lambda: gw.lb().headers["x-apirouter-endpoint"] == "0", timeout=5)
    assert first.calls == 2


def test_all_busy_gives_429_with_smallest_remaining_cooldown(fake, start_gateway):
    first = fake(default=throttle(retry_after="40"))
    second = fake(default=throttle(retry_after=None, retry_after_ms="2500"))
    gw = start_gateway([first, second])
    r = gw.lb()
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"  # 2.5 s rounded up
    assert 2000 <= int(r.headers["retry-after-ms"]) <= 2500
    assert r.json()["error"]["code"] == "AllEndpointsBusy"
    # while both cool down, nothing reaches either backend
    again = gw.lb()
    assert again.status_code == 429
    assert (first.calls, second.calls) == (1, 1)
    body = gw.metrics()
    assert (body["successApiCalls"], body["failedApiCalls"], body["totalApiCalls"]) == (0, 2, 2)


def test_retry_after_http_date_is_honoured(fake, start_gateway):
    from email.utils import formatdate

    first = fake().script(throttle(retry_after=formatdate(time.time() + 20, usegmt=True)))
    gw = start_gateway([first])
    assert gw.lb().status_code == 429  # the backend's own 429 made it cool
    r = gw.lb()
    assert r.status_code == 429
    assert 18 <= int(r.headers["retry-after"]) <= 21
    assert first.calls == 1


def test_429_without_retry_after_uses_the_default(fake, start_gateway):
    first = fake().script(throttle(retry_after=None))
    gw = start_gateway([first], default_retry_after=7.0)
    gw.lb()
    assert gw.lb().headers["retry-after"] == "7"


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_client_errors_are_returned_as_they_are(fake, start_gateway, status):
    body = {"error": {"code": "BadRequest", "message": f"backend said {status}"}}
    first = fake().script(reply(status, body, {"x-ratelimit-remaining-requests": "9"}))
    second = fake()
    gw = start_gateway([first, second])
    r = gw.lb()
    assert r.status_code == status
    assert r.json() == body
    assert r.headers["x-ratelimit-remaining-requests"] == "9"
    assert second.calls == 0


@pytest.mark.parametrize("behaviour", [reply(500), reply(503), reset()],
                         ids=["500", "503", "reset"])
def test_faults_fail_over_and_bench_the_endpoint(fake, start_gateway, behaviour):
    first = fake().script(behaviour)
    second = fake()
    gw = start_gateway([first, second], failure_cooldown=30.0)
    r = gw.lb()
    assert r.status_code == 200
    assert r.headers["x-apirouter-endpoint"] == "1"
    gw.lb()
    assert first.calls == 1  # benched after the fault
    assert gw.metrics()["endpointMetrics"][0]["metrics"]["failedCalls"] == 1


def test_connection_refused_fails_over(fake, start_gateway):
    second = fake()
    gw = start_gateway([refused_uri(), second])
    assert gw.lb().status_code == 200
    assert second.calls == 1


def test_read_timeout_fails_over(fake, start_gateway):
    slow = fake().script(hang(10))
    second = fake()
    gw = start_gateway([slow, second], read_timeout=0.3)
    r = gw.lb()
    assert r.status_code == 200
    assert r.headers["x-apirouter-attempts"] == "2"


def test_per_endpoint_timeout_overrides_the_default(fake, start_gateway):
    slow = fake().script(reply(delay=0.6))
    gw = start_gateway([{"uri": slow.uri(), "apikey": "k", "timeout": 2}], read_timeout=0.2)
    assert gw.lb().status_code == 200


def test_every_endpoint_failing_gives_503_with_retry_after(fake, start_gateway):
    gw = start_gateway([refused_uri(), fake(default=reply(502))], failure_cooldown=4.0)
    r = gw.lb()
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "NoEndpointAvailable"
    assert 1 <= int(r.headers["retry-after"]) <= 4


def test_fault_bench_grows_and_resets_on_success(fake, start_gateway):
    flaky = fake().script(reply(500), reply(500))
    gw = start_gateway([flaky], failure_cooldown=0.2, failure_cooldown_max=10.0)
    assert gw.lb().status_code == 503
    wait_until(lambda: gw.lb().status_code == 503 and flaky.calls == 2, timeout=5)
    # second fault in a row: benched 0.4 s
    backend = gw.gateway.current.lb[0].backend
    assert backend.fault_streak == 2
    wait_until(lambda: gw.lb().status_code == 200, timeout=5)
    assert backend.fault_streak == 0


def test_useful_headers_reach_the_client_and_hop_by_hop_do_not(fake, start_gateway):
    first = fake().script(reply(200, None, {"x-ratelimit-remaining-tokens": "990",
                                            "apim-request-id": "abc", "keep-alive": "x",
                                            "x-ms-region": "East US"}))
    gw = start_gateway([first])
    r = gw.lb()
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-ratelimit-remaining-tokens"] == "990"
    assert r.headers["apim-request-id"] == "abc"
    assert r.headers["x-ms-region"] == "East US"
    assert "keep-alive" not in {k.lower() for k in r.headers}


def test_client_credentials_never_reach_a_backend(fake, start_gateway):
    first = fake()
    gw = start_gateway([first])
    gw.lb(headers={"api-key": "client-secret", "Authorization": "Bearer client-token",
                   "Cookie": "a=b", "x-request-id": "trace-123"})
    sent = first.received[0].headers
    assert sent["api-key"] == "backend-key-0"
    assert "authorization" not in sent and "cookie" not in sent
    assert sent["x-request-id"] == "trace-123"


def test_request_id_is_kept_or_made(fake, start_gateway):
    gw = start_gateway([fake()])
    assert gw.lb(headers={"x-request-id": "mine-1"}).headers["x-request-id"] == "mine-1"
    made = gw.lb().headers["x-request-id"]
    assert len(made) == 32


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"), (b"   ", "empty"), (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"), (b"\xff\xfe", "not valid JSON"),
])
def test_bad_bodies_get_400_and_reach_no_backend(fake, start_gateway, data, fragment):
    first = fake()
    gw = start_gateway([first])
    r = gw.http.post(f"{gw.url}/lb", data=data, timeout=10)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["error"]["message"]
    assert first.calls == 0
    assert gw.lb().status_code == 200  # and it keeps serving


def test_oversized_body_gets_json_413(fake, start_gateway):
    first = fake()
    gw = start_gateway([first], max_body_bytes=2048)
    r = gw.lb({"messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "PayloadTooLarge"
    assert first.calls == 0


def test_unknown_route_and_wrong_method_are_json(fake, start_gateway):
    gw = start_gateway([fake()])
    r = gw.http.get(f"{gw.base}/nowhere", timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "NotFound")
    r = gw.http.get(f"{gw.url}/lb", timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (405, "MethodNotAllowed")
    assert "POST" in r.headers["Allow"]


def test_a_thousand_faults_in_a_row_still_fail_over(fake, start_gateway):
    """The bench doubles per fault; 2 ** 1024 used to overflow into 500s without failover."""
    healthy = fake()
    gw = start_gateway([refused_uri(), healthy], failure_cooldown=0.0)
    statuses = Counter(gw.lb().status_code for _ in range(1100))
    assert statuses == {200: 1100}
    assert gw.gateway.current.lb[0].backend.fault_streak == 1100
    assert gw.gateway.current.lb[0].backend.in_flight == 0


def test_a_call_tries_at_most_max_attempts_deployments(fake, start_gateway):
    failing = [fake(default=reply(500)) for _ in range(6)]
    gw = start_gateway(failing, env={"API_GATEWAY_MAX_ATTEMPTS": "3"})
    r = gw.lb()
    assert r.status_code == 503
    assert [f.calls for f in failing] == [1, 1, 1, 0, 0, 0]


def test_no_attempt_starts_after_the_failover_timeout(fake, start_gateway):
    slow = [fake(default=reply(500, delay=0.4)) for _ in range(5)]
    gw = start_gateway(slow, env={"API_GATEWAY_FAILOVER_TIMEOUT": "0.5"})
    assert gw.lb().status_code == 503
    assert sum(f.calls for f in slow) == 2  # started at 0 s and 0.4 s; not at 0.8 s
