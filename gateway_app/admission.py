"""Admission control: a bound on calls in progress, beyond which a call is refused at once.

Waitress queues a request until a worker thread is free, without bound, so an overloaded
gateway answers every call late instead of most calls on time. With a bound below the thread
count, a call over it is answered at once with 503 and ``retry-after`` by one of the threads
kept free, and the calls admitted keep their latency. A call counts from the moment it is
admitted until the server closes its response (for a stream, after its last event).

The web layer decides which requests are calls (:meth:`Admission.admit`, from a hook that
knows the route); :func:`release_admitted` wraps the WSGI app and gives the place back when
the response is closed, whatever the route or the outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("apirouter")

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

# environ key holding the Admission that admitted this request, so its place is given back
ADMITTED = "apirouter.admitted"
# seconds between two warnings about refused calls, so an overload does not flood the log
WARN_EVERY = 10.0


def admission_limit(threads: int, setting: int) -> int:
    """The bound: ``setting``, or when 0 the thread count less a few threads kept free.

    An eighth of the threads (1 to 16) stay free for refusals and probes, which take
    microseconds each; waitress gives a request to the app only when a thread is free.
    """
    if setting:
        return setting
    return max(1, threads - max(1, min(16, threads // 8)))


class Admission:
    """Counts calls in progress and refuses those over ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0
        self.refused = 0
        self._lock = threading.Lock()  # guards in_progress, refused and the warning's state
        self._warned_at = 0.0
        self._refused_at_warning = 0

    def admit(self, environ: dict[str, Any]) -> bool:
        """Take a place for this request, or count a refusal and return False."""
        with self._lock:
            if self.in_progress < self.limit:
                self.in_progress += 1
                environ[ADMITTED] = self
                return True
            self.refused += 1
            now = time.monotonic()
            warn = now - self._warned_at >= WARN_EVERY
            if warn:
                since, self._refused_at_warning = (self.refused - self._refused_at_warning,
                                                   self.refused)
                self._warned_at = now
        if warn:
            log.warning("overloaded: at the limit of %d call(s) in progress; %d call(s) "
                        "refused with 503 since the previous warning", self.limit, since)
        return False

    def leave(self) -> None:
        with self._lock:
            self.in_progress -= 1

    def collector(self) -> Collector:
        return _AdmissionCollector(self)


class _AdmissionCollector(Collector):
    """The admission's numbers for /prometheus, read at scrape time."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        a = self.admission
        yield CounterMetricFamily("apirouter_admission_refused",
                                  "Calls refused with 503 because the gateway was at its limit "
                                  "of calls in progress", value=a.refused)
        yield GaugeMetricFamily("apirouter_calls_in_progress",
                                "Calls admitted whose answer has not ended", value=a.in_progress)
        yield GaugeMetricFamily("apirouter_admission_limit",
                                "Calls in progress beyond which calls are refused",
                                value=a.limit)


class Closing:
    """Passes an app's response through and runs ``done`` once when the server closes it."""

    def __init__(self, result: Iterable[bytes], done: Callable[[], None]) -> None:
        self.result = result
        self.done = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            done, self.done = self.done, lambda: None
            done()


def release_admitted(app: WSGIApp) -> WSGIApp:
    """Wrap ``app`` so that an admitted request's place is given back when its response ends."""

    def call(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        try:
            result = app(environ, start_response)
        except BaseException:
            admission = environ.pop(ADMITTED, None)
            if admission is not None:
                admission.leave()
            raise
        admission = environ.get(ADMITTED)
        return result if admission is None else Closing(result, admission.leave)

    return call
