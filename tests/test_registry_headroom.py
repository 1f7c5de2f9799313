"""Headroom routing in the registry, without HTTP: readings, check-and-spend, expiry, limits."""

from __future__ import annotations

import threading
import time

import pytest

from gateway_app.config import EndpointConfig, GatewayConfig
from gateway_app.keys import ClientKeys
from gateway_app.routing.headroom import Headroom
from gateway_app.routing.registry import SENT_TOGETHER, Lease, PoolEntry, Registry, Skip
from tests.fakes import wait_until

URL = "https://east.openai.azure.com/openai/deployments/{}/chat/completions?api-version=2024-10-21"


def setup(*limits: float | None, seconds: float = 5.0) -> tuple[Registry, tuple[PoolEntry, ...]]:
    """A registry with one /lb endpoint per limit (a utilizationLimit, or None)."""
    registry = Registry(max_connections=4, history_size=2, failure_cooldown=1.0,
                        failure_cooldown_max=10.0, connect_timeout=1.0, read_timeout=5.0,
                        headroom_seconds=seconds)
    endpoints = [EndpointConfig(URL.format(f"d{i}"), "k", i, utilization_limit=limit)
                 for i, limit in enumerate(limits or (None,))]
    return registry, registry.publish(GatewayConfig(endpoints), ClientKeys({})).lb


def reading(requests: int | None = None, tokens: int | None = None,
            utilization: float | None = None, age: float = 0.0,
            as_of: float | None = None) -> Headroom:
    """A reading that arrived ``age`` seconds ago, about a call sent at ``as_of`` (default then)."""
    read_at = time.monotonic() - age
    return Headroom(requests, tokens, utilization, read_at, read_at if as_of is None else as_of)


def lease(registry: Registry, entry: PoolEntry, cost: int | None, fit: bool = True) -> Lease:
    got = registry.acquire(entry, cost, fit)
    assert isinstance(got, Lease), got
    return got


@pytest.mark.parametrize("headers, expected", [
    ({"x-ratelimit-remaining-requests": "9", "x-ratelimit-remaining-tokens": "990"},
     (9, 990, None)),
    ({"x-ratelimit-remaining-tokens": " 0 "}, (None, 0, None)),
    ({"azure-openai-deployment-utilization": "45.2%"}, (None, None, 45.2)),
    ({"azure-openai-deployment-utilization": "101"}, (None, None, 101.0)),
    ({"x-ratelimit-remaining-requests": "-1", "x-ratelimit-remaining-tokens": "1.5",
      "azure-openai-deployment-utilization": "45.2%%"}, None),
    ({"x-ratelimit-remaining-requests": "", "x-ratelimit-remaining-tokens": "1e3",
      "azure-openai-deployment-utilization": "nan%"}, None),
    ({"x-ratelimit-remaining-tokens": "\u0661\u0662"}, None),  # Arabic-Indic digits: not ASCII
    ({"x-ratelimit-remaining-tokens": "9" * 40}, None),
    ({}, None),
])
def test_a_reading_is_what_the_headers_say_and_garbage_is_no_reading(headers, expected):
    got = Headroom.from_headers(headers, read_at=2.0, as_of=1.0)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.requests, got.tokens, got.utilization) == expected
        assert (got.read_at, got.as_of) == (2.0, 1.0)


def test_without_a_reading_every_call_is_leased_and_counted():
    registry, (entry,) = setup()
    for _ in range(3):
        lease(registry, entry, 1000)
    assert (entry.backend.spent_tokens, entry.backend.spent_requests) == (3000, 3)


