"""The registry without HTTP: one backend per deployment, leases, reloads, metrics."""

from __future__ import annotations

import time

import pytest

from gateway_app.config import EndpointConfig, GatewayConfig, PoolConfig
from gateway_app.keys import ClientKeys
from gateway_app.routing import registry as registry_module
from gateway_app.routing.registry import DEFAULT_POOL, Registry, deployment_of

EAST = "https://east.openai.azure.com"
CHAT = "/chat/completions?api-version=2024-10-21"


def make_registry(**overrides: float) -> Registry:
    options = {"failure_cooldown": 2.0, "failure_cooldown_max": 60.0, **overrides}
    return Registry(max_connections=4, history_size=3, connect_timeout=1.0, read_timeout=5.0,
                    **options)


def config(lb: list[str], pools: dict[str, list[str]] | None = None) -> GatewayConfig:
    """/lb endpoints (whole URLs) and pools (deployment URLs), keys made up."""
    return GatewayConfig(
        [EndpointConfig(uri, f"k-{i}", i) for i, uri in enumerate(lb)],
        {name: PoolConfig(name, [EndpointConfig(uri, f"p-{i}", i) for i, uri in enumerate(urls)],
                          "2024-10-21")
         for name, urls in (pools or {}).items()})


def dep(name: str, origin: str = EAST) -> str:
    return f"{origin}/openai/deployments/{name}"


@pytest.mark.parametrize("url, identity, name", [
    (dep("gpt-4o") + CHAT, dep("gpt-4o"), "east.openai.azure.com/gpt-4o"),
    (dep("gpt-4o"), dep("gpt-4o"), "east.openai.azure.com/gpt-4o"),
    ("https://EAST.openai.azure.com/openai/deployments/x/embeddings", dep("x"),
     "east.openai.azure.com/x"),
    ("http://127.0.0.1:9/chat?x=1", "http://127.0.0.1:9/chat", "127.0.0.1:9/chat"),
])
def test_a_backend_is_the_deployment_a_url_reaches(url, identity, name):
    assert deployment_of(url) == (identity, name)


def test_one_backend_whatever_pools_list_it():
    registry = make_registry()
    snap = registry.publish(config([dep("a") + CHAT, dep("b") + CHAT],
                                   {"p": [dep("b"), dep("a")]}), ClientKeys({}))
    lb_a, lb_b = snap.lb
    pool_b, pool_a = snap.pools["p"]
    assert lb_a.backend is pool_a.backend and lb_b.backend is pool_b.backend
    assert len(snap.backends()) == 2
    assert {e.pool for e in snap.entries()} == {DEFAULT_POOL, "p"}


def test_a_429_through_one_pool_benches_the_deployment_for_all():
    registry = make_registry()
    snap = registry.publish(config([dep("a") + CHAT], {"p": [dep("a")]}), ClientKeys({}))
    lease = registry.acquire(snap.lb[0])
    assert lease is not None
    lease.throttled(30.0)
    assert registry.acquire(snap.pools["p"][0]) is None
    assert registry.busy(snap.pools["p"]).throttled
    # counted on the row it went through, not on the other pool's
    metrics = registry.metrics_snapshot()
    assert metrics["endpointMetrics"][0]["metrics"]["failedCalls"] == 1
    assert metrics["deploymentMetrics"]["p"][0]["metrics"]["failedCalls"] == 0


def test_the_fault_streak_is_shared_and_never_overflows():
    registry = make_registry(failure_cooldown=0.0)
    snap = registry.publish(config([dep("a") + CHAT], {"p": [dep("a")]}), ClientKeys({}))
    for i in range(1100):  # 2 ** 1024 overflows a float: the 1,025th fault used to raise
        lease = registry.acquire((snap.lb[0], snap.pools["p"][0])[i % 2])
        assert lease is not None
        lease.failed()
    backend = snap.lb[0].backend
    assert backend.fault_streak == 1100 and backend.in_flight == 0


