"""Backends, the pools that list them, and the one lock over their state.

A :class:`Backend` is one Azure OpenAI deployment (its resource and deployment name). Its
Transport (a requests Session), cooldown, fault streak and in-flight count exist once,
whichever pools list it, so a 429 seen through any route benches it for all of them.

A :class:`PoolEntry` is one listing of a backend in a pool: its URL, key, priority, weight,
read timeout and metrics (so /metrics shows one row per pool and backend). The original's
``endpoints`` list is the default pool, :data:`DEFAULT_POOL`, served by ``/lb``.

Mutable state changes only under the registry's lock, held just to read or update it, never
during network I/O. A reload builds a new :class:`Snapshot` (configuration, client keys,
pools) and publishes it in one assignment; entries and backends still present keep their
objects (state and metrics). A call in flight keeps what it holds; one whose entry or backend
was removed by a reload is not started (:meth:`Registry.acquire` checks both).

With replicas sharing state (gateway_app/cluster/), the registry stays the one holder of it:
it tells ``cooldown_listeners`` when a backend enters a cooldown (after its lock is released;
a listener only queues the event), and :meth:`Registry.apply_cooldown` takes another
replica's cooldown (extending, never shortening). Routing reads only this local copy.

Headroom routing: each backend keeps the latest :class:`Headroom` its answers stated and counts
down from it the estimated cost of every call sent since, so :meth:`Registry.acquire` can pass
over a backend that a call would not fit, before it answers 429 (README, "Headroom routing").
"""

from __future__ import annotations

import enum
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import urllib3

from ..config import EndpointConfig, GatewayConfig
from ..keys import ClientKeys
from ..usage import ClientLimits
from .headroom import Headroom
from .metrics import EndpointMetrics, metrics_json
from .sse import Usage
from .transport import Transport

log = logging.getLogger("apirouter")

# The pool name of the original's `endpoints` list; a slash keeps it apart from every
# configurable pool name (config.NAME allows none).
DEFAULT_POOL = "/lb"

# An Azure OpenAI URL names its deployment here; what follows is the operation.
_DEPLOYMENT_PATH = re.compile(r"^(.*?/openai/deployments/[^/]+)")
# 2 ** 60 seconds is forever; a larger exponent only risks an OverflowError
_MAX_DOUBLINGS = 60
# Seconds within which calls sent one after the other may reach a deployment in either order
# (threads and connections race; the network adds jitter): their readings are ordered by what
# they state, not by when they were sent.
SENT_TOGETHER = 0.1


def deployment_of(url: str) -> tuple[str, str]:
    """The backend a URL reaches: ``(identity, short name)``.

    The identity is the deployment's URL without operation or query
    (``https://res.openai.azure.com/openai/deployments/gpt-4o``); a URL of another shape is
    its own backend (origin and path). The short name (``res.openai.azure.com/gpt-4o``) is
    for logs and labels.
    """
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc.lower()}"
    found = _DEPLOYMENT_PATH.match(parts.path)
    if found:
        deployment = found.group(1).rsplit("/", 1)[1]
        return origin + found.group(1), f"{parts.netloc.lower()}/{deployment}"
    return origin + parts.path, parts.netloc.lower() + parts.path


