"""Prometheus metrics (text format), beside the original's JSON /metrics.

The proxy records each call's numbers as plain counts under one lock; they become metric
families only when Prometheus scrapes (prometheus_client's custom-collector pattern). Labelled
Counter and Histogram objects would take a lock per value and look their children up on every
call, which cost about 4% of the gateway's CPU per call. Availability and in-flight gauges and
the client-call totals are read from the registry at scrape time. Each app has its own
CollectorRegistry, so several gateways can live in one process (tests do).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .registry import PoolEntry, Registry, endpoint_label
from .sse import Usage

if TYPE_CHECKING:
    from ..usage import ClientLimits, ClientUsage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# model answers take from tens of milliseconds (embeddings) to minutes (long completions)
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
# their "le" labels, +Inf last
_BOUNDS = (*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf")


def status_class(status: int) -> str:
    return "429" if status == 429 else f"{status // 100}xx"


# Every per-backend series is labelled by the pool ("/lb" for the original's endpoints list)
# and the endpoint's URL without its query string: one series per (pool, backend).
ENTRY_LABELS = ["pool", "endpoint"]


class _Histogram:
    """Counts per latency bucket (not cumulative), their sum and count."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: bound >= seconds
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            cumulative += count
            out.append((bound, cumulative))
        return out


class _StateCollector(Collector):
    """Gauges read from the registry at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        available = GaugeMetricFamily(
            "apirouter_endpoint_available", "1 when the endpoint is not cooling down",
            labels=[*ENTRY_LABELS, "priority"])
        in_flight = GaugeMetricFamily(
            "apirouter_endpoint_in_flight", "Calls the endpoint's deployment is answering now",
            labels=[*ENTRY_LABELS, "priority"])
        cooldown = GaugeMetricFamily(
            "apirouter_endpoint_cooldown_seconds", "Seconds left in the endpoint's cooldown",
            labels=[*ENTRY_LABELS, "priority"])
        for state in self.registry.availability():
            labels = [state["pool"], endpoint_label(state["endpoint"]), str(state["priority"])]
            available.add_metric(labels, 1.0 if state["available"] else 0.0)
            in_flight.add_metric(labels, state["inFlight"])
            cooldown.add_metric(labels, state["cooldownSeconds"])
        yield from (available, in_flight, cooldown)


class Telemetry:
    """The Prometheus side of one gateway: counts kept per call, families built per scrape."""

    def __init__(self, registry: Registry) -> None:
        self._lock = threading.Lock()
        # keyed by (pool, endpoint, ...): the entry's labels, then the class, kind or reason
        self._calls: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._tokens: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._cooldowns: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._skips: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._latency: defaultdict[tuple[str, str], _Histogram] = defaultdict(_Histogram)
        self._ttft: defaultdict[tuple[str, str], _Histogram] = defaultdict(_Histogram)
        self._registry = registry  # it counts the client calls (served or not) already
        self.prometheus = CollectorRegistry()
        self.prometheus.register(_CallCollector(self))
        self.prometheus.register(_StateCollector(registry))

    def answered(self, entry: PoolEntry, status: int, seconds: float,
                 usage: Usage | None, ttft: float | None = None) -> None:
        """An endpoint's answer was relayed (whole, or a stream that ended)."""
        pool, label = entry.pool, entry.label
        with self._lock:
            self._calls[pool, label, status_class(status)] += 1
            self._latency[pool, label].observe(seconds)
            if ttft is not None:
                self._ttft[pool, label].observe(ttft)
            if usage is not None:
                self._tokens[pool, label, "prompt"] += usage.prompt
                self._tokens[pool, label, "completion"] += usage.completion

    def refused(self, entry: PoolEntry, kind: str, reason: str) -> None:
        """An endpoint throttled (reason "throttled") or failed ("failed"): it cools down.
        ``kind`` is the answer's class (429, 5xx) or error (an exception's name, stream_broken)."""
        pool, label = entry.pool, entry.label
        with self._lock:
            self._calls[pool, label, kind] += 1
            self._cooldowns[pool, label, reason] += 1

    def skipped(self, entry: PoolEntry, reason: str) -> None:
        """Headroom routing passed an endpoint over: its reading said the call would not fit
        ("headroom") or its utilization was above its limit ("utilization")."""
        with self._lock:
            self._skips[entry.pool, entry.label, reason] += 1

    def families(self) -> list[Metric]:
        """The call metrics as Prometheus families, copied under the lock."""
        calls = CounterMetricFamily("apirouter_backend_calls",
                                    "Calls sent to an endpoint, by answer",
                                    labels=[*ENTRY_LABELS, "status_class"])
        tokens = CounterMetricFamily("apirouter_tokens",
                                     "Tokens reported by an endpoint's usage",
                                     labels=[*ENTRY_LABELS, "kind"])
        cooldowns = CounterMetricFamily("apirouter_cooldowns", "Cooldowns an endpoint entered",
                                        labels=[*ENTRY_LABELS, "reason"])
        skips = CounterMetricFamily("apirouter_skips",
                                    "Calls that passed an endpoint over without sending: its "
                                    "remaining budget could not fit them (headroom) or its "
                                    "utilization was above its limit (utilization)",
                                    labels=[*ENTRY_LABELS, "reason"])
        clients = CounterMetricFamily("apirouter_client_calls",
                                      "Client calls: served by an endpoint or by none",
                                      labels=["outcome"])
        latency = HistogramMetricFamily("apirouter_backend_latency_seconds",
                                        "Time from sending a call to its last byte",
                                        labels=ENTRY_LABELS)
        ttft = HistogramMetricFamily("apirouter_time_to_first_token_seconds",
                                     "Time from sending a streamed call to its first event",
                                     labels=ENTRY_LABELS)
        with self._lock:
            for family, counts in ((calls, self._calls), (tokens, self._tokens),
                                   (cooldowns, self._cooldowns), (skips, self._skips)):
                for labels, value in counts.items():
                    family.add_metric(list(labels), value)
            for family, histograms in ((latency, self._latency), (ttft, self._ttft)):
                for labels, histogram in histograms.items():
                    family.add_metric(list(labels), histogram.buckets(), histogram.total)
        served, unserved = self._registry.client_calls()
        clients.add_metric(["served"], served)
        clients.add_metric(["unserved"], unserved)
        return [calls, tokens, latency, ttft, cooldowns, skips, clients]

    def render(self) -> bytes:
        return generate_latest(self.prometheus)


