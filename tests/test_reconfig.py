"""Live reconfiguration: key check, validation, one-step swap, kept state, no lost calls."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.conftest import GATEWAY_KEY
from tests.fakes import reply, throttle


def test_wrong_key_is_refused_and_changes_nothing(fake, start_gateway):
    a, b = fake(), fake()
    gw = start_gateway([a])
    gw.rewrite_config([b])
    r = gw.get("reconfig/not-the-key")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "Unauthorized"
    assert GATEWAY_KEY not in r.text
    assert gw.get("instanceinfo").json()["oaiEndpoints"] == {"0": a.uri()}


def test_valid_file_swaps_the_list(fake, start_gateway):
    a, b = fake(), fake()
    gw = start_gateway([a])
    gw.rewrite_config([b, a])
    r = gw.get(f"reconfig/{GATEWAY_KEY}")
    assert r.status_code == 200
    assert r.json()["oaiEndpoints"] == {"0": b.uri(), "1": a.uri()}
    assert GATEWAY_KEY not in r.text
    gw.lb()
    assert (a.calls, b.calls) == (0, 1)


def test_invalid_file_is_refused_with_reason_and_old_list_keeps_serving(fake, start_gateway):
    a = fake()
    gw = start_gateway([a])
    gw.config_file.write_text('{"endpoints": [{"uri": "nope", "apikey": "k"}]}')
    r = gw.get(f"reconfig/{GATEWAY_KEY}")
    assert r.status_code == 400
    assert "endpoints[0].uri" in r.json()["error"]["message"]
    gw.config_file.write_text("{broken")
    assert "not valid JSON" in gw.get(f"reconfig/{GATEWAY_KEY}").json()["error"]["message"]
    assert gw.lb().status_code == 200
    assert a.calls == 1


def test_cooldowns_and_metrics_of_kept_endpoints_survive_a_reload(fake, start_gateway):
    a = fake().script(throttle("60"))
    b, c = fake(), fake()
    gw = start_gateway([a, b])
    gw.lb()
    gw.rewrite_config([c, a, b])
    assert gw.get(f"reconfig/{GATEWAY_KEY}").status_code == 200
    gw.http.post(f"{gw.url}/lb", json={"messages": []}, timeout=10)
    metrics = {m["endpoint"]: m for m in gw.metrics()["endpointMetrics"]}
    assert metrics[a.uri()]["priority"] == 1
    assert metrics[a.uri()]["metrics"]["failedCalls"] == 1  # kept
    assert metrics[b.uri()]["metrics"]["apiCalls"] == 1
    assert metrics[c.uri()]["metrics"]["apiCalls"] == 1
    # a is still cooling down after the reload
    gw.rewrite_config([a, b])
    gw.get(f"reconfig/{GATEWAY_KEY}")
    assert gw.lb().headers["x-apirouter-endpoint"] == "1"
    assert a.calls == 1


def test_reloads_under_steady_traffic_lose_no_call(fake, start_gateway):
    a, b, c = (fake(default=reply(delay=0.01)) for _ in range(3))
    gw = start_gateway([a, b], threads=32)
    configs = [[a, b], [b, c], [c, a, b], [a]]
    stop = threading.Event()
    statuses: list[int] = []
    errors: list[str] = []

    def client() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{gw.url}/lb", json={"messages": []}, timeout=10)
                    statuses.append(r.status_code)
                except requests.RequestException as exc:
                    errors.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    reloads = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        gw.rewrite_config(configs[reloads % len(configs)])
        assert gw.get(f"reconfig/{GATEWAY_KEY}").status_code == 200
        reloads += 1
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(15)
    assert reloads >= 20
    assert len(statuses) >= 100
    assert errors == []
    assert set(statuses) == {200}
    total = gw.metrics()
    assert total["failedApiCalls"] == 0 and total["successApiCalls"] == len(statuses)
    # no backend saw a failed call: one attempt per call, none throttled, faulted or benched
    assert a.calls + b.calls + c.calls == len(statuses)
    prometheus = gw.get("prometheus").text
    classes = set(re.findall(r'apirouter_backend_calls_total\{[^}]*status_class="([^"]+)"',
                             prometheus))
    assert classes == {"2xx"}
    assert "apirouter_cooldowns_total{" not in prometheus


def test_concurrent_reload_requests_are_serialised(fake, start_gateway):
    a, b = fake(), fake()
    gw = start_gateway([a])
    gw.rewrite_config([a, b])
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: gw.get(f"reconfig/{GATEWAY_KEY}").status_code,
                              range(16)))
    assert codes == [200] * 16
    assert len(gw.get("instanceinfo").json()["oaiEndpoints"]) == 2
