"""The daemon thread that closes every endpoint's metrics interval on time."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .routing.registry import Registry
from .usage import ClientUsage

log = logging.getLogger("apirouter")

# Receives the entries of one closing, one per endpoint: {"endpoint", "priority",
# "collectionTime", "collectedMetrics"}, then one per client that has used the gateway:
# {"client", "collectionTime", "collectedMetrics"}. Runs on the collector thread, never on a
# call's.
Sink = Callable[[list[dict[str, Any]]], None]


def aligned_start(interval: float) -> Callable[[float], float]:
    """Where the wall-clock interval that contains a moment starts: a multiple of
    ``interval`` seconds since the epoch, the same on every replica."""
    return lambda moment: math.floor(moment / interval) * interval


class IntervalCollector:
    """Closes the registry's metrics intervals every ``interval`` seconds, traffic or not.

    ``aligned``: close on wall-clock multiples of the interval (replicas sharing metrics do,
    so their intervals share collectionTime); else every interval from the start.
    """

    def __init__(self, registry: Registry, interval: float, aligned: bool = False,
                 usage: ClientUsage | None = None) -> None:
        self.registry = registry
        self.usage = usage  # per-client figures, closed at the same moment
        self.interval = interval
        self.aligned = aligned
        self.sinks: list[Sink] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-collector", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush: bool = False) -> None:
        """Stop closing intervals; with ``flush``, close the open one first, so that a
        graceful shutdown hands its last, partial interval to the sinks (the history file)."""
        self._stop.set()
        if flush:
            self._close()

    def _close(self, now: float | None = None) -> None:
        try:
            closed = self.registry.close_intervals(now)
            if self.usage is not None:
                closed += self.usage.close_intervals(now)
        except Exception:  # the thread must survive anything, or history stops
            log.exception("closing the metrics interval failed")
            return
        for sink in self.sinks:
            try:
                sink(closed)
            except Exception:
                log.exception("a metrics history sink failed")

    def _run(self) -> None:
        if self.aligned:
            self._run_aligned()
            return
        # Deadlines advance by whole intervals so a slow close does not shift later windows.
        deadline = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            self._close()
            deadline += self.interval
            now = time.monotonic()
            if deadline < now:  # the process was suspended: skip missed windows
                deadline = now + self.interval

    def _run_aligned(self) -> None:
        start = aligned_start(self.interval)
        last = start(time.time())
        while True:
            # a wait may end a little early: never close the same boundary twice
            boundary = max(start(time.time()) + self.interval, last + self.interval)
            if self._stop.wait(max(0.0, boundary - time.time())):
                return
            self._close(boundary)
            last = boundary
