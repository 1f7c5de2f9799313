"""/instanceinfo, /metrics, /healthz and /readyz: the original's keys and metrics semantics."""

from __future__ import annotations

import pytest

from tests.fakes import chat_body, reply, throttle, wait_until


def test_instanceinfo_has_the_original_keys(fake, start_gateway):
    first, second = fake(), fake()
    gw = start_gateway([first, second], env={"POD_NAME": "pod-1", "NODE_NAME": "node-a"})
    body = gw.get("instanceinfo").json()
    assert set(body) == {"serverName", "serverVersion", "envVars", "containerInfo", "versions",
                         "oaiEndpoints", "apiGatewayUri", "endpointUri", "serverStartDate",
                         "status"}
    assert set(body["envVars"]) == {"apiGatewayHost", "apiGatewayListenPort", "apiGatewayEnv",
                                    "apiGatewayCollectInterval",
                                    "apiGatewayCollectHistoryCount", "apiGatewayConfigFile"}
    assert set(body["containerInfo"]) == {"imageID", "nodeName", "podName", "podNamespace",
                                          "podServiceAccount"}
    assert body["containerInfo"]["podName"] == "pod-1"
    assert body["oaiEndpoints"] == {"0": first.uri(), "1": second.uri()}
    assert body["apiGatewayUri"] == "/api/v1/test/apirouter"
    assert body["endpointUri"] == "/api/v1/test/apirouter/instanceinfo"
    assert body["status"] == "OK" and body["serverName"] == "test-gw"
    assert "python" in body["versions"]


def test_metrics_shape_and_per_endpoint_counts(fake, start_gateway):
    first = fake().script(throttle("30"))
    second = fake(default=reply(200, chat_body(tokens=1500)))
    gw = start_gateway([first, second])
    for _ in range(3):
        assert gw.lb().status_code == 200
    body = gw.metrics()
    assert set(body) == {"listenPort", "instanceName", "collectionInterval", "historyCount",
                         "endpointMetrics", "successApiCalls", "failedApiCalls",
                         "totalApiCalls", "endpointUri", "currentDate", "status"}
    assert (body["instanceName"], body["collectionInterval"], body["historyCount"]) == (
        "test-gw", 60.0, 5)
    m0, m1 = body["endpointMetrics"]
    assert set(m0) == {"endpoint", "priority", "metrics"}
    assert (m0["endpoint"], m0["priority"]) == (first.uri(), 0)
    assert m0["metrics"] == {"apiCalls": 0, "failedCalls": 1, "totalCalls": 1,
                             "kInferenceTokens": 0.0, "history": {}}
    assert m1["metrics"]["apiCalls"] == 3
    assert m1["metrics"]["kInferenceTokens"] == pytest.approx(4.5)
    assert (body["successApiCalls"], body["failedApiCalls"], body["totalApiCalls"]) == (3, 0, 3)


def test_intervals_close_on_time_without_traffic_and_history_is_bounded(fake, start_gateway):
    backend = fake(default=reply(200, chat_body(tokens=2000)))
    # 0.01 minutes = 0.6 s per interval, at most 3 kept
    gw = start_gateway([backend], env={"API_GATEWAY_METRICS_CINTERVAL": "0.01",
                                       "API_GATEWAY_METRICS_CHISTORY": "3"})
    gw.lb()
    gw.lb()

    def history():
        return gw.metrics()["endpointMetrics"][0]["metrics"]["history"]

    # the two calls may straddle a boundary: once both intervals closed, they add up to 2
    def closed_calls():
        entries = [e["collectedMetrics"] for e in history().values()]
        busy = [e for e in entries if e["noOfApiCalls"]]
        return busy if sum(e["noOfApiCalls"] for e in busy) == 2 else None

    for entry in wait_until(closed_calls, timeout=5):
        n = entry["noOfApiCalls"]
        assert entry["noOfFailedCalls"] == 0
        assert entry["throughput"] == {"kTokensPerWindow": 2.0 * n,
                                       "requestsPerWindow": 12.0 * n,
                                       "avgTokensPerCall": 2000.0, "avgRequestsPerCall": 12.0}
        assert entry["latency"]["avgResponseTimeMsec"] > 0
    assert history()["0"]["collectionTime"].endswith("+00:00")
    # with no traffic, intervals keep closing; the oldest are dropped beyond 3
    wait_until(lambda: len(history()) == 3
               and history()["2"]["collectedMetrics"]["noOfApiCalls"] == 0, timeout=5)
    wait_until(lambda: history()["0"]["collectedMetrics"]["noOfApiCalls"] == 0, timeout=5)
    assert len(history()) == 3
    assert gw.metrics()["endpointMetrics"][0]["metrics"]["apiCalls"] == 0


def test_healthz_and_readyz(fake, start_gateway):
    first = fake(default=reply(500))
    gw = start_gateway([first], failure_cooldown=30.0)
    assert gw.get("healthz").json()["status"] == "OK"
    assert gw.get("readyz").status_code == 200
    gw.lb()  # the only endpoint is benched for a fault
    r = gw.get("readyz")
    assert r.status_code == 503
    assert r.json()["endpoints"][0]["reason"] == "failed"
    assert gw.get("healthz").status_code == 200


def test_readyz_stays_ready_while_only_throttled(fake, start_gateway):
    gw = start_gateway([fake(default=throttle("30"))])
    assert gw.lb().status_code == 429
    r = gw.get("readyz")
    assert r.status_code == 200
    assert r.json()["endpoints"][0]["reason"] == "throttled"
