"""Prometheus metrics (text format), beside the original's JSON /metrics.

Counters and histograms are updated by the proxy as calls end; availability and in-flight
gauges are read from the registry when Prometheus scrapes. Each app has its own
CollectorRegistry, so several gateways can live in one process (tests do).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .registry import Backend, Registry
from .sse import Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# model answers take from tens of milliseconds (embeddings) to minutes (long completions)
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


def endpoint_label(uri: str) -> str:
    """The uri without its query string: stable and short enough for a label."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def status_class(status: int) -> str:
    return "429" if status == 429 else f"{status // 100}xx"


class _StateCollector(Collector):
    """Gauges read from the registry at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        available = GaugeMetricFamily(
            "apirouter_endpoint_available", "1 when the endpoint is not cooling down",
            labels=["endpoint", "priority"])
        in_flight = GaugeMetricFamily(
            "apirouter_endpoint_in_flight", "Calls the endpoint is answering now",
            labels=["endpoint", "priority"])
        cooldown = GaugeMetricFamily(
            "apirouter_endpoint_cooldown_seconds", "Seconds left in the endpoint's cooldown",
            labels=["endpoint", "priority"])
        for state in self.registry.availability():
            labels = [endpoint_label(state["endpoint"]), str(state["priority"])]
            available.add_metric(labels, 1.0 if state["available"] else 0.0)
            in_flight.add_metric(labels, state["inFlight"])
            cooldown.add_metric(labels, state["cooldownSeconds"])
        yield from (available, in_flight, cooldown)


class Telemetry:
    """The Prometheus side of one gateway."""

    def __init__(self, registry: Registry) -> None:
        self.prometheus = CollectorRegistry()
        r = self.prometheus
        self.calls = Counter("apirouter_backend_calls", "Calls sent to an endpoint, by answer",
                             ["endpoint", "status_class"], registry=r)
        self.tokens = Counter("apirouter_tokens", "Tokens reported by an endpoint's usage",
                              ["endpoint", "kind"], registry=r)
        self.latency = Histogram("apirouter_backend_latency_seconds",
                                 "Time from sending a call to its last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("apirouter_time_to_first_token_seconds",
                              "Time from sending a streamed call to its first event",
                              ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.cooldowns = Counter("apirouter_cooldowns", "Cooldowns an endpoint entered",
                                 ["endpoint", "reason"], registry=r)
        self.client_calls = Counter("apirouter_client_calls",
                                    "Client calls: served by an endpoint or by none",
                                    ["outcome"], registry=r)
        r.register(_StateCollector(registry))

    def answered(self, backend: Backend, status: int, seconds: float,
                 usage: Usage | None, ttft: float | None = None) -> None:
        """An endpoint's answer was relayed (whole, or a stream that ended)."""
        label = endpoint_label(backend.uri)
        self.calls.labels(label, status_class(status)).inc()
        self.latency.labels(label).observe(seconds)
        if ttft is not None:
            self.ttft.labels(label).observe(ttft)
        if usage is not None:
            self.tokens.labels(label, "prompt").inc(usage.prompt)
            self.tokens.labels(label, "completion").inc(usage.completion)

    def refused(self, backend: Backend, status_or_error: str, reason: str) -> None:
        """An endpoint throttled (reason "throttled") or failed ("failed"): it cools down."""
        label = endpoint_label(backend.uri)
        self.calls.labels(label, status_or_error).inc()
        self.cooldowns.labels(label, reason).inc()

    def client_call(self, served: bool) -> None:
        self.client_calls.labels("served" if served else "unserved").inc()

    def render(self) -> bytes:
        return generate_latest(self.prometheus)
