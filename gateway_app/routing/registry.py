"""Backends and the locked registry that holds every piece of shared state.

A Backend owns its Transport, a requests Session with pooled connections to one deployment (see
transport.py). Its cooldown, fault
streak, in-flight count and metrics change only under the registry's lock, which is held just to
read or update them, never during network I/O. A reload builds a new tuple of backends, keeping
the objects (state and metrics) of endpoints still present, and swaps it in one step; calls in
flight keep the Backend they hold.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import EndpointConfig, PoolConfig
from .metrics import EndpointMetrics
from .sse import Usage
from .transport import Transport


@dataclass(eq=False)
class Backend:
    """One deployment: where it is, its key, its transport (Session), and its state (under
    the lock)."""

    uri: str
    api_key: str = field(repr=False)
    priority: int
    read_timeout: float | None
    pool: str  # "" for the /lb endpoints, else the deployment pool's name
    transport: Transport = field(repr=False)
    metrics: EndpointMetrics = field(repr=False)
    weight: float = 1.0
    cooldown_until: float = 0.0  # time.monotonic() before which nothing is sent
    cooldown_reason: str = ""  # "throttled" or "failed"
    fault_streak: int = 0
    in_flight: int = 0
    retired: bool = False

    def remaining(self, now: float) -> float:
        return max(0.0, self.cooldown_until - now)


@dataclass(frozen=True)
class Busy:
    """No backend could take a call: how long until one may, and whether throttling is why."""

    retry_after: float
    throttled: bool


class Registry:
    """The ordered backends and the instance counters, behind one lock."""

    def __init__(self, pool_size: int, history_size: int,
                 failure_cooldown: float, failure_cooldown_max: float) -> None:
        self._lock = threading.Lock()
        self._backends: tuple[Backend, ...] = ()
        self._pools: dict[str, tuple[Backend, ...]] = {}
        self._pool_size = pool_size
        self._history_size = history_size
        self._failure_cooldown = failure_cooldown
        self._failure_cooldown_max = failure_cooldown_max
        self.success_calls = 0
        self.failed_calls = 0

    # --- configuration ---------------------------------------------------------------------
    def replace(self, endpoints: Iterable[EndpointConfig],
                pools: Mapping[str, PoolConfig] | None = None) -> None:
        """Swap in new lists in one step; a backend with the same uri (in the same pool)
        keeps its state and metrics.

        The uri names the deployment, so a rotated key keeps its cooldown and history.
        """
        now = time.time()
        with self._lock:
            old = {(b.pool, b.uri): b for b in self._all()}

            def build(pool: str, configs: Iterable[EndpointConfig],
                      by_position: bool) -> tuple[Backend, ...]:
                fresh = []
                for position, cfg in enumerate(configs):
                    backend = old.pop((pool, cfg.uri), None) or Backend(
                        uri=cfg.uri, api_key=cfg.api_key, priority=0, read_timeout=None,
                        pool=pool, transport=Transport(self._pool_size),
                        metrics=EndpointMetrics(self._history_size, now))
                    backend.priority = position if by_position else cfg.priority
                    backend.api_key = cfg.api_key
                    backend.read_timeout = cfg.timeout
                    backend.weight = cfg.weight
                    fresh.append(backend)
                return tuple(fresh)

            self._backends = build("", endpoints, by_position=True)
            self._pools = {name: build(name, pool.backends, by_position=False)
                           for name, pool in (pools or {}).items()}
            idle = []
            for backend in old.values():
                backend.retired = True
                if backend.in_flight == 0:
                    idle.append(backend)
        for backend in idle:
            backend.transport.close()

    def backends(self) -> tuple[Backend, ...]:
        """The /lb list in priority order (an immutable snapshot)."""
        return self._backends

    def pools(self) -> dict[str, tuple[Backend, ...]]:
        """The deployment pools (a snapshot)."""
        return self._pools

    def _all(self) -> list[Backend]:
        return [*self._backends, *(b for pool in self._pools.values() for b in pool)]

    def pool_order(self, name: str) -> list[Backend] | None:
        """A pool's backends in the order to try them, or None for an unknown pool.

        Priorities are tried in order; within one priority the order is drawn at random in
        proportion to the weights, so calls spread over equal backends.
        """
        backends = self._pools.get(name)
        if backends is None:
            return None
        # Efraimidis-Spirakis: sorting by u ** (1 / weight) draws a weighted order
        return sorted(backends, key=lambda b: (b.priority, -random.random() ** (1 / b.weight)))

    # --- one call --------------------------------------------------------------------------
    def acquire(self, backend: Backend) -> bool:
        """Count a call on ``backend`` unless it is cooling down (checked under the lock)."""
        with self._lock:
            if backend.cooldown_until > time.monotonic():
                return False
            backend.in_flight += 1
            return True

    def _release(self, backend: Backend) -> bool:
        """Lock held. True when the Session of a retired backend can now be closed."""
        backend.in_flight -= 1
        return backend.retired and backend.in_flight == 0

    def _finish(self, backend: Backend, update: Any) -> None:
        with self._lock:
            update()
            close = self._release(backend)
        if close:
            backend.transport.close()

    def succeeded(self, backend: Backend, latency_ms: float, usage: Usage | None) -> None:
        """The backend answered (2xx, or a client error relayed as it is)."""
        with self._lock:  # written out, not through _finish: this runs on every call
            backend.fault_streak = 0
            backend.metrics.success(latency_ms, usage)
            close = self._release(backend)
        if close:
            backend.transport.close()

    @staticmethod
    def _cool(backend: Backend, seconds: float, reason: str) -> None:
        """Lock held. Extend the cooldown (never shorten it) and count the failed call."""
        until = time.monotonic() + seconds
        if until > backend.cooldown_until:
            backend.cooldown_until = until
            backend.cooldown_reason = reason
        backend.metrics.failure()

    def throttled(self, backend: Backend, cooldown: float) -> None:
        """The backend answered 429: nothing goes to it for ``cooldown`` seconds."""
        self._finish(backend, lambda: self._cool(backend, cooldown, "throttled"))

    def failed(self, backend: Backend) -> None:
        """A fault: bench the backend, longer for each fault in a row."""
        def update() -> None:
            backend.fault_streak += 1
            bench = min(self._failure_cooldown * 2 ** (backend.fault_streak - 1),
                        self._failure_cooldown_max)
            self._cool(backend, bench, "failed")
        self._finish(backend, update)

    def count_client_call(self, served: bool) -> None:
        """Instance totals: a client call served by some backend, or one no backend could."""
        with self._lock:
            if served:
                self.success_calls += 1
            else:
                self.failed_calls += 1

    def client_calls(self) -> tuple[int, int]:
        """Client calls served and not served so far (never reset: Prometheus counters)."""
        with self._lock:
            return self.success_calls, self.failed_calls

    def busy(self, backends: Iterable[Backend]) -> Busy:
        """When the earliest cooling backend is free again, and whether any is throttled."""
        now = time.monotonic()
        with self._lock:
            cooling = [b for b in backends if b.cooldown_until > now]
            throttled = any(b.cooldown_reason == "throttled" for b in cooling)
            wait = min((b.remaining(now) for b in cooling), default=0.0)
        return Busy(retry_after=wait, throttled=throttled)

    # --- metrics ---------------------------------------------------------------------------
    def close_intervals(self) -> list[dict[str, Any]]:
        """Close the current metrics interval of every backend; return the closed entries."""
        now = time.time()
        with self._lock:
            closed = []
            for backend in self._all():
                entry = backend.metrics.close_interval(now)
                where = {"deployment": backend.pool} if backend.pool else {}
                closed.append({"endpoint": backend.uri, "priority": backend.priority, **where,
                               **entry})
            return closed

    def metrics_snapshot(self) -> dict[str, Any]:
        """Per-endpoint metrics and instance totals, copied under the lock."""
        with self._lock:
            endpoints = [{
                "endpoint": b.uri,
                "priority": b.priority,
                "metrics": b.metrics.to_json(),
            } for b in self._backends]
            pools = {name: [{"endpoint": b.uri, "priority": b.priority, "weight": b.weight,
                             "metrics": b.metrics.to_json()} for b in backends]
                     for name, backends in self._pools.items()}
            return {"endpointMetrics": endpoints,
                    "deploymentMetrics": pools,
                    "successApiCalls": self.success_calls,
                    "failedApiCalls": self.failed_calls,
                    "totalApiCalls": self.success_calls + self.failed_calls}

    def availability(self) -> list[dict[str, Any]]:
        """Each endpoint's cooldown state, for readiness and operators."""
        now = time.monotonic()
        with self._lock:
            return [{"priority": b.priority, "endpoint": b.uri,
                     **({"deployment": b.pool} if b.pool else {}),
                     "available": b.cooldown_until <= now,
                     "cooldownSeconds": round(b.remaining(now), 3),
                     "reason": b.cooldown_reason if b.cooldown_until > now else "",
                     "inFlight": b.in_flight} for b in self._all()]

    def close(self) -> None:
        """Close every Session (at shutdown)."""
        with self._lock:
            backends = self._all()
        for backend in backends:
            backend.transport.close()
