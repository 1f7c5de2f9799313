"""Client keys, the gateway key on /reconfig, the wrong-key throttle, and secrets kept out of
every output."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import requests

from gateway_app.keys import Verdict, WrongKeyThrottle
from gateway_app.watcher import file_digest
from tests.conftest import GATEWAY_KEY
from tests.fakes import reply, wait_until
from tests.test_serving import ROOT, free_port, wait_serving

CLIENT_KEY = "client-key-3b7d90aa"
FILE_CLIENT_KEY = "file-client-key-55e1c0"


def test_without_client_keys_every_route_is_open(fake, start_gateway):
    gw = start_gateway([fake()])
    assert gw.lb().status_code == 200
    assert gw.get("metrics").status_code == 200


def test_client_key_required_on_every_route_but_probes(fake, start_gateway):
    backend = fake()
    gw = start_gateway([backend], env={"API_GATEWAY_CLIENT_KEYS": f"{CLIENT_KEY},other-key-1"})
    for route in ("metrics", "instanceinfo", "prometheus", f"reconfig/{GATEWAY_KEY}"):
        r = gw.get(route)
        assert r.status_code == 401, route
        assert r.json()["error"]["code"] == "Unauthorized"
    r = gw.lb()
    assert r.status_code == 401 and backend.calls == 0
    assert gw.lb(headers={"api-key": "wrong-key-123"}).status_code == 401
    assert gw.get("healthz").status_code == 200 and gw.get("readyz").status_code == 200
    # the dashboard page holds no data and a browser sends no key; its data routes need one
    assert gw.get("dashboard").status_code == 200
    assert gw.get("capacity").status_code == 401
    assert gw.lb(headers={"api-key": CLIENT_KEY}).status_code == 200
    assert gw.lb(headers={"Authorization": f"Bearer {CLIENT_KEY}"}).status_code == 200
    assert gw.get("metrics", headers={"api-key": "other-key-1"}).status_code == 200
    # the client's key is never sent on to a deployment
    assert all(r.headers["api-key"] == "backend-key-0" for r in backend.received)


def test_client_keys_from_the_file_and_from_the_environment(fake, start_gateway, monkeypatch):
    monkeypatch.setenv("APP_B_KEY", "app-b-key-0042")
    backend = fake()
    gw = start_gateway([{"uri": backend.uri(), "apikey": "k"}])
    doc = {"endpoints": [{"uri": backend.uri(), "apikey": "k"}],
           "clientKeys": [{"name": "app-a", "key": FILE_CLIENT_KEY},
                          {"name": "app-b", "keyEnv": "APP_B_KEY"}]}
    gw.config_file.write_text(json.dumps(doc))
    assert gw.get(f"reconfig/{GATEWAY_KEY}").status_code == 200
    # keys now required; both work, and a reload picked them up without a restart
    assert gw.lb().status_code == 401
    assert gw.lb(headers={"api-key": FILE_CLIENT_KEY}).status_code == 200
    assert gw.lb(headers={"api-key": "app-b-key-0042"}).status_code == 200


def test_post_reconfig_takes_the_key_in_a_header(fake, start_gateway):
    a, b = fake(), fake()
    gw = start_gateway([a])
    gw.rewrite_config([b])
    url = f"{gw.url}/reconfig"
    assert gw.http.post(url, timeout=10).status_code == 401
    assert gw.http.post(url, headers={"x-api-gateway-key": "nope"}, timeout=10).status_code == 401
    r = gw.http.post(url, headers={"x-api-gateway-key": GATEWAY_KEY}, timeout=10)
    assert r.status_code == 200 and r.json()["oaiEndpoints"] == {"0": b.uri()}


class Collected(logging.Handler):
    """Keeps the messages of the records it sees."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_wrong_keys_past_the_allowance_get_429_and_the_right_key_still_reloads(
        fake, start_gateway):
    gw = start_gateway([fake()], env={"API_GATEWAY_RECONFIG_MAX_FAILURES": "3"})
    logger = logging.getLogger("apirouter")
    collected = Collected()
    logger.addHandler(collected)  # after start: the app sets the logger's handlers
    try:
        codes = [gw.get(f"reconfig/guess-{i}").status_code for i in range(10)]
        r = gw.http.post(f"{gw.url}/reconfig", headers={"x-api-gateway-key": "guess"},
                         timeout=10)
        right = gw.get(f"reconfig/{GATEWAY_KEY}")
        after = gw.get("reconfig/guess-again")
    finally:
        logger.removeHandler(collected)
    assert codes == [401] * 3 + [429] * 7
    assert r.status_code == 429 and r.json()["error"]["code"] == "TooManyAttempts"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert right.status_code == 200  # never refused
    assert after.status_code == 429  # and it cleared nothing
    # one line per wrong key within the allowance, then one for the rest
    assert [m for m in collected.messages if "reconfiguration" in m] == [
        "reconfiguration refused: wrong gateway key"] * 3 + [
        "reconfiguration refused: too many wrong gateway keys from one address; the next ones "
        "within 60 s get 429 and no log line"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_counts_per_address_over_a_sliding_minute():
    clock = Clock()
    throttle = WrongKeyThrottle(limit=2, seconds=60.0, clock=clock)
    assert throttle.failed("a") == Verdict(0.0)
    clock.now += 10
    assert throttle.failed("a") == Verdict(0.0)
    assert throttle.failed("b") == Verdict(0.0)  # another address has its own allowance
    clock.now += 5
    assert throttle.failed("a") == Verdict(45.0, announce=True)
    assert throttle.failed("a") == Verdict(45.0, announce=False)
    clock.now += 45  # the first wrong key leaves the window: one more 401
    assert throttle.failed("a") == Verdict(0.0)
    assert throttle.failed("a") == Verdict(10.0, announce=True)


def test_the_throttle_forgets_the_oldest_addresses_past_its_bound(monkeypatch):
    monkeypatch.setattr(WrongKeyThrottle, "MAX_ADDRESSES", 3)
    throttle = WrongKeyThrottle(limit=1, clock=Clock())
    throttle.failed("a")
    assert throttle.failed("a").wait  # over its allowance
    for address in ("b", "c", "d"):
        throttle.failed(address)
    assert throttle.failed("a") == Verdict(0.0)  # forgotten, so counted afresh


def test_config_file_changes_are_picked_up_when_watched(fake, start_gateway):
    a, b = fake(), fake()
    gw = start_gateway([a], env={"API_GATEWAY_CONFIG_WATCH_SECONDS": "0.05"})
    gw.rewrite_config([b, a])

    def endpoints():
        return gw.get("instanceinfo").json()["oaiEndpoints"]

    wait_until(lambda: endpoints() == {"0": b.uri(), "1": a.uri()}, timeout=5)
    gw.config_file.write_text('{"endpoints": []}')  # invalid: the old list keeps serving
    invalid = file_digest(str(gw.config_file))
    wait_until(lambda: gw.gateway.watcher._seen == invalid, timeout=5)
    assert gw.lb().status_code == 200
    assert endpoints() == {"0": b.uri(), "1": a.uri()}


def test_secrets_never_appear_in_logs_or_answers(tmp_path, fake):
    """A real process at debug level with JSON logs, driven through every route and error."""
    backend_key = "backend-secret-9c2f44"
    env_backend_key = "backend-env-secret-71aa"
    throttled = fake(default=reply(429, {"error": {"code": "429", "message": "slow"}},
                                   {"retry-after": "30"}))
    good = fake(default=reply(400, {"error": {"code": "bad", "message": "bad request"}}))
    config = tmp_path / "c.json"
    doc = {"endpoints": [{"uri": throttled.uri(), "apikey": backend_key},
                         {"uri": good.uri(), "apikeyEnv": "AOAI_KEY_1"}],
           "clientKeys": [{"name": "app", "key": FILE_CLIENT_KEY}]}
    config.write_text(json.dumps(doc))
    port = free_port()
    env = {**os.environ, "API_GATEWAY_KEY": GATEWAY_KEY, "API_GATEWAY_CONFIG_FILE": str(config),
           "API_GATEWAY_NAME": "sec", "API_GATEWAY_ENV": "sec",
           "API_GATEWAY_METRICS_CINTERVAL": "0.002", "API_GATEWAY_METRICS_CHISTORY": "3",
           "API_GATEWAY_PORT": str(port), "API_GATEWAY_HOST": "127.0.0.1",
           "API_GATEWAY_LOG_LEVEL": "debug", "API_GATEWAY_LOG_FORMAT": "json",
           "API_GATEWAY_CLIENT_KEYS": CLIENT_KEY, "AOAI_KEY_1": env_backend_key}
    proc = subprocess.Popen([sys.executable, "wsgi.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    prefix = f"http://127.0.0.1:{port}/api/v1/sec/apirouter"
    answers: list[str] = []
    try:
        wait_serving(f"{prefix}/healthz", proc)
        auth = {"api-key": CLIENT_KEY}
        calls = [
            ("post", "lb", {"json": {"messages": []}, "headers": auth}),
            ("post", "lb", {"json": {"messages": []}, "headers": {"api-key": "guess"}}),
            ("post", "lb", {"data": b"{bad", "headers": auth}),
            ("get", "instanceinfo", {"headers": auth}),
            ("get", "metrics", {"headers": auth}),
            ("get", "prometheus", {"headers": auth}),
            ("get", "readyz", {}),
            ("get", "reconfig/wrong-key", {"headers": auth}),
            ("get", f"reconfig/{GATEWAY_KEY}", {"headers": auth}),
            ("post", "reconfig", {"headers": {**auth, "x-api-gateway-key": GATEWAY_KEY}}),
            ("get", "nowhere", {"headers": auth}),
        ]
        for method, route, kwargs in calls:
            r = requests.request(method, f"{prefix}/{route}", timeout=10, **kwargs)
            answers.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        config.write_text('{"endpoints": [{"uri": "bad", "apikey": "' + backend_key + '"}]}')
        r = requests.get(f"{prefix}/reconfig/{GATEWAY_KEY}", headers=auth, timeout=10)
        answers.append(r.text)
        assert r.status_code == 400
    finally:
        proc.terminate()
        output = proc.communicate(timeout=15)[0]
    assert '"call served"' in output or "call unserved" in output  # logs were written
    everything = output + "\n".join(answers)
    for secret in (GATEWAY_KEY, backend_key, env_backend_key, CLIENT_KEY, FILE_CLIENT_KEY):
        assert secret not in everything, "a secret leaked"