def test_a_long_streak_is_capped_at_the_maximum_bench():
    registry = make_registry(failure_cooldown=1.0, failure_cooldown_max=60.0)
    snap = registry.publish(config([dep("a") + CHAT]), ClientKeys({}))
    backend = snap.lb[0].backend
    for _ in range(2000):
        backend.cooldown_until = 0.0  # let the next one in at once
        lease = registry.acquire(snap.lb[0])
        assert lease is not None
        lease.failed()
    assert 59.0 < backend.remaining(time.monotonic()) <= 60.0


def test_a_reload_retires_what_it_removed_and_nothing_new_starts_there():
    registry = make_registry()
    old = registry.publish(config([dep("a") + CHAT, dep("b") + CHAT]), ClientKeys({}))
    in_flight = registry.acquire(old.lb[0])
    assert in_flight is not None
    new = registry.publish(config([dep("b") + CHAT]), ClientKeys({}))
    # a call holding the old snapshot cannot start on the removed endpoint
    assert registry.acquire(old.lb[0]) is None
    assert old.lb[0].retired and old.lb[0].backend.retired
    # the kept one is the same object, now at priority 0, with its state
    assert new.lb[0] is old.lb[1] and new.lb[0].priority == 0
    # the removed backend's Session closes when its last call ends
    transport = old.lb[0].backend.transport
    assert not transport._closed
    in_flight.succeeded(1.0, None)
    assert transport._closed


def test_an_entry_removed_from_one_pool_but_listed_in_another_is_retired_alone():
    registry = make_registry()
    old = registry.publish(config([dep("a") + CHAT], {"p": [dep("a")]}), ClientKeys({}))
    new = registry.publish(config([], {"p": [dep("a")]}), ClientKeys({}))
    assert registry.acquire(old.lb[0]) is None  # the /lb listing is gone
    assert not old.lb[0].backend.retired
    assert new.pools["p"][0].backend is old.lb[0].backend


def test_a_rotated_key_keeps_the_cooldown_and_reaches_old_snapshots():
    registry = make_registry()
    old = registry.publish(config([dep("a") + CHAT]), ClientKeys({}))
    lease = registry.acquire(old.lb[0])
    assert lease is not None
    lease.throttled(30.0)
    rotated = config([dep("a") + CHAT])
    rotated.endpoints[0] = EndpointConfig(dep("a") + CHAT, "new-key", 0)
    registry.publish(rotated, ClientKeys({}))
    assert old.lb[0].api_key == "new-key"
    assert registry.acquire(old.lb[0]) is None  # still cooling down


def test_a_lease_ends_once_whatever_happens():
    registry = make_registry()
    snap = registry.publish(config([dep("a") + CHAT]), ClientKeys({}))
    lease = registry.acquire(snap.lb[0])
    assert lease is not None and snap.lb[0].backend.in_flight == 1
    lease.abandon()
    lease.succeeded(1.0, None)  # too late: nothing more is counted
    lease.failed()
    assert snap.lb[0].backend.in_flight == 0
    assert registry.metrics_snapshot()["endpointMetrics"][0]["metrics"]["totalCalls"] == 0


def test_publishing_swaps_configuration_keys_and_pools_in_one_step():
    registry = make_registry()
    cfg = config([dep("a") + CHAT], {"p": [dep("a")]})
    keys = ClientKeys({"app": "secret-key-1"})
    snap = registry.publish(cfg, keys)
    assert registry.current is snap
    assert snap.config is cfg and snap.client_keys is keys and set(snap.pools) == {"p"}


def test_metrics_are_built_outside_the_lock(monkeypatch):
    registry = make_registry()
    snap = registry.publish(config([dep("a") + CHAT], {"p": [dep("a")]}), ClientKeys({}))
    lease = registry.acquire(snap.lb[0])
    assert lease is not None
    lease.succeeded(12.0, None)
    registry.close_intervals()
    seen = []
    build = registry_module.metrics_json

    def spy(*args):
        seen.append(registry._lock.locked())
        return build(*args)

    monkeypatch.setattr(registry_module, "metrics_json", spy)
    metrics = registry.metrics_snapshot()
    assert seen == [False, False]
    assert metrics["endpointMetrics"][0]["metrics"]["history"]["0"]["collectedMetrics"][
        "noOfApiCalls"] == 1
