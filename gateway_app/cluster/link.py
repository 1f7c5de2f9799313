"""The link to Redis: a publisher and a subscriber thread, and nothing on the path of a call.

- A call that changes shared state (a backend enters a cooldown) only appends a message to a
  bounded in-memory queue: when it is full the oldest message is dropped and counted, so a
  call never waits, whatever Redis does.
- The publisher thread sends what is queued (pipelined) and, every sync period, this
  replica's metrics (view.py). Soft state (a cooldown) is also kept in a Redis hash, the
  later end winning (a Lua script), for replicas that start or reconnect later.
- The subscriber thread owns the connection's life: it connects, subscribes to the events
  channel, reads the soft state already in Redis, then applies what other replicas publish.
  When Redis goes away (or the publisher finds it too slow), it reconnects with a growing
  pause (at most 2 s) and, once back, re-publishes what this replica knows: its cooldowns
  running and all its metrics.

Every Redis socket has the connect and read timeout API_GATEWAY_REDIS_TIMEOUT and redis-py
does not retry, so no thread waits long. A warning is logged once when Redis becomes
unreachable and once when it is back; ``apirouter_redis_connected`` shows it to Prometheus.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..routing.registry import CooldownEvent, ReadingEvent, Registry
from ..settings import Settings, redacted_url
from ..usage import ClientUsage
from .messages import (
    KINDS,
    ClientUsageDeltas,
    Cooldown,
    Message,
    Reading,
    ReloadAnswer,
    ReloadRequest,
    decode,
)
from .view import MetricsView

log = logging.getLogger("apirouter")

# messages waiting for the publisher; each is a few hundred bytes
QUEUE_LIMIT = 10_000
# Each client's tokens in a quota period, summed by every replica (HINCRBY of its deltas):
# hash PREFIX + QUOTA_KEY + period start (epoch), field = client name. Kept past the longest
# period (a month), so a replica that starts mid-period knows what was used.
QUOTA_KEY = "client-quota:"
QUOTA_TTL = 40 * 86400
# the longest pause between two attempts to reach Redis
MAX_BACKOFF = 2.0
# how many propagation times are kept for /instanceinfo's percentiles
LAG_SAMPLES = 1000
# seconds between two readings of one backend sent to the others: a reading changes with every
# answer, so sending each would cost Redis a publish per call; 20 a second per backend keeps
# the others' view within 50 ms (plus the count-down of their own calls in between)
READING_EVERY = 0.05

# Keep the message with the later end in a soft-state hash. Values are "END|JSON", so the
# script compares ends without decoding JSON.
KEEP_LATER = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local ends = tonumber(string.match(old, '^[^|]+'))
  if ends and ends >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
# Delete a field only while it still holds the value read (another replica may have just
# written a newer one).
DELETE_IF_SAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Applies another replica's message; True when it changed something here.
class ClusterUnavailable(RuntimeError):
    """The cluster's figures cannot be read now (Redis unreachable); the text says why."""


Handler = Callable[[Message], bool]


@dataclass
class _Pending:
    """A reload this replica asked for: the answers heard so far."""

    expected: int
    answers: list[ReloadAnswer] = field(default_factory=list)


def connect(settings: Settings) -> redis.Redis:
    """A client for API_GATEWAY_REDIS_URL: bounded timeouts, no retries, RESP2 (which every
    Redis and Azure Cache for Redis speak), answers decoded as text."""
    return redis.Redis.from_url(
        settings.redis_url, password=settings.redis_password or None,
        socket_timeout=settings.redis_timeout, socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 0), protocol=2, decode_responses=True,
        health_check_interval=0)


