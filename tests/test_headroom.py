"""Headroom routing through a real gateway: fake deployments state their remaining budget."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from gateway_app.routing.proxy import Call
from gateway_app.web.routes import read_call
from tests.fakes import reply, wait_until
from tests.test_operations import sample

SMALL = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}  # costs 1 + 10
LARGE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}  # costs 501
JSON_LOG = {"API_GATEWAY_LOG_FORMAT": "json", "API_GATEWAY_LOG_LEVEL": "info"}


def room(requests: int | None = 100, tokens: int | None = None,
         utilization: str | None = None) -> dict[str, str]:
    """Headers of an answer that states what is left (None: not stated)."""
    headers = {}
    if requests is not None:
        headers["x-ratelimit-remaining-requests"] = str(requests)
    if tokens is not None:
        headers["x-ratelimit-remaining-tokens"] = str(tokens)
    if utilization is not None:
        headers["azure-openai-deployment-utilization"] = utilization
    return headers


def served_by(response: Any) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-apirouter-endpoint"]


def call_lines(captured: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, (line for line in captured.splitlines()
                                        if line.startswith("{")))
            if e["message"].startswith("call ")]


def test_a_call_that_cannot_fit_skips_the_backend_without_calling_it(fake, start_gateway,
                                                                      capsys):
    first = fake(default=reply(200, None, room(tokens=50)))
    second = fake()
    gw = start_gateway([first, second], env=JSON_LOG)
    assert served_by(gw.lb(SMALL)) == "0"  # no reading yet: the first one, as always
    large = gw.lb(LARGE)
    assert served_by(large) == "1" and large.headers["x-apirouter-attempts"] == "1"
    assert first.calls == 1  # never asked
    assert served_by(gw.lb(SMALL)) == "0"  # a call that fits still goes there
    assert first.calls == 2
    assert [e["attempts"] for e in call_lines(capsys.readouterr().err)] == [
        "0:200", "0:skip-headroom,1:200", "0:200"]
    text = gw.get("prometheus").text
    ep0 = first.uri().split("?")[0]
    assert sample(text, "apirouter_skips_total", pool="/lb", endpoint=ep0,
                  reason="headroom") == 1
    assert "apirouter_cooldowns_total{" not in text  # passed over is not throttled
    rows = gw.metrics()["endpointMetrics"]
    assert rows[0]["metrics"]["failedCalls"] == 0 and rows[0]["metrics"]["apiCalls"] == 2


def test_concurrent_calls_do_not_overfill_a_backend_with_room_for_one(fake, start_gateway):
    # room for one more small call (11 tokens of 20); answers slow enough that the whole
    # burst is routed before any of them comes back with a new reading
    first = fake(default=reply(200, None, room(tokens=20), delay=0.5))
    second = fake()
    gw = start_gateway([first, second])
    assert served_by(gw.lb(SMALL)) == "0"
    results: list[str] = []
    start = threading.Barrier(8)

    def call() -> None:
        start.wait()
        results.append(served_by(gw.lb(SMALL)))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["0"] + ["1"] * 7
    assert first.calls == 2 and second.calls == 7


def test_the_reading_expires_after_the_headroom_seconds(fake, start_gateway):
    first = fake(default=reply(200, None, room(tokens=0)))
    second = fake()
    gw = start_gateway([first, second], env={"API_GATEWAY_HEADROOM_SECONDS": "0.5"})
    assert served_by(gw.lb(SMALL)) == "0"
    read = time.monotonic()
    assert served_by(gw.lb(SMALL)) == "1"  # full, by the reading
    wait_until(lambda: served_by(gw.lb(SMALL)) == "0", timeout=5, interval=0.05)
    assert time.monotonic() - read >= 0.45  # not trusted any more: tried again
    assert first.calls == 2


def test_when_no_backend_fits_they_are_tried_in_order(fake, start_gateway, capsys):
    first = fake(default=reply(200, None, room(tokens=0)))
    second = fake(default=reply(200, None, room(requests=0)))
    gw = start_gateway([first, second], env=JSON_LOG)
    assert served_by(gw.lb(SMALL)) == "0"
    assert served_by(gw.lb(SMALL)) == "1"
    r = gw.lb(SMALL)  # both say full: tried anyway, in order, and the first one serves it
    assert served_by(r) == "0" and r.headers["x-apirouter-attempts"] == "1"
    attempts = [e["attempts"] for e in call_lines(capsys.readouterr().err)]
    assert attempts[-1] == "0:skip-headroom,1:skip-headroom,0:200"
    assert first.calls == 2 and second.calls == 1


def test_off_restores_the_original_behaviour(fake, start_gateway):
    first = fake(default=reply(200, None, room(requests=0, tokens=0)))
    second = fake()
    gw = start_gateway([first, second], env={"API_GATEWAY_HEADROOM": "off"})
    assert [served_by(gw.lb(payload)) for payload in (SMALL, LARGE, SMALL)] == ["0"] * 3
    assert second.calls == 0
    assert "apirouter_skips_total{" not in gw.get("prometheus").text


def test_above_its_utilization_limit_a_provisioned_deployment_spills_to_the_next(
        fake, start_gateway):
    provisioned = fake(default=reply(200, None, room(None, utilization="85.5%")))
    standard = fake()
    gw = start_gateway([{"uri": provisioned.uri(), "apikey": "k0", "utilizationLimit": 80},
                        standard])
    assert served_by(gw.lb(SMALL)) == "0"
    assert served_by(gw.lb(SMALL)) == "1"
    assert provisioned.calls == 1
    ep0 = provisioned.uri().split("?")[0]
    assert sample(gw.get("prometheus").text, "apirouter_skips_total", endpoint=ep0,
                  reason="utilization") == 1


def test_a_pool_backend_keeps_its_calls_until_it_is_above_its_limit(fake, start_gateway):
    under, over = room(None, utilization="85.5%"), room(None, utilization="95%")
    provisioned = fake(default=reply(200, None, over)).script(reply(200, None, under),
                                                              reply(200, None, under))
    standard = fake()
    gw = start_gateway([], sections={"deployments": {"gpt": {"backends": [
        {"endpoint": provisioned.base, "deployment": "ptu", "apikey": "k0",
         "utilizationLimit": 90},
        {"endpoint": standard.base, "deployment": "paygo", "apikey": "k1"}]}}})
    url = f"{gw.base}/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
    served = [served_by(gw.http.post(url, json=SMALL, timeout=10)) for _ in range(4)]
    assert served == ["0", "0", "0", "1"]  # 85.5% twice, then 95%: the next call spills


def test_the_cost_is_estimated_once_when_the_call_is_read(fake, start_gateway):
    gw = start_gateway([fake()])
    with gw.app.test_request_context("/", method="POST", json=LARGE):
        call = read_call()
    assert isinstance(call, Call) and call.cost == 501
    with gw.app.test_request_context("/", method="POST", data=b"\x00audio",
                                     content_type="audio/wav"):
        upload = read_call(json_only=False)
    assert isinstance(upload, Call) and upload.cost == 0