def test_a_call_that_cannot_fit_is_passed_over_and_nothing_is_counted():
    registry, (entry,) = setup()
    registry.observe(entry.backend, reading(requests=10, tokens=100))
    assert registry.acquire(entry, 101) is Skip.HEADROOM
    backend = entry.backend
    assert (backend.in_flight, backend.spent_tokens, backend.spent_requests) == (0, 0, 0)
    assert backend.cooldown_until == 0.0  # not throttled: nothing benches it
    fits = lease(registry, entry, 100)  # a call that fits still goes there
    assert (backend.in_flight, backend.spent_tokens) == (1, 100)
    assert registry.acquire(entry, 1) is Skip.HEADROOM  # the room is taken
    fits.succeeded(1.0, None)
    assert registry.metrics_snapshot()["endpointMetrics"][0]["metrics"]["failedCalls"] == 0


def test_the_request_budget_counts_down_too():
    registry, (entry,) = setup()
    registry.observe(entry.backend, reading(requests=2, tokens=10_000))
    lease(registry, entry, 1)
    lease(registry, entry, 1)
    assert registry.acquire(entry, 1) is Skip.HEADROOM


def test_concurrent_calls_take_the_room_once():
    registry, (entry,) = setup()
    registry.observe(entry.backend, reading(requests=1000, tokens=100))
    got: list[object] = []
    start = threading.Barrier(50)

    def call() -> None:
        start.wait()
        got.append(registry.acquire(entry, 10))

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(g, Lease) for g in got) == 10
    assert got.count(Skip.HEADROOM) == 40
    assert entry.backend.spent_tokens == 100 and entry.backend.in_flight == 10


def test_a_reading_holds_its_call_and_earlier_ones_and_in_flight_later_ones_still_count():
    registry, (entry,) = setup()
    first = lease(registry, entry, 300)
    lease(registry, entry, 200)  # sent after the first, still in flight
    third = lease(registry, entry, 100)
    third.succeeded(1.0, None)  # ended: it would have brought a newer reading
    # the first call's answer: 1000 left once it (and anything before it) was admitted
    registry.observe(entry.backend, Headroom(10, 1000, None, time.monotonic(), first.sent_at))
    assert (entry.backend.spent_tokens, entry.backend.spent_requests) == (200, 1)
    assert registry.acquire(entry, 801) is Skip.HEADROOM
    lease(registry, entry, 800)
    # a reading of a call sent well after replaces it, more room or not (Azure refills)
    later = first.sent_at + SENT_TOGETHER + 1.0
    registry.observe(entry.backend, Headroom(10, 5000, None, time.monotonic(), later))
    assert entry.backend.headroom.tokens == 5000
    assert entry.backend.spent_tokens == 0  # nothing in flight was sent after it
    # one of a call sent well before it is old news, whatever it says
    registry.observe(entry.backend, Headroom(1, 1, None, time.monotonic(), first.sent_at))
    assert entry.backend.headroom.tokens == 5000


def test_readings_of_calls_sent_together_are_ordered_by_what_they_state():
    registry, (entry,) = setup()
    first = lease(registry, entry, 300)
    second = lease(registry, entry, 200)  # sent together: admitted in either order
    third = lease(registry, entry, 100)
    assert third.sent_at - first.sent_at < SENT_TOGETHER
    # the deployment admitted the second one first, then the first, then the third
    registry.observe(entry.backend, Headroom(9, 800, None, time.monotonic(), second.sent_at))
    assert (entry.backend.spent_tokens, entry.backend.spent_requests) == (100, 1)
    # the first's reading arrives next: sent earlier, but it states less, so it came later;
    # it holds the second call too, so the count still runs from the second's sending
    registry.observe(entry.backend, Headroom(8, 500, None, time.monotonic(), first.sent_at))
    assert entry.backend.headroom.tokens == 500
    assert entry.backend.headroom.as_of == second.sent_at
    assert (entry.backend.spent_tokens, entry.backend.spent_requests) == (100, 1)
    assert registry.acquire(entry, 401) is Skip.HEADROOM
    # a reading that states more room, of a call sent together, was stated earlier
    registry.observe(entry.backend, Headroom(9, 800, None, time.monotonic(), third.sent_at))
    assert entry.backend.headroom.tokens == 500
    # the third's own: one request and 100 tokens fewer: the latest
    registry.observe(entry.backend, Headroom(7, 400, None, time.monotonic(), third.sent_at))
    assert entry.backend.headroom.tokens == 400
    assert (entry.backend.spent_tokens, entry.backend.spent_requests) == (0, 0)


