"""Per-client limits and usage: sliding-minute tokens and requests, a period's token quota, and
the per-interval figures /metrics, /prometheus and the history file show by client name.

State, not web code: the web layer asks :meth:`ClientUsage.admit` before forwarding a call and
the proxy settles the returned :class:`Ticket` when the answer is known. Tokens are the call's
estimated cost (routing/cost.py) at admission, replaced by the answer's real ``total_tokens``
when it has usage (a streamed answer's usage chunk included); an answer without usage keeps the
estimate, and a call no backend served is refunded (its request still counts).

Exact within one process: the check and the count are one step under one lock, so concurrent
calls cannot all take a client's last room. Usage is keyed by client name, so a reload that
changes a client's limits keeps what it has used. Only names are kept here, never a key.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .routing.sse import Usage

WINDOW = 60.0  # seconds: tpm and rpm are counted over the last minute, sliding
PERIODS = ("hourly", "daily", "weekly", "monthly")


@dataclass(frozen=True)
class ClientLimits:
    """One client's limits; None: no limit of that kind. ``deployments`` None: every pool;
    else the pool names it may use (``/lb`` for the original's route)."""

    tpm: int | None = None
    rpm: int | None = None
    token_quota: int | None = None
    quota_period: str | None = None
    deployments: frozenset[str] | None = None

    @property
    def counted(self) -> bool:
        """Whether admission has anything to check beyond the pool."""
        return self.tpm is not None or self.rpm is not None or self.token_quota is not None

    def allows(self, pool: str) -> bool:
        return self.deployments is None or pool in self.deployments


NO_LIMITS = ClientLimits()


def period_bounds(moment: float, period: str) -> tuple[float, float]:
    """The calendar period (UTC) that contains the epoch ``moment``: its start and end."""
    day = datetime.fromtimestamp(moment, UTC)
    if period == "hourly":
        start = day.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "daily":
        start = day.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "weekly":  # ISO weeks: Monday 00:00 UTC
        start = (day - timedelta(days=day.weekday())).replace(hour=0, minute=0, second=0,
                                                              microsecond=0)
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=calendar.monthrange(day.year, day.month)[1])
    else:
        raise ValueError(f"unknown quota period {period!r}")
    return start.timestamp(), end.timestamp()


@dataclass(frozen=True)
class Refusal:
    """Why a call was not admitted: ``status`` 429 (rate) or 403 (quota, pool), the limit's
    name, a message for the client and the seconds until it may come back (None: not by
    waiting)."""

    status: int
    limit: str
    message: str
    retry_after: float | None = None
    period_end: float | None = None  # epoch, for a quota


class _Record:
    """One admitted call in a client's sliding window (or another replica's share of it)."""

    __slots__ = ("at", "in_window", "period", "requests", "tokens")

    def __init__(self, at: float, tokens: int, period: float | None, requests: int = 1) -> None:
        self.at = at
        self.tokens = tokens
        self.requests = requests  # 1 for a call; 0 for another replica's settlement
        self.period = period  # start of the quota period it was counted in
        self.in_window = True


# What replicas tell each other (cluster/messages.py ClientUsageDeltas): per change,
# [client, at (epoch of the call's admission), tokens, requests, quota period start or None].
Delta = list[Any]
MAX_PENDING = 10_000  # deltas waiting for the cluster link; the oldest are dropped past it