class ClusterLink:
    """One replica's connection to the others, through Redis."""

    def __init__(self, settings: Settings, registry: Registry, replica: str,
                 version: Callable[[], str]) -> None:
        self.settings = settings
        self.registry = registry
        self.replica = replica
        self.prefix = settings.redis_key_prefix
        self.channel = f"{self.prefix}events"
        self.address = redacted_url(settings.redis_url)
        self.redis = connect(settings)
        self._keep_later = self.redis.register_script(KEEP_LATER)
        self._delete_if_same = self.redis.register_script(DELETE_IF_SAME)
        self.view = MetricsView(registry, replica, self.prefix,
                                settings.metrics_interval_seconds, settings.metrics_history,
                                settings.redis_sync_seconds, version)
        self.handlers: dict[str, Handler] = {Cooldown.kind: self._apply_cooldown,
                                             Reading.kind: self._apply_reading,
                                             ReloadAnswer.kind: self._reload_answered}
        self._readings_sent: dict[str, float] = {}  # backend id -> monotonic time
        self._state: bool | None = None  # None: not tried yet
        self.dropped = 0  # messages dropped from a full queue or a failed send
        self.outages = 0
        self.since = time.time()  # of the current state, connected or not
        self._queue: deque[Message] = deque()
        self._wake = threading.Condition()  # guards _queue and _sync_now
        self._sync_now = False
        self._usage: ClientUsage | None = None  # per-client counts shared with the others
        self._usage_waiting = False  # guarded by _wake: deltas to take from _usage
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._reread = threading.Event()  # read the soft state again (after a reload)
        self._pending: dict[str, _Pending] = {}
        self._pending_lock = threading.Condition()  # guards _pending
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)  # seconds, cooldowns applied
        self._threads = [threading.Thread(target=self._subscribe_loop, daemon=True,
                                          name="redis-subscriber"),
                         threading.Thread(target=self._publish_loop, daemon=True,
                                          name="redis-publisher")]
        registry.cooldown_listeners.append(self._cooldown_entered)
        registry.reading_listeners.append(self._reading_taken)

    # --- life ------------------------------------------------------------------------------
    def start(self, wait: float | None = None) -> None:
        """Start both threads; wait (bounded) for the first connection attempt, so that a
        replica that starts late knows the running cooldowns before it serves."""
        for thread in self._threads:
            thread.start()
        self._first_attempt.wait(2 * self.settings.redis_timeout + 0.5 if wait is None
                                 else wait)

    def stop(self, final_write: bool = False) -> None:
        """Stop the threads; with ``final_write``, write this replica's metrics once more
        (after a graceful stop closed its last interval)."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(2 * self.settings.redis_timeout + 1.0)
        if final_write and self.connected:
            try:
                self.write_metrics()
            except (redis.RedisError, OSError) as exc:
                log.warning("could not write the last metrics to Redis (%s)", type(exc).__name__)
        self.redis.close()

    @property
    def connected(self) -> bool:
        return bool(self._state)

    def _set_connected(self, connected: bool, reason: BaseException | None = None) -> None:
        if connected == self._state:
            return
        first, self._state = self._state is None, connected
        down_for, self.since = time.time() - self.since, time.time()
        if connected and first:
            log.info("Redis at %s reachable: sharing state with the other replicas as "
                     "replica %s", self.address, self.replica)
        elif connected:
            log.warning("Redis at %s reachable again after %.1f s: state re-published",
                        self.address, down_for)
        else:
            self.outages += 1
            why = f"{type(reason).__name__}: {reason}" if reason else "unknown"
            log.warning("Redis at %s unreachable (%s): this replica carries on with its own "
                        "state and retries; nothing is shared until it is back",
                        self.address, why)

    # --- what calls and routes hand over -----------------------------------------------------
    def publish(self, message: Message) -> None:
        """Queue a message for the other replicas; never blocks (the oldest is dropped when
        the queue is full)."""
        with self._wake:
            if len(self._queue) >= QUEUE_LIMIT:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(message)
            self._wake.notify()

    def _cooldown_entered(self, event: CooldownEvent) -> None:
        """Registry listener, on the calling thread after its lock: queue, nothing more."""
        self.publish(Cooldown(self.replica, event.backend, event.until, event.reason,
                              event.streak, event.at))

    def _reading_taken(self, event: ReadingEvent) -> None:
        """Registry listener: queue the reading, at most one per backend every
        :data:`READING_EVERY` seconds, so Redis traffic is bounded whatever the call rate."""
        now = time.monotonic()
        if now - self._readings_sent.get(event.backend, -READING_EVERY) < READING_EVERY:
            return
        self._readings_sent[event.backend] = now  # a race costs one more message, no harm
        self.publish(Reading(self.replica, event.backend, event.requests, event.tokens,
                             event.utilization, event.read_at, event.as_of, event.until))

    def share_usage(self, usage: ClientUsage) -> None:
        """Publish ``usage``'s deltas as they come and apply the other replicas'."""
        self._usage = usage
        self.view.usage = usage
        self.handlers[ClientUsageDeltas.kind] = self._apply_usage
        usage.on_pending = self._usage_pending

    def _usage_pending(self) -> None:
        """On a call's thread, after the usage lock: wake the publisher, nothing more."""
        with self._wake:
            self._usage_waiting = True
            self._wake.notify()

    def _apply_usage(self, message: Message) -> bool:
        assert isinstance(message, ClientUsageDeltas) and self._usage is not None
        self._usage.apply_remote(message.deltas)
        return True

    def request_reload(self, wait: float) -> dict[str, Any]:
        """Ask every other replica to re-read its own configuration file; wait up to
        ``wait`` seconds for their answers (0: do not wait). What they answered."""
        if not self.connected:
            return {"connected": False, "asked": 0, "applied": 0, "failed": []}
        request = uuid.uuid4().hex
        expected = 0
        if wait > 0:
            try:
                expected = len(self.live_replicas() - {self.replica})
            except (redis.RedisError, OSError):
                expected = 0
        with self._pending_lock:
            self._pending[request] = _Pending(expected)
        self.publish(ReloadRequest(self.replica, request))
        deadline = time.monotonic() + wait
        with self._pending_lock:
            pending = self._pending[request]
            while len(pending.answers) < expected and time.monotonic() < deadline:
                self._pending_lock.wait(deadline - time.monotonic())
            del self._pending[request]
        return {"connected": True, "asked": expected,
                "applied": sum(a.applied for a in pending.answers),
                "failed": [{"replica": a.origin, "reason": a.error}
                           for a in pending.answers if not a.applied],
                "answers": [{"replica": a.origin, "applied": a.applied,
                             "configVersion": a.version} for a in pending.answers]}

    def _reload_answered(self, message: Message) -> bool:
        assert isinstance(message, ReloadAnswer)
        with self._pending_lock:
            pending = self._pending.get(message.request)
            if pending is None:
                return False
            pending.answers.append(message)
            self._pending_lock.notify_all()
        return True

    def live_replicas(self) -> set[str]:
        """Replicas that wrote their metrics recently (this one included)."""
        now = time.time()
        return set(self.redis.zrangebyscore(self.view.replicas_key,
                                            now - self.view.live_within, "+inf"))

    def write_metrics(self) -> None:
        """Write this replica's metrics now (the cluster metrics route does, before reading,
        so that its own part is current)."""
        pipe = self.redis.pipeline(transaction=False)
        self.view.stage(pipe)
        pipe.execute()

    def cluster_metrics(self) -> dict[str, Any]:
        """The cluster's sums, read from Redis; ClusterUnavailable when it cannot be."""
        if not self.connected:
            raise ClusterUnavailable(f"Redis at {self.address} is not reachable")
        try:
            self.write_metrics()
            return self.view.summed(*self.view.read(self.redis))
        except (redis.RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis at {self.address} failed: "
                                     f"{type(exc).__name__}") from None

    def read_state_soon(self) -> None:
        """Apply the soft state in Redis again (a reload may list backends it names)."""
        self._reread.set()

    # --- the other replicas' messages --------------------------------------------------------
    def _apply_cooldown(self, message: Message) -> bool:
        assert isinstance(message, Cooldown)
        return self.registry.apply_cooldown(message.backend, message.until, message.reason,
                                            message.streak)

    def _apply_reading(self, message: Message) -> bool:
        assert isinstance(message, Reading)
        return self.registry.apply_reading(ReadingEvent(
            message.backend, message.requests, message.tokens, message.utilization,
            message.read_at, message.as_of, message.until))

    def _dispatch(self, text: str, from_state: bool = False) -> None:
        try:
            message = decode(text)
        except (ValueError, TypeError) as exc:
            log.warning("ignoring a malformed message from Redis (%s)", type(exc).__name__)
            return
        if message is None or (message.origin == self.replica and not from_state):
            return
        handler = self.handlers.get(message.kind)
        if handler is None:
            return
        try:
            changed = handler(message)
        except Exception:  # one bad message must not stop the subscriber
            log.exception("applying a %s message from replica %s failed", message.kind,
                          message.origin)
            return
        if changed and isinstance(message, Cooldown) and not from_state:
            self._lags.append(max(0.0, time.time() - message.at))

    def propagation(self) -> dict[str, Any]:
        """How long cooldowns of other replicas took to be applied here (wall clocks: on
        different hosts this includes their skew)."""
        lags = sorted(self._lags)
        if not lags:
            return {"count": 0}

        def at(share: float) -> float:
            return round(lags[min(len(lags) - 1, int(share * len(lags)))] * 1000, 3)

        return {"count": len(lags), "p50Ms": at(0.5), "p99Ms": at(0.99),
                "maxMs": round(lags[-1] * 1000, 3)}

    # --- the threads -------------------------------------------------------------------------
    def _subscribe_loop(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                # connections pooled before an outage may be dead: open new ones
                self.redis.connection_pool.disconnect(inuse_connections=False)
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)  # first, so nothing published after is missed
                self._read_state()
                self._read_quotas()
                self.view.forget_written()
                self._set_connected(True)
                self._first_attempt.set()
                for event in self.registry.active_cooldowns():  # what this replica knows
                    self._cooldown_entered(event)
                with self._wake:
                    self._sync_now = True
                    self._wake.notify()
                pause = 0.1
                while not self._stop.is_set() and self.connected:
                    if self._reread.is_set():
                        self._reread.clear()
                        self._read_state()
                    message = pubsub.get_message(timeout=0.25)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except (redis.RedisError, OSError) as exc:
                self._set_connected(False, exc)
            finally:
                self._first_attempt.set()
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()
            if not self._stop.is_set():
                self._stop.wait(pause)
                pause = min(pause * 2, MAX_BACKOFF)

    def _read_state(self) -> None:
        """Apply the soft state other replicas keep in Redis; clear what has expired."""
        now = time.time()
        for hash_name in {cls.state_hash for cls in KINDS.values() if cls.state_hash}:
            key = f"{self.prefix}{hash_name}"
            for name, value in self.redis.hgetall(key).items():
                ends, _, text = value.partition("|")
                try:
                    expired = float(ends) <= now
                except ValueError:
                    expired = True
                if expired:
                    self._delete_if_same(keys=[key], args=[name, value])
                else:
                    self._dispatch(text, from_state=True)

    def _read_quotas(self) -> None:
        """Seed the clients' quota totals with what every replica counted (QUOTA_KEY)."""
        if self._usage is None:
            return
        totals: dict[tuple[str, float], int] = {}
        for key in self.redis.scan_iter(match=f"{self.prefix}{QUOTA_KEY}*", count=100):
            try:
                period = float(key.rsplit(":", 1)[1])
            except ValueError:
                continue
            for name, tokens in self.redis.hgetall(key).items():
                totals[name, period] = int(tokens)
        if totals:
            self._usage.seed_quotas(totals)

    def _publish_loop(self) -> None:
        period = self.settings.redis_sync_seconds
        next_sync = time.monotonic()
        while not self._stop.is_set():
            with self._wake:
                while not self._stop.is_set() and not (
                        self.connected and (self._queue or self._sync_now
                                            or self._usage_waiting
                                            or time.monotonic() >= next_sync)):
                    timeout = next_sync - time.monotonic() if self.connected else 0.25
                    self._wake.wait(max(0.01, min(timeout, 0.25)))
                if self._stop.is_set():
                    return
                batch = list(self._queue)
                self._queue.clear()
                if self._usage_waiting and self._usage is not None:
                    self._usage_waiting = False
                    deltas = self._usage.take_deltas()  # its own lock, briefly
                    if deltas:
                        batch.append(ClientUsageDeltas(self.replica, deltas))
                sync = self._sync_now or time.monotonic() >= next_sync
                self._sync_now = False
            try:
                pipe = self.redis.pipeline(transaction=False)
                for message in batch:
                    self._stage(pipe, message)
                if sync:
                    self.view.stage(pipe)
                pipe.execute()
            except (redis.RedisError, OSError) as exc:
                self.dropped += len(batch)
                self.view.forget_written()
                self._set_connected(False, exc)  # the subscriber reconnects
            if sync:
                next_sync = time.monotonic() + period

    def _stage(self, pipe: Any, message: Message) -> None:
        text = message.encode()
        if isinstance(message, ClientUsageDeltas):  # quota totals outlive the processes
            for name, _at, tokens, _requests, period in message.deltas:
                if period is not None and tokens:
                    key = f"{self.prefix}{QUOTA_KEY}{period!r}"
                    pipe.hincrby(key, name, tokens)
                    pipe.expire(key, QUOTA_TTL)
        if message.state_hash:
            ends = message.expires()
            self._keep_later(keys=[f"{self.prefix}{message.state_hash}"],
                             args=[message.state_field(), repr(ends), f"{ends!r}|{text}"],
                             client=pipe)
        pipe.publish(self.channel, text)


class LinkCollector(Collector):
    """The link's state for Prometheus, read at scrape time."""

    def __init__(self, link: ClusterLink) -> None:
        self.link = link

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily("apirouter_redis_connected",
                                      "1 while the replica reaches Redis (shared state)")
        connected.add_metric([], 1.0 if self.link.connected else 0.0)
        dropped = CounterMetricFamily("apirouter_redis_dropped_messages",
                                      "Messages to other replicas dropped (queue full or "
                                      "Redis unreachable)")
        dropped.add_metric([], self.link.dropped)
        outages = CounterMetricFamily("apirouter_redis_outages",
                                      "Times Redis became unreachable")
        outages.add_metric([], self.link.outages)
        yield from (connected, dropped, outages)
