"""Replicas acting as one gateway, on a real Redis: real ``python wsgi.py`` processes, Debian's
redis-server started by the tests, loopback fakes as deployments."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from tests.cluster_parts import RedisServer, Replica, as_text, free_port, redis_dump
from tests.conftest import GATEWAY_KEY
from tests.fakes import reply, reset, throttle, wait_until

API_VERSION = "2024-10-21"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    """Started by the test (``replicas.append(Replica(...))``), stopped after it."""
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


def test_a_429_on_one_replica_benches_the_deployment_on_every_replica(
        tmp_path, fake, redis_server, replicas):
    primary, secondary = fake().script(throttle("30")), fake()
    a = Replica(tmp_path, "a", [primary, secondary], redis_server.url)
    b = Replica(tmp_path, "b", [primary, secondary], redis_server.url)
    replicas += [a, b]
    assert a.lb().headers["x-apirouter-attempts"] == "2"  # 429 from primary, then secondary
    uri = primary.uri()
    wait_until(lambda: not b.endpoints()[uri]["available"], timeout=2)
    state_a, state_b = a.endpoints()[uri], b.endpoints()[uri]
    assert state_b["reason"] == "throttled"
    assert abs(state_a["cooldownSeconds"] - state_b["cooldownSeconds"]) < 0.5  # the same end
    for _ in range(5):
        r = b.lb()
        assert r.status_code == 200 and r.headers["x-apirouter-endpoint"] == "1"
    assert primary.calls == 1  # nothing reached the throttled deployment from b


def test_cooldowns_propagate_within_100_ms_and_the_fault_streak_is_shared(
        tmp_path, fake, redis_server, replicas):
    # every call to primary is throttled for 150 ms: 25 cooldowns for b to hear of
    primary = fake(default=throttle(None, retry_after_ms="150"))
    broken, secondary = fake(default=reset()), fake()
    a = Replica(tmp_path, "a", [primary, secondary], redis_server.url)
    b = Replica(tmp_path, "b", [primary, broken, secondary], redis_server.url,
                API_GATEWAY_FAILURE_COOLDOWN="0.05")
    replicas += [a, b]
    for _ in range(25):
        a.lb()
        time.sleep(0.2)  # the cooldown ends before the next call
    lags = wait_until(lambda: (p := b.cluster()["cooldownPropagation"])["count"] >= 20 and p,
                      timeout=5)
    assert lags["p99Ms"] < 100, lags
    # faults in a row on b; c, which starts later, hears of the next one with the streak
    for _ in range(3):
        b.lb()
        time.sleep(0.3)  # past the 0.05 s bench (doubled twice: 0.2 s)
    assert b.endpoints()[broken.uri()]["faultStreak"] == 3
    c = Replica(tmp_path, "c", [broken, secondary], redis_server.url)
    replicas.append(c)
    b.lb()  # a fourth fault, published while c listens
    wait_until(lambda: c.endpoints()[broken.uri()]["faultStreak"] == 4, timeout=2)


def test_a_replica_that_starts_later_sees_the_cooldowns_running(
        tmp_path, fake, redis_server, replicas):
    primary, secondary = fake().script(throttle("30")), fake()
    a = Replica(tmp_path, "a", [primary, secondary], redis_server.url)
    replicas.append(a)
    assert a.lb().status_code == 200
    wait_until(lambda: redis_server.client().hlen("apirouter:test:cooldowns") == 1, timeout=2)
    late = Replica(tmp_path, "late", [primary, secondary], redis_server.url)
    replicas.append(late)
    state = late.endpoints()[primary.uri()]  # the first answer it gives already knows
    assert not state["available"] and state["reason"] == "throttled"
    assert 25 < state["cooldownSeconds"] <= 30
    assert late.lb().headers["x-apirouter-endpoint"] == "1"
    assert primary.calls == 1


def _totals(document: dict) -> dict[tuple[str, str], tuple[int, int, float]]:
    """Per (pool, endpoint): calls, failed calls and tokens over the current interval and
    the whole history, which closing an interval does not change."""
    rows = [("/lb", e) for e in document["endpointMetrics"]]
    rows += [(pool, e) for pool, entries in document.get("deploymentMetrics", {}).items()
             for e in entries]
    totals = {}
    for pool, e in rows:
        m = e["metrics"]
        history = m["history"].values()
        totals[pool, e["endpoint"]] = (
            m["apiCalls"] + sum(h["collectedMetrics"]["noOfApiCalls"] for h in history),
            m["failedCalls"] + sum(h["collectedMetrics"]["noOfFailedCalls"] for h in history),
            round(m["kInferenceTokens"] * 1000
                  + sum(h["collectedMetrics"]["throughput"]["kTokensPerWindow"] * 1000
                        for h in history)))
    return totals


def _by_interval(document: dict) -> Counter:
    """Calls per (pool, endpoint, collectionTime) of the closed intervals."""
    counts: Counter = Counter()
    rows = [("/lb", e) for e in document["endpointMetrics"]]
    rows += [(pool, e) for pool, entries in document.get("deploymentMetrics", {}).items()
             for e in entries]
    for pool, e in rows:
        for h in e["metrics"]["history"].values():
            counts[pool, e["endpoint"], h["collectionTime"], "calls"] += \
                h["collectedMetrics"]["noOfApiCalls"]
            counts[pool, e["endpoint"], h["collectionTime"], "failed"] += \
                h["collectedMetrics"]["noOfFailedCalls"]
    return counts


def test_cluster_metrics_are_exactly_the_sum_of_the_replicas(
        tmp_path, fake, redis_server, replicas):
    primary = fake(default=reply(200))
    secondary = fake()
    pool = {"deployments": {"gpt": {"backends": [
        {"endpoint": secondary.base, "deployment": "dep", "apikey": "pool-key-1"}]}}}
    # 3-second intervals, so the traffic spans several closed ones
    env = {"API_GATEWAY_METRICS_CINTERVAL": "0.05", "API_GATEWAY_METRICS_CHISTORY": "100"}
    names = ("a", "b", "c")
    replicas += [Replica(tmp_path, n, [primary, secondary], redis_server.url, pool, **env)
                 for n in names]
    calls = {"a": 17, "b": 11, "c": 7}
    started = time.monotonic()
    for i in range(max(calls.values())):
        if i % 6 == 5:  # now and then primary throttles: a failed call on some replica
            primary.script(throttle(None, retry_after_ms="1"))
        for replica in replicas:
            if i < calls[replica.name]:
                assert replica.lb().status_code == 200
                r = replica.http.post(
                    f"{replica.base}/openai/deployments/gpt/chat/completions"
                    f"?api-version={API_VERSION}", json={"messages": []}, timeout=10)
                assert r.status_code == 200
        time.sleep(max(0.0, (i + 1) * 0.25 - (time.monotonic() - started)))

    def equal() -> bool:
        instances = [r.get("metrics").json() for r in replicas]
        cluster = replicas[0].get("metrics", params={"scope": "cluster"}).json()
        summed: Counter = Counter()
        intervals: Counter = Counter()
        for doc in instances:
            for key, (c, f, t) in _totals(doc).items():
                summed[key, "calls"] += c
                summed[key, "failed"] += f
                summed[key, "tokens"] += t
            intervals.update(_by_interval(doc))
        mine: Counter = Counter()
        for key, (c, f, t) in _totals(cluster).items():
            mine[key, "calls"], mine[key, "failed"], mine[key, "tokens"] = c, f, t
        served = sum(d["successApiCalls"] for d in instances)
        closed = {h["collectionTime"] for d in instances
                  for h in d["endpointMetrics"][1]["metrics"]["history"].values()}
        return (len(closed) >= 2  # intervals close every 3 s, with or without traffic
                and +mine == +summed and +_by_interval(cluster) == +intervals
                and cluster["successApiCalls"] == served
                and cluster["totalApiCalls"] == sum(d["totalApiCalls"] for d in instances)
                and (cluster, instances))

    cluster, instances = wait_until(equal, timeout=15, interval=0.3)
    assert cluster["scope"] == "cluster"
    assert sorted(r["name"].split("@")[0] for r in cluster["replicas"]) == list(names)
    assert all(r["live"] for r in cluster["replicas"])
    assert cluster["successApiCalls"] == 2 * sum(calls.values())  # /lb and the pool
    assert sum(_totals(cluster)[("/lb", primary.uri())][:2]) > 0
    # several closed intervals, with the same collectionTime on every replica
    times = {h["collectionTime"] for d in instances
             for h in d["endpointMetrics"][1]["metrics"]["history"].values()}
    assert len(times) >= 2
    assert all(datetime.fromisoformat(t).timestamp() % 3 == 0 for t in times)
    # /capacity says whose figures it shows
    report = replicas[1].get("capacity").json()
    assert report["scope"] == "cluster" and len(report["replicas"]) == 3
    # plain /metrics stays the instance's own
    assert "scope" not in instances[0]


def test_a_reload_reaches_every_replica_and_an_invalid_file_is_kept_out(
        tmp_path, fake, redis_server, replicas):
    first, second = fake(), fake()
    a = Replica(tmp_path, "a", [first], redis_server.url)
    b = Replica(tmp_path, "b", [first], redis_server.url)
    c = Replica(tmp_path, "c", [first], redis_server.url)
    replicas += [a, b, c]
    old_version = c.cluster()["configVersion"]
    wait_until(lambda: redis_server.client().zcard("apirouter:test:replicas") == 3, timeout=5)
    a.rewrite([first, second])
    b.rewrite([second, first])
    c.config_file.write_text('{"endpoints": [{"uri": "not a url", "apikey": "k"}]}')
    started = time.monotonic()
    r = a.reconfig()
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["replicas"]["total"] == 3 and body["replicas"]["applied"] == 2
    [failed] = body["replicas"]["failed"]
    assert failed["replica"].startswith("c@") and "endpoints[0].uri" in failed["reason"]
    assert "Applied by 2 of 3 replica(s)" in body["message"]
    assert took < 2.5
    assert b.get("instanceinfo").json()["oaiEndpoints"] == {"0": second.uri(), "1": first.uri()}
    assert c.get("instanceinfo").json()["oaiEndpoints"] == {"0": first.uri()}
    assert c.cluster()["configVersion"] == old_version
    assert a.cluster()["configVersion"] != old_version
    assert "keeping the old one" in c.output() and "endpoints[0].uri" in c.output()
    assert c.lb().status_code == 200  # the old configuration serves on
    # the file watch fans out too: b's own change, then a re-reads its own file
    a.rewrite([second])
    b.rewrite([first])
    watcher = Replica(tmp_path, "w", [first], redis_server.url,
                      API_GATEWAY_CONFIG_WATCH_SECONDS="0.1")
    replicas.append(watcher)
    watcher.rewrite([second, first])
    wait_until(lambda: a.get("instanceinfo").json()["oaiEndpoints"] == {"0": second.uri()},
               timeout=2)


def test_redis_killed_and_restarted_under_load_fails_no_call(
        tmp_path, fake, redis_server, replicas):
    primary, secondary = fake().script(throttle("60")), fake()
    a = Replica(tmp_path, "a", [primary, secondary], redis_server.url)
    b = Replica(tmp_path, "b", [primary, secondary], redis_server.url)
    replicas += [a, b]
    assert a.lb().status_code == 200  # primary throttled for a minute, shared
    key = "apirouter:test:cooldowns"
    wait_until(lambda: redis_server.client().hlen(key) == 1, timeout=2)

    statuses: Counter = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def load(replica: Replica) -> None:
        session = requests.Session()
        deadline = time.monotonic() + 30
        for _ in range(3000):  # bounded in count and in time
            if stop.is_set() or time.monotonic() > deadline:
                break
            try:
                statuses[session.post(f"{replica.url}/lb", json={"messages": []},
                                      timeout=10).status_code] += 1
            except requests.RequestException as exc:
                errors.append(type(exc).__name__)
            time.sleep(0.005)

    threads = [threading.Thread(target=load, args=(r,)) for r in (a, b, a, b)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        redis_server.kill()
        wait_until(lambda: not a.cluster()["redis"]["connected"]
                   and not b.cluster()["redis"]["connected"], timeout=5)
        for replica in (a, b):  # probes stay green
            assert replica.get("healthz").status_code == 200
            assert replica.get("readyz").status_code == 200
            assert replica.get("metrics", params={"scope": "cluster"}).status_code == 503
        time.sleep(1.0)  # calls go on without Redis
        redis_server.start()
        wait_until(lambda: a.cluster()["redis"]["connected"]
                   and b.cluster()["redis"]["connected"], timeout=10)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == [] and set(statuses) == {200}, (statuses, errors)
    assert statuses[200] > 100
    assert primary.calls == 1  # the cooldown held on both replicas throughout
    # what they knew is back in the new, empty Redis, re-published by themselves
    client = redis_server.client()
    wait_until(lambda: client.hlen(key) == 1 and client.zcard("apirouter:test:replicas") == 2,
               timeout=5)
    assert primary.uri().split("/chat")[0] in client.hgetall(key)
    for replica in (a, b):
        out = replica.output()
        assert out.count("unreachable") == 1 and out.count("reachable again") == 1, out
        assert replica.get("metrics", params={"scope": "cluster"}).status_code == 200


def test_no_key_of_any_kind_reaches_redis(tmp_path, fake):
    password = "redis-password-c81d"
    server = RedisServer(tmp_path, password=password)
    client_key, file_client_key = "client-key-env-5a1f", "client-key-file-9b2c"
    primary, secondary = fake().script(throttle("30"), reset()), fake()
    pool = {"deployments": {"gpt": {"backends": [
        {"endpoint": secondary.base, "deployment": "dep", "apikey": "pool-key-77e1"}]}},
        "clientKeys": [{"name": "app", "key": file_client_key}]}
    # the password once in the URL, once in its own variable
    started = [
        Replica(tmp_path, "a", [primary, secondary],
                f"redis://:{password}@127.0.0.1:{server.port}/0", pool,
                API_GATEWAY_CLIENT_KEYS=client_key, API_GATEWAY_LOG_LEVEL="debug"),
        Replica(tmp_path, "b", [primary, secondary], server.url, pool,
                API_GATEWAY_CLIENT_KEYS=client_key, API_GATEWAY_REDIS_PASSWORD=password,
                API_GATEWAY_LOG_LEVEL="debug")]
    try:
        heard: list[str] = []
        listener = server.client().pubsub(ignore_subscribe_messages=True)
        listener.subscribe("apirouter:test:events")
        a, b = started
        headers = {"api-key": client_key}
        assert a.lb(headers=headers).status_code == 200  # a 429, shared
        assert b.lb(headers=headers).status_code == 200
        r = b.http.post(f"{b.base}/openai/deployments/gpt/chat/completions"
                        f"?api-version={API_VERSION}", json={"messages": []},
                        headers={"api-key": file_client_key}, timeout=10)
        assert r.status_code == 200
        assert a.reconfig(headers).status_code == 200
        assert a.get("metrics", params={"scope": "cluster"}, headers=headers).status_code == 200
        infos = [replica.get("instanceinfo", headers=headers).text for replica in started]
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            message = listener.get_message(timeout=0.1)
            if message:
                heard.append(message["data"])
        listener.close()
        dump = as_text(redis_dump(server.client()))
        assert heard and any('"kind":"cooldown"' in m for m in heard)
        assert "apirouter:test:cooldowns" in dump and "apirouter:test:replicas" in dump
        secrets = [GATEWAY_KEY, client_key, file_client_key, "pool-key-77e1", password,
                   *(f"backend-key-{i}" for i in range(2))]
        for secret in secrets:
            assert secret not in dump, f"a secret is in Redis ({secrets.index(secret)})"
            assert not any(secret in m for m in heard), f"a secret was published ({secret[:3]})"
        for replica, info in zip(started, infos, strict=True):
            assert password not in info and password not in replica.output()
        assert f"redis://:***@127.0.0.1:{server.port}/0" in infos[0]  # a's URL, masked
    finally:
        for replica in started:
            replica.stop()
        server.stop()


def test_several_processes_share_one_port_with_redis_as_their_state(
        tmp_path, fake, redis_server, replicas):
    primary, secondary = fake().script(throttle("30")), fake()
    port = free_port()
    for name in ("p1", "p2"):
        replicas.append(Replica(tmp_path, name, [primary, secondary], redis_server.url,
                                port=port, API_GATEWAY_REUSE_PORT="on"))
    url = replicas[0].url
    names: set[str] = set()

    def both_answer() -> bool:  # a new connection each time: the kernel spreads them
        names.add(requests.get(f"{url}/instanceinfo", timeout=5,
                               headers={"connection": "close"}).json()["serverName"])
        return names == {"p1", "p2"}

    wait_until(both_answer, timeout=20, interval=0.01)  # p2 may still be starting
    def call() -> int:
        return requests.post(f"{url}/lb", json={}, timeout=5,
                             headers={"connection": "close"}).status_code

    def primary_benched_for_both() -> bool:
        """Ten new connections in a row (spread by the kernel) see the primary throttled:
        both processes know, unless the kernel chose one ten times (p < 0.002)."""
        for _ in range(10):
            states = requests.get(f"{url}/readyz", timeout=5,
                                  headers={"connection": "close"}).json()["endpoints"]
            if states[0]["reason"] != "throttled":
                return False
        return True

    assert call() == 200  # the primary's 429, then the secondary
    wait_until(primary_benched_for_both, timeout=10)
    assert [call() for _ in range(5)] == [200] * 5
    assert primary.calls == 1  # its 429 benched it for both processes


def test_a_remaining_budget_read_by_one_replica_steers_the_others(
        tmp_path, fake, redis_server, replicas):
    """Headroom readings are shared like cooldowns: b passes over the deployment a saw full."""
    nearly_full = {"x-ratelimit-remaining-requests": "5", "x-ratelimit-remaining-tokens": "3"}
    primary, secondary = fake(default=reply(200, None, nearly_full)), fake()
    a = Replica(tmp_path, "a", [primary, secondary], redis_server.url)
    b = Replica(tmp_path, "b", [primary, secondary], redis_server.url)
    replicas += [a, b]
    assert a.lb().headers["x-apirouter-endpoint"] == "0"  # the answer says 3 tokens are left
    uri = primary.uri()
    wait_until(lambda: b.endpoints()[uri].get("headroom", {}).get("tokens") == 3, timeout=5)
    r = b.lb()  # costs more than 3 tokens (the answer budget alone is 16)
    assert r.status_code == 200 and r.headers["x-apirouter-endpoint"] == "1"
    assert primary.calls == 1  # b never asked the deployment a saw full


def test_client_limits_count_every_replicas_calls(tmp_path, fake, redis_server, replicas):
    """A client's rpm and tokenQuota hold across replicas: what one admitted counts on the
    other (usage deltas through Redis), so two replicas do not give twice the limit."""
    backend = fake()
    sections = {"clientKeys": [{"name": "app", "key": "client-key-replicas-1", "rpm": 10,
                                "tokenQuota": 100_000, "quotaPeriod": "daily"}]}
    a = Replica(tmp_path, "a", [backend], redis_server.url, sections=sections)
    b = Replica(tmp_path, "b", [backend], redis_server.url, sections=sections)
    replicas += [a, b]
    key = {"api-key": "client-key-replicas-1"}
    assert [a.lb(headers=key).status_code for _ in range(6)] == [200] * 6
    wait_until(lambda: b.get("metrics", headers=key).status_code == 200, timeout=2)
    time.sleep(0.3)  # propagation is milliseconds; leave room on a loaded machine
    answers = [b.lb(headers=key).status_code for _ in range(5)]
    assert answers == [200] * 4 + [429]
    refused = b.lb(headers=key)
    assert "client app: over its rpm of 10" in refused.json()["error"]["message"]
    assert backend.calls == 10

    def cluster_figures():
        shown = a.get("metrics?scope=cluster", headers=key).json()["clientMetrics"]["app"]
        return shown if shown["calls"] == 10 and shown["rateLimitedCalls"] == 2 else None

    summed = wait_until(cluster_figures, timeout=5)  # a's 6 and b's 4, b's two 429s
    assert (summed["promptTokens"], summed["completionTokens"]) == (200, 100)
    assert a.get("metrics", headers=key).json()["clientMetrics"]["app"]["calls"] == 6
    assert "client-key-replicas-1" not in str(redis_dump(redis_server.client()))


def test_a_replica_that_starts_later_knows_the_quota_used(tmp_path, fake, redis_server,
                                                          replicas):
    """Quota totals are summed in Redis (names and numbers only), so a replica started
    mid-period does not give a client its whole quota again."""
    backend = fake()  # every answer: 30 tokens; each call is estimated at 17
    sections = {"clientKeys": [{"name": "app", "key": "client-key-replicas-2",
                                "tokenQuota": 250, "quotaPeriod": "monthly"}]}
    key = {"api-key": "client-key-replicas-2"}
    a = Replica(tmp_path, "a", [backend], redis_server.url, sections=sections)
    replicas.append(a)
    assert [a.lb(headers=key).status_code for _ in range(5)] == [200] * 5  # 150 tokens
    client = redis_server.client()
    wait_until(lambda: any(client.hgetall(k).get("app") == "150"
                           for k in client.scan_iter(match="*client-quota:*")), timeout=2)
    b = Replica(tmp_path, "b", [backend], redis_server.url, sections=sections)
    replicas.append(b)
    answers = [b.lb(headers=key).status_code for _ in range(4)]
    assert answers == [200, 200, 200, 403]  # 180, 210, 240; then 240 + 17 > 250
