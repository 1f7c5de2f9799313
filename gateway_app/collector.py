"""The daemon thread that closes every endpoint's metrics interval on time."""

from __future__ import annotations

import logging
import threading
import time

from .registry import Registry

log = logging.getLogger("apirouter")


class IntervalCollector:
    """Closes the registry's metrics intervals every ``interval`` seconds, traffic or not."""

    def __init__(self, registry: Registry, interval: float) -> None:
        self.registry = registry
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-collector", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # Deadlines advance by whole intervals so a slow close does not shift later windows.
        deadline = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            try:
                self.registry.close_intervals()
            except Exception:  # the thread must survive anything, or history stops
                log.exception("closing the metrics interval failed")
            deadline += self.interval
            now = time.monotonic()
            if deadline < now:  # the process was suspended: skip missed windows
                deadline = now + self.interval
