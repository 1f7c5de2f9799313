"""Prometheus families built from the per-call counts (no server needed: pure bookkeeping)."""

from __future__ import annotations

from gateway_app.routing.sse import Usage
from gateway_app.routing.telemetry import LATENCY_BUCKETS, Telemetry


class _Backend:
    """A pool entry as the telemetry sees it: its pool and its label."""

    pool = "/lb"
    label = "http://example.test/openai/deployments/a/chat/completions"


class _NoState:
    """The registry's side: no endpoint state, and the client calls it counted."""

    def __init__(self, served: int = 0, unserved: int = 0) -> None:
        self.counts = (served, unserved)

    def availability(self) -> list:
        return []

    def client_calls(self) -> tuple[int, int]:
        return self.counts


def _labels(*pairs: tuple[str, str]) -> tuple:
    return tuple(sorted(pairs))


def _samples(telemetry: Telemetry) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in telemetry.prometheus.collect() for s in family.samples}


def test_histogram_buckets_are_cumulative_and_include_their_bound():
    telemetry = Telemetry(_NoState())
    for seconds in (0.01, 0.025, 0.03, 1.0, 400.0):
        telemetry.answered(_Backend(), 200, seconds, None)
    samples = _samples(telemetry)
    endpoint = ("endpoint", "http://example.test/openai/deployments/a/chat/completions"), \
        ("pool", "/lb")

    def bucket(le: str) -> float:
        return samples[("apirouter_backend_latency_seconds_bucket", _labels(*endpoint, ("le", le)))]

    assert bucket("0.025") == 2  # 0.025 itself is "less than or equal"
    assert bucket("0.05") == 3
    assert bucket("1.0") == 4
    assert bucket(str(float(LATENCY_BUCKETS[-1]))) == 4
    assert bucket("+Inf") == 5
    assert samples[("apirouter_backend_latency_seconds_count", _labels(*endpoint))] == 5
    total = samples[("apirouter_backend_latency_seconds_sum", _labels(*endpoint))]
    assert abs(total - 401.065) < 1e-9


def test_counters_add_up_per_label():
    telemetry = Telemetry(_NoState(served=4, unserved=1))
    telemetry.answered(_Backend(), 200, 0.1, Usage(3, 2, 5))
    telemetry.answered(_Backend(), 400, 0.1, None)
    telemetry.refused(_Backend(), "429", "throttled")
    samples = _samples(telemetry)
    endpoint = ("endpoint", "http://example.test/openai/deployments/a/chat/completions"), \
        ("pool", "/lb")
    calls = {cls: samples[("apirouter_backend_calls_total",
                           _labels(*endpoint, ("status_class", cls)))]
             for cls in ("2xx", "4xx", "429")}
    assert calls == {"2xx": 1, "4xx": 1, "429": 1}
    assert samples[("apirouter_cooldowns_total", _labels(*endpoint, ("reason", "throttled")))] == 1
    assert samples[("apirouter_tokens_total", _labels(*endpoint, ("kind", "prompt")))] == 3
    assert samples[("apirouter_client_calls_total", (("outcome", "served"),))] == 4
    assert samples[("apirouter_client_calls_total", (("outcome", "unserved"),))] == 1
