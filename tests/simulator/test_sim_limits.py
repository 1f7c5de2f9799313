"""Token and request quotas: the limiter alone, then the 429s the simulator sends."""

from __future__ import annotations

import threading
import time

import pytest

from simulator.limits import SlidingWindowLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_admitted_until_the_budget_is_spent():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(tokens=100, requests=50, window=60, clock=clock)
    assert limiter.acquire(40).admitted
    clock.now += 10
    decision = limiter.acquire(40)
    assert decision.admitted
    assert (decision.remaining_requests, decision.remaining_tokens) == (48, 20)
    clock.now += 5
    refused = limiter.acquire(30)
    assert not refused.admitted
    assert refused.limit == "tokens"
    # The first call (40 tokens) leaves the window 60 s after it came: 45 s from now.
    assert refused.retry_after == pytest.approx(45)
    assert limiter.acquire(20).admitted  # a smaller call still fits
    clock.now += 45
    assert limiter.acquire(30).admitted
    assert limiter.remaining() == (47, 10)


def test_requests_are_counted_too():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(tokens=10_000, requests=2, window=10, clock=clock)
    assert limiter.acquire(1).admitted
    clock.now += 1
    assert limiter.acquire(1).admitted
    refused = limiter.acquire(1)
    assert (refused.admitted, refused.limit) == (False, "requests")
    assert refused.retry_after == pytest.approx(9)
    clock.now += 9
    assert limiter.acquire(1).admitted


def test_the_wait_covers_as_many_old_calls_as_needed():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(tokens=100, requests=10, window=60, clock=clock)
    for _ in range(4):
        assert limiter.acquire(25).admitted
        clock.now += 1
    # 100 used; a call of 60 needs three of the four calls gone: the third leaves at +62.
    assert limiter.acquire(60).retry_after == pytest.approx(60 + 2 - 4)


def test_a_call_larger_than_the_budget_waits_for_an_empty_window():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(tokens=100, requests=10, window=60, clock=clock)
    assert limiter.acquire(500).admitted  # charged 100, the whole budget
    assert limiter.remaining() == (9, 0)
    assert not limiter.acquire(1).admitted


def test_the_limiter_is_thread_safe():
    limiter = SlidingWindowLimiter(tokens=1000, requests=10_000, window=60)
    admitted = []

    def worker() -> None:
        admitted.extend(limiter.acquire(1).admitted for _ in range(200))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 1000


def test_429_when_the_token_quota_is_spent_then_recovery(sim):
    # Each call costs 1 prompt token ("hi") + 16 max_tokens (the default) = 17 tokens.
    s = sim({"tpm": 100, "rpm": 100, "window_seconds": 1})
    statuses = [s.post() for _ in range(5)]
    assert [r.status_code for r in statuses] == [200] * 5
    assert statuses[-1].headers["x-ratelimit-remaining-tokens"] == "15"
    assert statuses[-1].headers["x-ratelimit-remaining-requests"] == "95"

    r = s.post()
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"  # at most the 1 s window, rounded up
    assert 0 < int(r.headers["retry-after-ms"]) <= 1000
    assert r.headers["x-ratelimit-remaining-tokens"] == "15"
    assert r.headers["x-ratelimit-remaining-requests"] == "95"
    error = r.json()["error"]
    assert error["code"] == "429"
    assert error["message"].startswith(
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        "2024-10-21 have exceeded token rate limit"
    )
    assert "Please retry after 1 second." in error["message"]

    deadline = time.monotonic() + 5
    while (r := s.post()).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 200


def test_429_when_the_request_quota_is_spent(sim):
    s = sim({"tpm": 100_000, "rpm": 2, "window_seconds": 30})
    assert [s.post().status_code for _ in range(2)] == [200, 200]
    r = s.post("embeddings", {"input": "hello"})
    assert r.status_code == 429
    assert "Embeddings_Create" in r.json()["error"]["message"]
    assert "exceeded call rate limit" in r.json()["error"]["message"]
    assert 29 <= int(r.headers["retry-after"]) <= 30
    assert r.headers["x-ratelimit-remaining-requests"] == "0"


def test_the_quota_counts_max_tokens_not_what_was_produced(sim):
    s = sim({"tpm": 1000, "rpm": 100})
    assert s.post(body={"messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 900}).status_code == 200
    r = s.post(body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})
    assert r.status_code == 429


def test_deployments_have_separate_quotas(sim):
    s = sim({"rpm": 1}, {"name": "d2", "apikey": "k2", "rpm": 1})
    assert s.post().status_code == 200
    assert s.post().status_code == 429
    assert s.post(name="d2", key="k2").status_code == 200


def test_every_answer_takes_the_round_trip_and_the_call_is_admitted_on_arrival(sim):
    s = sim({"tpm": 100_000, "rpm": 1, "rtt_ms": 200})
    for key, status in (("wrong", 401), ("k1", 200), ("k1", 429)):
        started = time.monotonic()
        assert s.post(key=key).status_code == status
        assert time.monotonic() - started >= 0.2