@dataclass
class ClientCounters:
    """One client's figures for one metrics interval (or since the start, for Prometheus)."""

    calls: int = 0  # admitted and forwarded
    rate_limited: int = 0  # answered 429 by the client's tpm or rpm
    refused: int = 0  # answered 403 (quota used up, a pool it may not use) or 400 (too large)
    prompt_tokens: int = 0  # from the answers' usage
    completion_tokens: int = 0

    def add(self, other: ClientCounters) -> None:
        self.calls += other.calls
        self.rate_limited += other.rate_limited
        self.refused += other.refused
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClientCounters:
        return cls(calls=int(data.get("calls", 0)),
                   rate_limited=int(data.get("rateLimitedCalls", 0)),
                   refused=int(data.get("refusedCalls", 0)),
                   prompt_tokens=int(data.get("promptTokens", 0)),
                   completion_tokens=int(data.get("completionTokens", 0)))

    def as_json(self) -> dict[str, int]:
        return {"calls": self.calls, "rateLimitedCalls": self.rate_limited,
                "refusedCalls": self.refused, "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens,
                "totalTokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class _Client:
    """Lock held for every field. A client's window, quota total and metrics."""

    records: deque[_Record] = field(default_factory=deque)
    window_tokens: int = 0
    window_requests: int = 0
    period: float | None = None  # start of the quota period of period_tokens
    period_tokens: int = 0
    # the end of that period and its kind, so the calendar is consulted once per period
    period_end: float = 0.0
    period_kind: str | None = None
    current: ClientCounters = field(default_factory=ClientCounters)
    total: ClientCounters = field(default_factory=ClientCounters)  # never reset
    started_at: float = 0.0
    history: deque[dict[str, Any]] = field(default_factory=deque)


class Ticket:
    """An admitted call's place in its client's counts, settled once when the answer is known."""

    __slots__ = ("_record", "_usage", "client", "settled")

    def __init__(self, usage: ClientUsage, client: str, record: _Record) -> None:
        self._usage = usage
        self._record = record
        self.client = client
        self.settled = False

    def settle(self, usage: Usage | None, served: bool = True) -> None:
        """The answer's usage (None: it had none, the estimate stands); ``served`` False: no
        backend served the call, its tokens are given back."""
        self._usage._settle(self, self._record, usage, served)


class ClientUsage:
    """Every client's windows, quota totals and metrics, behind ``_lock``."""

    def __init__(self, history_size: int, clock: Callable[[], float] = time.time,
                 interval_start: Callable[[float], float] = lambda moment: moment,
                 window: float = WINDOW) -> None:
        self._clock = clock
        self.window = window  # seconds; tests shorten it
        self._history_size = history_size
        self._interval_start = interval_start
        self._lock = threading.Lock()  # guards _clients and everything in them, and _pending
        self._clients: dict[str, _Client] = {}
        # With replicas (cluster/link.py): called, lock released, when deltas start to pend;
        # it only wakes the link's publisher, which takes them (take_deltas).
        self.on_pending: Callable[[], None] | None = None
        self._pending: deque[Delta] = deque(maxlen=MAX_PENDING)
        self.dropped_deltas = 0

    def _client(self, name: str, now: float) -> _Client:
        """Lock held."""
        client = self._clients.get(name)
        if client is None:
            client = _Client(started_at=self._interval_start(now),
                             history=deque(maxlen=self._history_size))
            self._clients[name] = client
        return client

    def admit(self, name: str, limits: ClientLimits, pool: str, cost: int
              ) -> Ticket | Refusal:
        """Count the call against ``name``'s limits and admit it, or say why not."""
        if not limits.allows(pool):
            allowed = ", ".join(_pool_name(p) for p in sorted(limits.deployments or ()))
            with self._lock:
                client = self._client(name, self._clock())
                client.current.refused += 1
                client.total.refused += 1
            return Refusal(403, "deployments", f"client {name}: may not use {_pool_name(pool)}; "
                           f"it may use {allowed or 'none'}.")
        now = self._clock()
        with self._lock:
            client = self._client(name, now)
            self._expire(client, now)
            refusal = self._over(name, client, limits, cost, now)
            if refusal is not None:
                counters = (client.current, client.total)
                for c in counters:
                    if refusal.status == 429:
                        c.rate_limited += 1
                    else:
                        c.refused += 1
                return refusal
            period = None
            if limits.token_quota is not None and limits.quota_period is not None:
                period = client.period
                client.period_tokens += cost
            record = _Record(now, cost, period)
            client.records.append(record)
            client.window_tokens += cost
            client.window_requests += 1
            client.current.calls += 1
            client.total.calls += 1
            wake = self._share([name, now, cost, 1, period])
        if wake:
            self._wake()
        return Ticket(self, name, record)

    def _share(self, delta: Delta) -> bool:
        """Lock held. Keep ``delta`` for the other replicas; True: wake the link."""
        if self.on_pending is None:
            return False
        if len(self._pending) == MAX_PENDING:
            self.dropped_deltas += 1
        self._pending.append(delta)
        return len(self._pending) == 1

    def _wake(self) -> None:
        callback = self.on_pending
        if callback is not None:
            callback()

    def take_deltas(self) -> list[Delta]:
        """The deltas to publish, oldest first (the link's publisher thread)."""
        with self._lock:
            taken = list(self._pending)
            self._pending.clear()
        return taken

    def apply_remote(self, deltas: Iterable[Delta]) -> None:
        """Count what other replicas admitted and settled, as if admitted here at the same
        moment. A delta that arrives after newer local calls stays in the window behind
        them: counted a little longer than exact, never shorter."""
        with self._lock:
            now = self._clock()
            for name, at, tokens, requests, period in deltas:
                client = self._client(str(name), now)
                self._expire(client, now)  # also for a client that never calls here
                if now - at < self.window:
                    client.records.append(_Record(at, tokens, period, requests))
                    client.window_tokens += tokens
                    client.window_requests += requests
                if period is not None:
                    if client.period is None or period > client.period:
                        client.period, client.period_tokens = period, 0
                        client.period_end = 0.0  # its end: looked up at the next admission
                    if period == client.period:
                        client.period_tokens += tokens

    def _expire(self, client: _Client, now: float) -> None:
        """Lock held. Drop the calls older than the window."""
        records = client.records
        while records and now - records[0].at >= self.window:
            record = records.popleft()
            record.in_window = False
            client.window_tokens -= record.tokens
            client.window_requests -= record.requests

    def _over(self, name: str, client: _Client, limits: ClientLimits, cost: int,
              now: float) -> Refusal | None:
        """Lock held. The limit the call would break, if any (quota first: waiting a minute
        does not help it)."""
        if limits.token_quota is not None and limits.quota_period is not None:
            if now >= client.period_end or client.period_kind != limits.quota_period:
                start, end = period_bounds(now, limits.quota_period)
                if client.period is None or start > client.period:  # a new period: from 0
                    client.period, client.period_tokens = start, 0
                client.period_end, client.period_kind = end, limits.quota_period
            end = client.period_end
            if client.period_tokens + cost > limits.token_quota:
                ends = datetime.fromtimestamp(end, UTC).isoformat()
                return Refusal(403, "tokenQuota",
                               f"client {name}: over its {limits.quota_period} tokenQuota of "
                               f"{limits.token_quota} tokens ({client.period_tokens} used, "
                               f"this call estimated at {cost}); the period ends at {ends}.",
                               retry_after=end - now, period_end=end)
        records = client.records
        if limits.rpm is not None and client.window_requests + 1 > limits.rpm:
            # room when enough of the oldest calls leave the window
            must_leave, wait = client.window_requests + 1 - limits.rpm, self.window
            for record in records:
                must_leave -= record.requests
                if must_leave <= 0:
                    wait = record.at + self.window - now
                    break
            return Refusal(429, "rpm", f"client {name}: over its rpm of {limits.rpm} requests "
                           f"per minute; retry after {wait:.3f} s.", retry_after=wait)
        if limits.tpm is not None and client.window_tokens + cost > limits.tpm:
            if cost > limits.tpm:
                return Refusal(400, "tpm", f"client {name}: this call is estimated at {cost} "
                               f"tokens, more than its whole tpm of {limits.tpm}; ask for "
                               "fewer max_tokens or a shorter prompt.")
            room_needed = client.window_tokens + cost - limits.tpm
            freed, wait = 0, self.window
            for record in records:
                freed += record.tokens
                if freed >= room_needed:
                    wait = record.at + self.window - now
                    break
            return Refusal(429, "tpm", f"client {name}: over its tpm of {limits.tpm} tokens "
                           f"per minute ({client.window_tokens} counted in the last minute, this "
                           f"call estimated at {cost}); retry after {wait:.3f} s.",
                           retry_after=wait)
        return None

    def _settle(self, ticket: Ticket, record: _Record, usage: Usage | None,
                served: bool) -> None:
        with self._lock:
            if ticket.settled:
                return
            ticket.settled = True
            client = self._clients[ticket.client]
            if not served:
                tokens = 0
            elif usage is None:
                tokens = record.tokens  # no usage: the estimate stands
            else:
                tokens = usage.total
                for c in (client.current, client.total):
                    c.prompt_tokens += usage.prompt
                    c.completion_tokens += usage.completion
            change = tokens - record.tokens
            if not change:
                return
            record.tokens = tokens
            if record.in_window:
                client.window_tokens += change
            if record.period is not None and record.period == client.period:
                client.period_tokens += change
            wake = self._share([ticket.client, record.at, change, 0, record.period])
        if wake:
            self._wake()

    def seed_quotas(self, totals: Mapping[tuple[str, float], int]) -> None:
        """Quota totals the replicas counted together (Redis), per (client, period start): a
        replica that starts or reconnects takes the larger of its own and the shared one."""
        with self._lock:
            now = self._clock()
            for (name, period), tokens in totals.items():
                client = self._client(name, now)
                if client.period is None or period > client.period:
                    client.period, client.period_tokens = period, tokens
                    client.period_end = 0.0
                elif period == client.period:
                    client.period_tokens = max(client.period_tokens, tokens)

    # --- metrics -----------------------------------------------------------------------------
    def close_intervals(self, now: float | None = None) -> list[dict[str, Any]]:
        """Close every client's metrics interval; the closed entries, one per client."""
        now = self._clock() if now is None else now
        closed = []
        with self._lock:
            for name, client in self._clients.items():
                entry = {"collectionTime": _iso(client.started_at),
                         "collectedMetrics": client.current.as_json()}
                client.history.append(entry)
                client.current = ClientCounters()
                client.started_at = now
                closed.append({"client": name, **entry})
        return closed

    def metrics_json(self, names: Iterable[str]) -> dict[str, Any]:
        """/metrics' clientMetrics: every client configured, and any other with usage."""
        with self._lock:
            copies = {name: (ClientCounters(**vars(c.current)), list(c.history))
                      for name, c in self._clients.items()}
        out = {}
        listed = list(names)
        for name in [*listed, *(n for n in copies if n not in set(listed))]:
            current, history = copies.get(name, (ClientCounters(), []))
            out[name] = {**current.as_json(),
                         "history": {str(i): entry for i, entry in enumerate(history)}}
        return out

    def raw(self) -> dict[str, dict[str, Any]]:
        """Every client's current interval (start, counters) and closed ones, for the
        cluster's sums (cluster/view.py)."""
        with self._lock:
            return {name: {"start": c.started_at, "current": c.current.as_json(),
                           "history": list(c.history)} for name, c in self._clients.items()}

    def totals(self) -> dict[str, ClientCounters]:
        """Every client's counts since the start (Prometheus counters)."""
        with self._lock:
            return {name: ClientCounters(**vars(c.total)) for name, c in self._clients.items()}

    def quota_use(self, limits: Mapping[str, ClientLimits]) -> list[tuple[str, str, int, int]]:
        """(client, period, tokens used in the current period, quota) of every client with a
        token quota in ``limits``, for Prometheus (a client that has not called yet used 0)."""
        now = self._clock()
        with self._lock:
            found = []
            for name, limit in limits.items():
                if limit.token_quota is None or limit.quota_period is None:
                    continue
                client = self._clients.get(name)
                current = (client is not None and client.period_kind == limit.quota_period
                           and client.period is not None and client.period <= now
                           < client.period_end)
                used = client.period_tokens if current and client is not None else 0
                found.append((name, limit.quota_period, used, limit.token_quota))
            return found

    def counted(self, name: str) -> tuple[int, int, int]:
        """Tokens and requests in ``name``'s last minute, and its quota period's tokens."""
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                return 0, 0, 0
            self._expire(client, self._clock())
            return client.window_tokens, client.window_requests, client.period_tokens


def _pool_name(pool: str) -> str:
    return "/lb" if pool == "/lb" else f"deployment {pool}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def merge_limits(own: Mapping[str, Any], defaults: Mapping[str, Any]) -> ClientLimits:
    """A client's limits: each field its own, else ``clientDefaults``' (schema field names)."""
    def pick(name: str) -> Any:
        return own[name] if name in own else defaults.get(name)

    quota, period = pick("tokenQuota"), pick("quotaPeriod")
    if "tokenQuota" in own:  # a quota and its period go together
        period = own.get("quotaPeriod")
    deployments = pick("deployments")
    return ClientLimits(tpm=pick("tpm"), rpm=pick("rpm"), token_quota=quota,
                        quota_period=period,
                        deployments=None if deployments is None else frozenset(deployments))