def test_a_reading_is_trusted_for_the_headroom_seconds_then_calls_go_one_at_a_time():
    registry, (entry,) = setup(seconds=2.0)
    registry.observe(entry.backend, reading(requests=0, tokens=0, age=1.5))
    assert registry.acquire(entry, 1) is Skip.HEADROOM
    registry.observe(entry.backend, reading(requests=0, tokens=0, age=2.5, as_of=time.monotonic()))
    probe = lease(registry, entry, 1)  # too old to trust: the deployment may have refilled
    assert registry.acquire(entry, 1) is Skip.HEADROOM  # ...but one call finds out first
    probe.throttled(0.0)  # refused, with no reading (a 429 brings one, and a cooldown)
    lease(registry, entry, 1)
    # a reading that leaves room needs no probe, however old
    sent_later = time.monotonic() + SENT_TOGETHER
    registry.observe(entry.backend, reading(requests=9, tokens=900, age=9.0, as_of=sent_later))
    lease(registry, entry, 1)
    lease(registry, entry, 1)


def test_a_cooldown_since_the_reading_ends_its_trust_when_it_ends():
    registry, (entry,) = setup(seconds=5.0)
    registry.observe(entry.backend, reading(requests=0, tokens=0))
    refused = lease(registry, entry, 1, fit=False)
    refused.throttled(0.05)  # the 429's retry-after: room again in 50 ms
    assert registry.acquire(entry, 1) is None  # cooling down
    wait_until(lambda: entry.backend.remaining(time.monotonic()) == 0, timeout=2, interval=0.01)
    probe = lease(registry, entry, 1)  # the reading is not 5 s old, but the cooldown is over
    assert registry.acquire(entry, 1) is Skip.HEADROOM  # one at a time until a new reading
    probe.succeeded(1.0, None)


def test_ignoring_the_fit_still_counts_the_call():
    registry, (entry,) = setup()
    registry.observe(entry.backend, reading(requests=0, tokens=0))
    lease(registry, entry, 50, fit=False)
    assert (entry.backend.spent_tokens, entry.backend.spent_requests) == (50, 1)


def test_without_a_cost_the_registry_behaves_as_before():
    registry, (entry,) = setup()
    registry.observe(entry.backend, reading(requests=0, tokens=0))
    plain = registry.acquire(entry)
    assert isinstance(plain, Lease) and plain.cost is None
    assert entry.backend.spent_requests == 0 and not entry.backend.sent
    plain.succeeded(1.0, None)


def test_above_its_utilization_limit_an_entry_is_passed_over():
    registry, (limited, unlimited) = setup(80.0, None)
    registry.observe(limited.backend, reading(utilization=85.0))
    registry.observe(unlimited.backend, reading(utilization=99.0))
    assert registry.acquire(limited, 1) is Skip.UTILIZATION
    lease(registry, unlimited, 1)  # no limit: utilization is ignored
    registry.observe(limited.backend, reading(utilization=80.0, as_of=time.monotonic()))
    lease(registry, limited, 1).succeeded(1.0, None)  # at the limit is not above it
    registry.observe(limited.backend, reading(utilization=95.0, age=6.0, as_of=time.monotonic()))
    lease(registry, limited, 1)  # too old to trust: one call finds out


def test_every_lease_leaves_the_count_of_calls_in_flight_when_it_ends():
    registry, (entry,) = setup()
    leases = [lease(registry, entry, 10) for _ in range(4)]
    leases[0].succeeded(1.0, None)
    leases[1].throttled(0.0)
    leases[2].failed()
    leases[3].abandon()
    leases[3].abandon()
    assert not entry.backend.sent and entry.backend.in_flight == 0
