"""Injected faults: 500s, dropped connections and slow answers, drawn from seeded dice."""

from __future__ import annotations

import time

import pytest
import requests

from simulator.faults import Fault, FaultInjector, FaultRates


def test_fault_rate_500_answers_500_without_spending_quota(sim):
    s = sim({"fault_rate_500": 1.0, "tpm": 1000, "rpm": 10})
    r = s.post()
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "InternalServerError"
    assert r.headers["x-ratelimit-remaining-requests"] == "10"
    assert r.headers["x-ratelimit-remaining-tokens"] == "1000"


def test_drop_rate_closes_the_connection_without_an_answer(sim):
    s = sim({"drop_rate": 1.0})
    with pytest.raises(requests.exceptions.ConnectionError):
        s.post()
    with pytest.raises(requests.exceptions.ConnectionError):
        s.post(body={"messages": [{"role": "user", "content": "x"}], "stream": True}, stream=True)


def test_slow_rate_delays_the_answer(sim):
    s = sim({"slow_rate": 1.0, "slow_seconds": 0.3})
    started = time.monotonic()
    assert s.post().status_code == 200
    assert time.monotonic() - started >= 0.3


def test_the_same_seed_gives_the_same_faults(sim):
    a = sim({"fault_rate_500": 0.5, "seed": 7})
    b = sim({"fault_rate_500": 0.5, "seed": 7})
    first = [a.post().status_code for _ in range(20)]
    second = [b.post().status_code for _ in range(20)]
    assert first == second
    assert set(first) == {200, 500}


def test_injector_order_drop_then_500_then_slow():
    assert FaultInjector(FaultRates(drop=1.0, error_500=1.0, slow=1.0)).draw() is Fault.DROP
    assert FaultInjector(FaultRates(error_500=1.0, slow=1.0)).draw() is Fault.ERROR_500
    assert FaultInjector(FaultRates(slow=1.0)).draw() is Fault.SLOW
    assert FaultInjector(FaultRates()).draw() is Fault.NONE