class _CallCollector(Collector):
    """Hands Prometheus the call metrics the Telemetry has counted."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        yield from self.telemetry.families()


class ClientUsageCollector(Collector):
    """Each client's calls and tokens since the start, and its quota use, by client name
    (never a key); ``limits`` gives the clients' limits in force."""

    def __init__(self, usage: ClientUsage,
                 limits: Callable[[], Mapping[str, ClientLimits]] = dict) -> None:
        self.usage = usage
        self.limits = limits

    def collect(self) -> Iterator[Metric]:
        quotas = self.usage.quota_use(self.limits())
        if quotas:
            quota = GaugeMetricFamily("apirouter_client_quota_tokens",
                                      "A client's token quota for its period",
                                      labels=["client", "period"])
            used = GaugeMetricFamily("apirouter_client_quota_used_tokens",
                                     "Tokens a client has used of its quota in the current "
                                     "period", labels=["client", "period"])
            for name, period, spent, limit in quotas:
                quota.add_metric([name, period], limit)
                used.add_metric([name, period], spent)
            yield from (quota, used)
        totals = self.usage.totals()
        if not totals:
            return
        calls = CounterMetricFamily("apirouter_client_requests",
                                    "Calls of a client: admitted and forwarded, refused 429 by "
                                    "its tpm or rpm (rate_limited), refused 403 by its quota or "
                                    "deployments, or 400 as larger than its whole tpm (refused)",
                                    labels=["client", "outcome"])
        tokens = CounterMetricFamily("apirouter_client_tokens",
                                     "Tokens of a client's answers, from their usage",
                                     labels=["client", "kind"])
        for name, c in totals.items():
            calls.add_metric([name, "admitted"], c.calls)
            calls.add_metric([name, "rate_limited"], c.rate_limited)
            calls.add_metric([name, "refused"], c.refused)
            tokens.add_metric([name, "prompt"], c.prompt_tokens)
            tokens.add_metric([name, "completion"], c.completion_tokens)
        yield from (calls, tokens)