def endpoint_label(url: str) -> str:
    """The URL without its query string: stable and short enough for a label."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


@dataclass(eq=False)
class Backend:
    """One deployment and its state (changed under the registry's lock)."""

    id: str
    name: str
    transport: Transport = field(repr=False)
    cooldown_until: float = 0.0  # time.monotonic() before which nothing is sent
    cooldown_reason: str = ""  # "throttled" or "failed"
    fault_streak: int = 0
    in_flight: int = 0
    retired: bool = False  # listed by no pool since the last reload
    # headroom routing: the latest reading, and what was sent since it (see Registry.observe)
    headroom: Headroom | None = None
    spent_tokens: int = 0
    spent_requests: int = 0
    # leases in flight that count against the reading, oldest first (a dict: ordered, O(1) pop)
    sent: dict[Lease, None] = field(default_factory=dict, repr=False)

    def remaining(self, now: float) -> float:
        return max(0.0, self.cooldown_until - now)


@dataclass(eq=False)
class PoolEntry:
    """One listing of a backend in a pool; its key, order and timeout follow reloads."""

    pool: str
    backend: Backend
    url: str  # /lb: the operation's whole URL; a named pool: the deployment's URL
    api_key: str = field(repr=False)
    priority: int
    weight: float
    read_timeout: float | None
    metrics: EndpointMetrics = field(repr=False)
    timeout: urllib3.Timeout = field(repr=False)
    utilization_limit: float | None = None  # percent; above it, calls go to the next priority
    retired: bool = False
    label: str = ""  # endpoint_label(url), for Prometheus

    def __post_init__(self) -> None:
        self.label = endpoint_label(self.url)

    @property
    def is_default_pool(self) -> bool:
        return self.pool == DEFAULT_POOL


@dataclass(frozen=True)
class Snapshot:
    """One published configuration: what every request reads, swapped whole on reload."""

    config: GatewayConfig
    client_keys: ClientKeys
    lb: tuple[PoolEntry, ...]  # the default pool, in priority order
    pools: Mapping[str, tuple[PoolEntry, ...]]  # named pools, each in priority order
    # client name -> limits, for every name client_keys accepts; published with the keys
    client_limits: Mapping[str, ClientLimits] = field(default_factory=dict)

    def entries(self) -> list[PoolEntry]:
        return [*self.lb, *(e for entries in self.pools.values() for e in entries)]

    def backends(self) -> list[Backend]:
        """Each backend once, in the order pools first list them."""
        return list({id(e.backend): e.backend for e in self.entries()}.values())


class Skip(enum.Enum):
    """Why :meth:`Registry.acquire` passed over a backend that is not cooling down."""

    HEADROOM = "headroom"  # its latest reading, less what was sent since, cannot fit the call
    UTILIZATION = "utilization"  # its latest utilization is above the entry's limit


def _admitted_later(a: Headroom, b: Headroom) -> bool | None:
    """Whether the deployment stated ``a`` after ``b``, by what they state: each call it
    admits leaves one request and some tokens fewer. None: they do not tell."""
    if a.requests is not None and b.requests is not None and a.requests != b.requests:
        return a.requests < b.requests
    if a.tokens is not None and b.tokens is not None and a.tokens != b.tokens:
        return a.tokens < b.tokens
    return None


@dataclass(frozen=True)
class CooldownEvent:
    """A backend entered (or extended) a cooldown: what other replicas need to bench it too.

    Times are wall-clock epochs, the only clock processes share; each converts to its own
    monotonic clock on arrival.
    """

    backend: str  # Backend.id: the deployment's URL, never a key
    until: float  # time.time() at which the cooldown ends
    reason: str  # "throttled" or "failed"
    streak: int  # faults in a row so far
    at: float  # time.time() when it was entered, to measure propagation


CooldownListener = Callable[[CooldownEvent], None]


@dataclass(frozen=True)
class ReadingEvent:
    """A backend's remaining budget as one of its answers stated it, for other replicas.

    Wall-clock epochs, like :class:`CooldownEvent`'s; ``until`` is when the reading stops
    being trusted (API_GATEWAY_HEADROOM_SECONDS after it arrived).
    """

    backend: str  # Backend.id
    requests: int | None
    tokens: int | None
    utilization: float | None
    read_at: float
    as_of: float
    until: float


ReadingListener = Callable[[ReadingEvent], None]


@dataclass(frozen=True)
class Busy:
    """No backend could take a call: how long until one may, and whether throttling is why."""

    retry_after: float
    throttled: bool


class Lease:
    """One attempt on a pool entry, from :meth:`Registry.acquire` until it ends, exactly once.

    Whatever happens in between, the backend's in-flight count is given back: the proxy
    calls :meth:`abandon` when an attempt ends in an unexpected exception, a no-op after
    a normal end.
    """

    __slots__ = ("_registry", "backend", "cost", "ended", "entry", "sent_at")

    def __init__(self, registry: Registry, entry: PoolEntry, backend: Backend,
                 sent_at: float = 0.0, cost: int | None = None) -> None:
        self._registry = registry
        self.entry = entry
        self.backend = backend  # the one whose in-flight count this lease holds
        self.ended = False
        self.sent_at = sent_at  # time.monotonic() when acquired, just before it is sent
        self.cost = cost  # estimated tokens counted down from the headroom; None: not counted

    def succeeded(self, latency_ms: float, usage: Usage | None) -> None:
        """The backend answered (2xx, or a client error relayed as it is)."""
        self._registry._succeeded(self, latency_ms, usage)

    def throttled(self, cooldown: float) -> None:
        """The backend answered 429: nothing goes to it for ``cooldown`` seconds."""
        self._registry._end(self, lambda: self._registry._cool(self.backend, self.entry,
                                                               cooldown, "throttled"))

    def failed(self) -> None:
        """A fault: bench the backend, longer for each fault in a row."""
        self._registry._end(self, lambda: self._registry._fault(self))

    def abandon(self) -> None:
        """Give the in-flight count back without counting anything (idempotent)."""
        self._registry._end(self, lambda: None)


class Registry:
    """The published snapshot, every backend's state and the instance counters, behind one
    lock (``_lock`` guards backends' and entries' mutable fields, metrics and counters)."""

    def __init__(self, max_connections: int, history_size: int,
                 failure_cooldown: float, failure_cooldown_max: float,
                 connect_timeout: float, read_timeout: float,
                 headroom_seconds: float = 5.0, minute_seconds: float = 60.0) -> None:
        self._lock = threading.Lock()
        self._minute_seconds = minute_seconds  # length of a per-minute metrics bucket
        self._headroom_seconds = headroom_seconds  # how long a reading is trusted
        self._max_connections = max_connections
        self._history_size = history_size
        self._failure_cooldown = failure_cooldown
        self._failure_cooldown_max = failure_cooldown_max
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.current = Snapshot(GatewayConfig([]), ClientKeys({}), (), MappingProxyType({}))
        self.success_calls = 0
        self.failed_calls = 0
        self._backends: dict[str, Backend] = {}  # by id, those of the current snapshot
        # Called after the lock is released, on the calling thread, when a backend enters a
        # cooldown; a listener must only hand the event on (the cluster link queues it).
        self.cooldown_listeners: list[CooldownListener] = []
        self.reading_listeners: list[ReadingListener] = []
        # Where a metrics interval that contains a moment starts. Identity: intervals start
        # when the process does. Replicas sharing metrics align them to the wall clock, so
        # that their closed intervals cover the same time and can be added up.
        self.interval_start: Callable[[float], float] = lambda moment: moment

    # --- configuration ---------------------------------------------------------------------
    def publish(self, config: GatewayConfig, client_keys: ClientKeys,
                client_limits: Mapping[str, ClientLimits] | None = None) -> Snapshot:
        """Build the pools of ``config`` and publish them with the keys and each client's
        limits, in one step.

        An entry listed again (same pool and URL) keeps its object, so its metrics go on and
        its new key, order and timeout reach calls holding the old snapshot too. A backend
        listed again (same deployment) keeps its state: a rotated key keeps the cooldown.
        """
        now = time.time()
        with self._lock:
            old_entries = {(e.pool, e.url): e for e in self.current.entries()}
            old_backends = {b.id: b for b in self.current.backends()}
            backends: dict[str, Backend] = {}

            def entry(pool: str, cfg: EndpointConfig, priority: int) -> PoolEntry:
                backend_id, name = deployment_of(cfg.uri)
                backend = backends.get(backend_id) or old_backends.pop(backend_id, None) \
                    or Backend(backend_id, name, Transport(self._max_connections))
                backends[backend_id] = backend
                # urllib3 copies the Timeout it is given, so one per entry can be shared
                timeout = urllib3.Timeout(connect=self._connect_timeout,
                                          read=cfg.timeout or self._read_timeout)
                found = old_entries.pop((pool, cfg.uri), None)
                if found is None:
                    return PoolEntry(pool, backend, cfg.uri, cfg.api_key, priority, cfg.weight,
                                     cfg.timeout,
                                     EndpointMetrics(self._history_size, self.interval_start(now),
                                                     self._minute_seconds),
                                     timeout, cfg.utilization_limit)
                found.backend, found.api_key, found.priority = backend, cfg.api_key, priority
                found.weight, found.read_timeout, found.timeout = cfg.weight, cfg.timeout, timeout
                found.utilization_limit = cfg.utilization_limit
                return found

            lb = tuple(entry(DEFAULT_POOL, cfg, position)
                       for position, cfg in enumerate(config.endpoints))
            pools = {name: tuple(entry(name, cfg, cfg.priority) for cfg in pool.backends)
                     for name, pool in config.pools.items()}
            for gone in old_entries.values():
                gone.retired = True
            idle = []
            for backend in old_backends.values():
                backend.retired = True
                if backend.in_flight == 0:
                    idle.append(backend)
            self.current = Snapshot(config, client_keys, lb, MappingProxyType(pools),
                                    MappingProxyType(dict(client_limits or {})))
            self._backends = backends
            snapshot = self.current
        for backend in idle:
            backend.transport.close()
        return snapshot

    @staticmethod
    def pool_order(entries: Sequence[PoolEntry]) -> list[PoolEntry]:
        """A named pool's entries in the order to try them.

        Priorities are tried in order; within one priority the order is drawn at random in
        proportion to the weights, so calls spread over equal backends.
        """
        # Efraimidis-Spirakis: sorting by u ** (1 / weight) draws a weighted order
        return sorted(entries, key=lambda e: (e.priority, -random.random() ** (1 / e.weight)))

    # --- one call --------------------------------------------------------------------------
    def acquire(self, entry: PoolEntry, cost: int | None = None,
                fit: bool = True) -> Lease | Skip | None:
        """A lease on ``entry`` unless its backend is cooling down or a reload removed it.

        Both checks and the count happen under the lock, so a reload cannot retire the
        backend between them unseen.

        With ``cost`` (headroom routing on), the call's estimated tokens and one request are
        counted down from the backend's latest reading. With ``fit`` too, a backend whose
        reading cannot fit them, or whose utilization is above the entry's limit, is passed
        over (:meth:`_no_room`): the answer says why, and nothing is counted. Check and count
        are one step under the lock, so concurrent calls cannot all take the last room.
        """
        backend = entry.backend
        with self._lock:
            now = time.monotonic()
            if entry.retired or backend.retired or backend.cooldown_until > now:
                return None
            if cost is not None:
                if fit:
                    skip = self._no_room(entry, backend, cost, now)
                    if skip is not None:
                        return skip
                backend.spent_tokens += cost
                backend.spent_requests += 1
            backend.in_flight += 1
            lease = Lease(self, entry, backend, now, cost)
            if cost is not None:
                backend.sent[lease] = None
        return lease

    def _no_room(self, entry: PoolEntry, backend: Backend, cost: int, now: float) -> Skip | None:
        """Lock held. Why the backend's latest reading says the call would not fit, if it does.

        A reading older than the headroom seconds, or than a cooldown that began after it, no
        longer keeps calls away (the deployment refills as time passes), but until a new one
        arrives, calls go one at a time: the first finds out, and a burst does not all go to a
        deployment that may still be full.
        """
        reading = backend.headroom
        if reading is None:
            return None  # never read: only a 429 can tell
        limit = entry.utilization_limit
        if limit is not None and reading.utilization is not None and reading.utilization > limit:
            skip = Skip.UTILIZATION
        elif ((reading.tokens is not None and reading.tokens - backend.spent_tokens < cost)
              or (reading.requests is not None and reading.requests - backend.spent_requests < 1)):
            skip = Skip.HEADROOM
        else:
            return None
        expired = reading.read_at + self._headroom_seconds
        if reading.as_of < backend.cooldown_until < expired:
            # a cooldown since: its retry-after tells better when the deployment has room
            expired = backend.cooldown_until
        if now <= expired:
            return skip
        # too old to trust: pass it over only while a call sent since is out finding out
        return skip if backend.sent and next(reversed(backend.sent)).sent_at > expired else None

    def observe(self, backend: Backend, reading: Headroom, notify: bool = True) -> bool:
        """Take ``reading`` as the backend's latest, unless the one it holds is later.

        The reading already holds the call it came with and those sent before it, so what is
        counted down from it is the calls still in flight that were sent after that call, and
        those sent from now on. (One sent after it that has ended brought a later reading, or
        ended in a fault that most likely spent nothing.) This is the one place a reading
        changes, wherever it comes from. True when it was taken; then, with ``notify``, the
        ``reading_listeners`` hear of it (after the lock is released).
        """
        with self._lock:
            current = backend.headroom
            if current is not None:
                gap = reading.as_of - current.as_of
                if gap <= SENT_TOGETHER:
                    # Calls sent together may reach the deployment in another order: of two
                    # such readings, the later one states less room. A call sent well before
                    # the held reading's brings old news.
                    later = _admitted_later(reading, current) if gap >= -SENT_TOGETHER else None
                    if not (gap > 0 if later is None else later):
                        return False
                    if gap < 0:  # it holds the held reading's call too: count down from there
                        reading = replace(reading, as_of=current.as_of)
            tokens = requests = 0
            for lease in reversed(backend.sent):  # newest first: stop at the first one it holds
                if lease.sent_at <= reading.as_of:
                    break
                tokens += lease.cost or 0
                requests += 1
            backend.headroom = reading
            backend.spent_tokens, backend.spent_requests = tokens, requests
        if notify and self.reading_listeners:
            now, wall = time.monotonic(), time.time()
            event = ReadingEvent(backend.id, reading.requests, reading.tokens,
                                 reading.utilization, wall - (now - reading.read_at),
                                 wall - (now - reading.as_of),
                                 wall - (now - reading.read_at) + self._headroom_seconds)
            for listener in self.reading_listeners:
                try:
                    listener(event)
                except Exception:  # sharing a reading must never fail the call that read it
                    log.exception("a reading listener failed")
        return True

    def _release(self, lease: Lease) -> bool:
        """Lock held. End the lease; True when a retired backend's Session can be closed."""
        lease.ended = True
        backend = lease.backend
        backend.in_flight -= 1
        if lease.cost is not None:
            del backend.sent[lease]
        return backend.retired and backend.in_flight == 0

    def _end(self, lease: Lease, update: Callable[[], CooldownEvent | None]) -> None:
        with self._lock:
            if lease.ended:
                return
            event = update()
            close = self._release(lease)
        if close:
            lease.backend.transport.close()
        if event is not None:
            self._notify(event)

    def _notify(self, event: CooldownEvent) -> None:
        for listener in self.cooldown_listeners:
            try:
                listener(event)
            except Exception:  # sharing a cooldown must never fail the call that saw it
                log.exception("a cooldown listener failed")

    def _succeeded(self, lease: Lease, latency_ms: float, usage: Usage | None) -> None:
        entry = lease.entry
        with self._lock:  # written out, not through _end: this runs on every call
            if lease.ended:
                return
            lease.backend.fault_streak = 0
            entry.metrics.success(latency_ms, usage)
            close = self._release(lease)
        if close:
            lease.backend.transport.close()

    @staticmethod
    def _cool(backend: Backend, entry: PoolEntry, seconds: float, reason: str,
              streak_grew: bool = False) -> CooldownEvent | None:
        """Lock held. Extend the cooldown (never shorten it) and count the failed call.

        The event, for listeners, when the cooldown was extended or the streak grew.
        """
        now = time.monotonic()
        until = now + seconds
        extended = until > backend.cooldown_until
        if extended:
            backend.cooldown_until = until
            backend.cooldown_reason = reason
        entry.metrics.failure()
        if not (extended or streak_grew):
            return None
        wall = time.time()
        return CooldownEvent(backend.id, wall + (backend.cooldown_until - now),
                             backend.cooldown_reason, backend.fault_streak, wall)

    def _fault(self, lease: Lease) -> CooldownEvent | None:
        """Lock held. One more fault in a row: a bench twice as long as the last, capped."""
        backend = lease.backend
        backend.fault_streak += 1
        doublings = min(backend.fault_streak - 1, _MAX_DOUBLINGS)
        bench = min(self._failure_cooldown * 2.0 ** doublings, self._failure_cooldown_max)
        return self._cool(backend, lease.entry, bench, "failed", streak_grew=True)

    # --- state from other replicas ---------------------------------------------------------
    def apply_cooldown(self, backend_id: str, until: float, reason: str, streak: int) -> bool:
        """Bench a backend as another replica did: until the wall-clock epoch ``until``.

        A cooldown is only ever extended, never shortened, and the fault streak becomes the
        larger of both, so events may arrive late, twice or out of order. Listeners are not
        called (the event came from elsewhere). True when something changed; a backend this
        replica does not list is ignored.
        """
        remaining = until - time.time()
        with self._lock:
            backend = self._backends.get(backend_id)
            if backend is None or backend.retired:
                return False
            changed = False
            if streak > backend.fault_streak:
                backend.fault_streak = streak
                changed = True
            if remaining > 0:
                ends = time.monotonic() + remaining
                if ends > backend.cooldown_until:
                    backend.cooldown_until = ends
                    backend.cooldown_reason = reason
                    changed = True
        return changed

    def apply_reading(self, event: ReadingEvent) -> bool:
        """Take another replica's reading of a backend as if it had arrived here: its times
        move from the wall clock to this one's monotonic clock, and the calls this replica
        sent since it was stated are counted down from it. True when it was taken."""
        now, wall = time.monotonic(), time.time()
        if event.until <= wall:
            return False
        with self._lock:
            backend = self._backends.get(event.backend)
        if backend is None or backend.retired:
            return False
        reading = Headroom(event.requests, event.tokens, event.utilization,
                           now - (wall - event.read_at), now - (wall - event.as_of))
        return self.observe(backend, reading, notify=False)

    def active_cooldowns(self) -> list[CooldownEvent]:
        """The cooldowns running now, as events (for replicas that missed them)."""
        now, wall = time.monotonic(), time.time()
        with self._lock:
            return [CooldownEvent(b.id, wall + (b.cooldown_until - now), b.cooldown_reason,
                                  b.fault_streak, wall)
                    for b in self._backends.values() if b.cooldown_until > now]

    def backend_ids(self) -> set[str]:
        """The ids of the backends the current configuration lists."""
        with self._lock:
            return set(self._backends)

    def count_client_call(self, served: bool, head: PoolEntry | None = None, cost: int = 0,
                          arrived: float | None = None) -> None:
        """Instance totals: a client call served by some backend, or one no backend could.

        With ``head`` (the pool's first entry), the call's estimated ``cost`` also counts as
        the pool's demand in the minute it ``arrived`` (epoch seconds), unmet when not served.
        """
        with self._lock:
            if served:
                self.success_calls += 1
            else:
                self.failed_calls += 1
            if head is not None:
                head.metrics.demand(cost, served, arrived)

    def client_calls(self) -> tuple[int, int]:
        """Client calls served and not served so far (never reset: Prometheus counters)."""
        with self._lock:
            return self.success_calls, self.failed_calls

    def busy(self, entries: Iterable[PoolEntry]) -> Busy:
        """When the earliest cooling backend is free again, and whether any is throttled."""
        now = time.monotonic()
        with self._lock:
            cooling = [e.backend for e in entries if e.backend.cooldown_until > now]
            throttled = any(b.cooldown_reason == "throttled" for b in cooling)
            wait = min((b.remaining(now) for b in cooling), default=0.0)
        return Busy(retry_after=wait, throttled=throttled)

    # --- metrics ---------------------------------------------------------------------------
    def close_intervals(self, now: float | None = None) -> list[dict[str, Any]]:
        """Close the current metrics interval of every entry at ``now`` (default: this
        moment; an aligned collector passes the boundary); return the closed entries."""
        now = time.time() if now is None else now
        with self._lock:
            return [{"endpoint": e.url, "priority": e.priority,
                     **({} if e.is_default_pool else {"deployment": e.pool}),
                     **e.metrics.close_interval(now)} for e in self.current.entries()]

    def metrics_snapshot(self) -> dict[str, Any]:
        """Per-entry metrics and instance totals: copied under the lock, built outside it."""
        snapshot = self.current
        with self._lock:
            copies = {id(e): e.metrics.copy() for e in snapshot.entries()}
            served, unserved = self.success_calls, self.failed_calls

        def row(entry: PoolEntry) -> dict[str, Any]:
            current, history = copies[id(entry)]
            return {"endpoint": entry.url, "priority": entry.priority,
                    **({} if entry.is_default_pool else {"weight": entry.weight}),
                    "metrics": metrics_json(current, history)}

        return {"endpointMetrics": [row(e) for e in snapshot.lb],
                "deploymentMetrics": {name: [row(e) for e in entries]
                                      for name, entries in snapshot.pools.items()},
                "successApiCalls": served,
                "failedApiCalls": unserved,
                "totalApiCalls": served + unserved}

    def counters(self) -> dict[str, Any]:
        """Raw figures of every entry and the instance totals, for other replicas to add up:
        per (pool, endpoint) the current interval's start and counters and the closed
        history entries."""
        snapshot = self.current
        with self._lock:
            copies = [(e, e.metrics.started_at, e.metrics.copy()) for e in snapshot.entries()]
            served, unserved = self.success_calls, self.failed_calls
        return {"entries": [{"pool": e.pool, "endpoint": e.url, "priority": e.priority,
                             "weight": e.weight, "start": start, "current": current,
                             "history": history}
                            for e, start, (current, history) in copies],
                "successApiCalls": served, "failedApiCalls": unserved}

    def availability(self) -> list[dict[str, Any]]:
        """Each entry's backend state, for readiness, Prometheus and operators."""
        now = time.monotonic()
        entries = self.current.entries()
        with self._lock:
            return [{"pool": e.pool, "priority": e.priority, "endpoint": e.url,
                     "backend": e.backend.name,
                     "available": e.backend.cooldown_until <= now,
                     "cooldownSeconds": round(e.backend.remaining(now), 3),
                     "reason": (e.backend.cooldown_reason
                                if e.backend.cooldown_until > now else ""),
                     "faultStreak": e.backend.fault_streak,
                     "inFlight": e.backend.in_flight,
                     **self._headroom_state(e.backend, now)} for e in entries]

    def _headroom_state(self, backend: Backend, now: float) -> dict[str, Any]:
        """Lock held. The backend's latest reading, less what was sent since, for operators."""
        reading = backend.headroom
        if reading is None:
            return {}

        def left(value: int | None, spent: int) -> int | None:
            return None if value is None else value - spent
        return {"headroom": {"requests": left(reading.requests, backend.spent_requests),
                             "tokens": left(reading.tokens, backend.spent_tokens),
                             "utilization": reading.utilization,
                             "ageSeconds": round(now - reading.read_at, 3)}}

    def close(self) -> None:
        """Close every Session (at shutdown)."""
        for backend in self.current.backends():
            backend.transport.close()

