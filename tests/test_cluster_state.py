"""The parts of shared state that need no second process: settings, messages, the registry's
hook and apply, the configuration version, the cluster sums, and a Redis that is not there."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from gateway_app.cluster.link import connect
from gateway_app.cluster.messages import Cooldown, ReloadAnswer, decode
from gateway_app.cluster.version import document_version
from gateway_app.cluster.view import MetricsView
from gateway_app.config import parse_config
from gateway_app.keys import ClientKeys
from gateway_app.routing.metrics import IntervalCounters
from gateway_app.routing.registry import CooldownEvent, Registry
from gateway_app.settings import Settings, SettingsError, redacted_url
from tests.cluster_parts import free_port
from tests.conftest import base_env
from tests.fakes import throttle, wait_until

SECRET = "s3cret-pw-4411"


@pytest.fixture
def env(tmp_path):
    return base_env(tmp_path / "c.json")


# --- settings ------------------------------------------------------------------------------

def test_redis_is_off_by_default(env):
    s = Settings.from_env(env)
    assert s.redis_url == "" and s.redis_key_prefix == "apirouter:test:"


@pytest.mark.parametrize("url", [
    "redis://cache:6379/0", "rediss://cache.example.com:6380/2", "redis://localhost",
    f"rediss://:{SECRET}@cache.example.com:6380", f"redis://app:{SECRET}@10.0.0.5:6379/1"])
def test_redis_and_tls_urls_are_accepted(env, url):
    s = Settings.from_env({**env, "API_GATEWAY_REDIS_URL": url})
    assert s.redis_url == url
    assert SECRET not in repr(s)


@pytest.mark.parametrize("url, problem", [
    (f"http://:{SECRET}@cache:6379", "must be a redis:// or rediss://"),
    (f"redis://:{SECRET}@cache:port", "malformed port"),
    (f"redis://:{SECRET}@:6379", "names no host"),
    (f"redis://:{SECRET}@cache:6379/zero", "database number"),
])
def test_malformed_redis_urls_are_named_without_their_password(env, url, problem):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**env, "API_GATEWAY_REDIS_URL": url})
    assert str(caught.value).startswith("API_GATEWAY_REDIS_URL ") and problem in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_password_comes_from_one_place(env):
    s = Settings.from_env({**env, "API_GATEWAY_REDIS_URL": "rediss://cache:6380/0",
                           "API_GATEWAY_REDIS_PASSWORD": SECRET})
    assert s.redis_password == SECRET and SECRET not in repr(s)
    with pytest.raises(SettingsError, match="give it in one place") as caught:
        Settings.from_env({**env, "API_GATEWAY_REDIS_URL": f"redis://:{SECRET}@cache:6379",
                           "API_GATEWAY_REDIS_PASSWORD": SECRET})
    assert SECRET not in str(caught.value)


def test_the_client_is_built_from_the_settings_without_connecting(env):
    s = Settings.from_env({**env, "API_GATEWAY_REDIS_URL": "rediss://user@cache.example.com:6380/3",
                           "API_GATEWAY_REDIS_PASSWORD": SECRET,
                           "API_GATEWAY_REDIS_TIMEOUT": "0.25",
                           "API_GATEWAY_REDIS_PREFIX": "team-a:"})
    client = connect(s)
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert pool.connection_class is redis.SSLConnection  # rediss: TLS
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.example.com", 6380, 3)
    assert (kwargs["username"], kwargs["password"]) == ("user", SECRET)
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
    assert s.redis_key_prefix == "team-a:"
    client.close()


def test_a_url_is_shown_with_its_password_masked():
    assert redacted_url(f"rediss://:{SECRET}@cache:6380/0") == "rediss://:***@cache:6380/0"
    assert redacted_url(f"redis://app:{SECRET}@cache/1") == "redis://app:***@cache/1"
    assert redacted_url("redis://cache:6379") == "redis://cache:6379"


# --- messages and the configuration version ------------------------------------------------

def test_messages_round_trip_and_unknown_kinds_are_ignored():
    cooldown = Cooldown("a@host:1", "https://r.openai.azure.com/openai/deployments/d", 10.5,
                        "throttled", 2, 9.0)
    assert decode(cooldown.encode()) == cooldown
    answer = ReloadAnswer("b@host:2", "req", False, "abc", "endpoints[0].uri: Not a valid URL.")
    assert decode(answer.encode()) == answer
    assert decode('{"kind": "headroom-from-the-future", "origin": "x"}') is None
    assert cooldown.state_field() == cooldown.backend and cooldown.expires() == 10.5


def test_the_version_changes_with_the_file_but_not_with_its_keys():
    doc = {"endpoints": [{"uri": "https://a.openai.azure.com/x", "apikey": "k1"}],
           "clientKeys": [{"name": "app", "key": "client-key-1"}]}
    rotated = {"endpoints": [{"uri": "https://a.openai.azure.com/x", "apikey": "k2"}],
               "clientKeys": [{"name": "app", "key": "client-key-2"}]}
    moved = {"endpoints": [{"uri": "https://b.openai.azure.com/x", "apikey": "k1"}],
             "clientKeys": [{"name": "app", "key": "client-key-1"}]}
    assert document_version(doc) == document_version(rotated) != document_version(moved)


# --- the registry's hook and apply ---------------------------------------------------------

def _registry(uris: list[str]) -> Registry:
    registry = Registry(max_connections=2, history_size=5, failure_cooldown=1.0,
                        failure_cooldown_max=8.0, connect_timeout=1.0, read_timeout=1.0)
    config = parse_config({"endpoints": [{"uri": u, "apikey": "k"} for u in uris]}, {})
    registry.publish(config, ClientKeys({}))
    return registry


URI = "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=x"
BACKEND = "https://res.openai.azure.com/openai/deployments/gpt-4o"


def test_listeners_hear_cooldowns_after_the_lock_is_released():
    registry = _registry([URI])
    heard: list[tuple[CooldownEvent, bool]] = []

    def listener(event: CooldownEvent) -> None:
        free = registry._lock.acquire(blocking=False)
        if free:
            registry._lock.release()
        heard.append((event, free))

    registry.cooldown_listeners.append(listener)
    entry = registry.current.lb[0]
    registry.acquire(entry).throttled(30)
    assert registry.acquire(entry) is None  # cooling: no lease
    [(event, free)] = heard
    assert free and event.backend == BACKEND and event.reason == "throttled"
    assert 29 < event.until - time.time() <= 30 and event.streak == 0
    registry.apply_cooldown(BACKEND, time.time() + 1, "failed", 0)  # shorter: no event
    assert len(heard) == 1


def test_a_failing_listener_does_not_fail_the_call():
    registry = _registry([URI])
    registry.cooldown_listeners.append(lambda event: 1 / 0)
    lease = registry.acquire(registry.current.lb[0])
    lease.failed()  # logged, not raised
    assert registry.current.lb[0].backend.fault_streak == 1


def test_apply_extends_never_shortens_and_keeps_the_larger_streak():
    registry = _registry([URI])
    backend = registry.current.lb[0].backend
    assert registry.apply_cooldown(BACKEND, time.time() + 20, "throttled", 3)
    until = backend.cooldown_until
    assert 19 < backend.remaining(time.monotonic()) <= 20 and backend.fault_streak == 3
    assert not registry.apply_cooldown(BACKEND, time.time() + 5, "failed", 1)
    assert backend.cooldown_until == until and backend.fault_streak == 3
    assert backend.cooldown_reason == "throttled"
    assert not registry.apply_cooldown("https://other/openai/deployments/x", time.time() + 9,
                                       "failed", 1)  # not listed here: ignored
    assert registry.acquire(registry.current.lb[0]) is None
    [running] = registry.active_cooldowns()
    assert running.backend == BACKEND and abs(running.until - (time.time() + 20)) < 0.5


# --- the cluster's sums --------------------------------------------------------------------

def _doc(name: str, start: float, calls: int, served: int) -> dict:
    return {"name": name, "lastSeen": time.time(), "configVersion": "v1", "interval": 60.0,
            "start": start, "successApiCalls": served, "failedApiCalls": 0,
            "entries": [{"pool": "/lb", "endpoint": URI, "priority": 0, "weight": 1.0,
                         "current": IntervalCounters(api_calls=calls, tokens=10 * calls,
                                                     latency_ms=5.0 * calls).as_dict()}]}


def _rows(calls: int, failed: int = 0) -> list[dict]:
    return [{"pool": "/lb", "endpoint": URI, "priority": 0, "weight": 1.0,
             "counters": IntervalCounters(api_calls=calls, failed_calls=failed,
                                          tokens=10 * calls).as_dict()}]


def test_the_cluster_sums_counters_per_interval_start():
    view = MetricsView(_registry([URI]), "a", "p:", 60.0, 5, 1.0, lambda: "v1")
    docs = [_doc("a", 180.0, 3, 10), _doc("b", 180.0, 4, 20),
            _doc("c", 120.0, 2, 5)]  # c has not written its closing of 120 yet
    histories = [{60.0: _rows(5, 1), 120.0: _rows(1)}, {60.0: _rows(2)}, {60.0: _rows(7)}]
    summed = view.summed(docs, histories)
    [row] = summed["endpointMetrics"]
    m = row["metrics"]
    assert (m["apiCalls"], m["kInferenceTokens"]) == (7, 0.07)
    history = {h["collectionTime"][11:19]: h["collectedMetrics"] for h in m["history"].values()}
    assert history["00:01:00"]["noOfApiCalls"] == 14 and history["00:01:00"]["noOfFailedCalls"] == 1
    assert history["00:02:00"]["noOfApiCalls"] == 3  # a's closed 120 plus c's late current
    assert summed["successApiCalls"] == 35 and summed["totalApiCalls"] == 35
    assert [r["name"] for r in summed["replicas"]] == ["a", "b", "c"]


def test_the_cluster_sums_client_figures_per_interval_start():
    view = MetricsView(_registry([URI]), "a", "p:", 60.0, 5, 1.0, lambda: "v1")

    def figures(calls: int, limited: int = 0) -> dict:
        return {"calls": calls, "rateLimitedCalls": limited, "refusedCalls": 0,
                "promptTokens": 2 * calls, "completionTokens": calls, "totalTokens": 3 * calls}

    docs = [_doc("a", 180.0, 0, 0), _doc("b", 180.0, 0, 0), _doc("c", 120.0, 0, 0)]
    docs[0]["clients"] = {"app": {"start": 180.0, "current": figures(3, 1)}}
    docs[0]["clientHistory"] = {60.0: {"app": figures(5)}, 120.0: {"app": figures(1)}}
    docs[1]["clients"] = {"app": {"start": 180.0, "current": figures(4)},
                          "other": {"start": 180.0, "current": figures(1)}}
    docs[2]["clients"] = {"app": {"start": 120.0, "current": figures(2)}}  # late: closed
    summed = view.summed(docs, [{}, {}, {}])["clientMetrics"]
    assert (summed["app"]["calls"], summed["app"]["rateLimitedCalls"]) == (7, 1)
    history = {h["collectionTime"][11:19]: h["collectedMetrics"]
               for h in summed["app"]["history"].values()}
    assert history["00:01:00"]["calls"] == 5
    assert history["00:02:00"]["calls"] == 3 and history["00:02:00"]["totalTokens"] == 9
    assert summed["other"]["calls"] == 1 and summed["other"]["history"] == {}


# --- Redis that is not there ---------------------------------------------------------------

def test_without_redis_calls_never_wait_and_probes_stay_green(fake, start_gateway, capfd):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    primary, secondary = fake().script(throttle("30")), fake()
    started = time.monotonic()
    gw = start_gateway([primary, secondary], env={"API_GATEWAY_REDIS_URL": dead,
                                                  "API_GATEWAY_REDIS_TIMEOUT": "0.2"})
    assert time.monotonic() - started < 3  # start-up tries once, bounded
    for _ in range(20):
        began = time.monotonic()
        assert gw.lb().status_code == 200
        assert time.monotonic() - began < 0.5
    assert gw.get("healthz").status_code == 200 and gw.get("readyz").status_code == 200
    info = gw.get("instanceinfo").json()["cluster"]
    assert info["redis"]["connected"] is False and info["redis"]["address"] == dead
    assert gw.get("metrics", params={"scope": "cluster"}).status_code == 503
    assert gw.get("capacity").json()["scope"] == "instance"
    reload = gw.http.post(f"{gw.url}/reconfig", headers={"x-api-gateway-key":
                                                         "test-gateway-key-6f1e"}, timeout=5)
    assert reload.status_code == 200 and "not reachable" in reload.json()["message"]
    assert "apirouter_redis_connected 0.0" in gw.get("prometheus").text
    wait_until(lambda: gw.gateway.cluster.outages == 1, timeout=2)
    time.sleep(0.5)  # several reconnect attempts: still one warning
    assert capfd.readouterr().err.count("unreachable") == 1


def test_without_redis_url_nothing_changes(fake, start_gateway):
    gw = start_gateway([fake()])
    assert gw.gateway.cluster is None and "cluster" not in gw.get("instanceinfo").json()
    assert "apirouter_redis" not in gw.get("prometheus").text
    body = gw.get("metrics", params={"scope": "cluster"}).json()
    assert body["scope"] == "instance" and len(body["replicas"]) == 1
    assert "scope" not in gw.metrics()
    assert "replicas" not in gw.get("reconfig/test-gateway-key-6f1e").json()


def test_the_queue_never_blocks_and_counts_what_it_drops(env, monkeypatch):
    from gateway_app.cluster import link as link_module

    monkeypatch.setattr(link_module, "QUEUE_LIMIT", 3)
    settings = Settings.from_env({**env, "API_GATEWAY_REDIS_URL":
                                  f"redis://127.0.0.1:{free_port()}/0"})
    registry = _registry([URI])
    link = link_module.ClusterLink(settings, registry, "a", lambda: "v")  # not started
    done = threading.Event()

    def burst() -> None:
        for i in range(10):
            link.publish(Cooldown("a", BACKEND, float(i), "throttled", 0, 0.0))
        done.set()

    threading.Thread(target=burst).start()
    assert done.wait(1)
    assert link.dropped == 7 and [m.until for m in link._queue] == [7.0, 8.0, 9.0]
