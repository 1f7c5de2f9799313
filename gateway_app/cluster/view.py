"""Each replica's metrics in Redis, and the cluster's sum of them (``/metrics?scope=cluster``).

Every replica writes, every ``API_GATEWAY_REDIS_SYNC_SECONDS``:

- ``{prefix}replica:{name}``: a JSON document with its name, when it wrote, its configuration
  version, the start of its current interval and per (pool, endpoint) that interval's raw
  counters, and its instance totals;
- ``{prefix}history:{name}``: a hash of its closed intervals, one field per interval start,
  each the raw counters per (pool, endpoint); only intervals not yet written are sent;
- its name in the sorted set ``{prefix}replicas``, scored by when it wrote.

All expire after the history's span (interval x history count), so a replica that is gone
stops counting once its intervals would have left the history anyway. With Redis configured,
intervals are aligned to wall-clock multiples of the interval (collector.aligned_start), so
the replicas' entries share their collectionTime and are added up per collectionTime.
Counters only: deployment URLs, pool and replica names, numbers; never a key.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..routing.metrics import IntervalCounters, iso_time, metrics_json
from ..routing.registry import DEFAULT_POOL, Registry
from ..usage import ClientCounters, ClientUsage

Row = tuple[str, str]  # (pool, endpoint)


def _field(start: float) -> str:
    return f"{start:.3f}"


def _start_of(entry: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(entry["collectionTime"]).timestamp()


@dataclass
class _Sums:
    """One (pool, endpoint) of the cluster: the current interval and closed ones, summed."""

    priority: int
    weight: float
    current: IntervalCounters = field(default_factory=IntervalCounters)
    history: dict[float, IntervalCounters] = field(default_factory=dict)


class MetricsView:
    """Writes this replica's metrics to Redis and reads the cluster's back."""

    def __init__(self, registry: Registry, replica: str, prefix: str, interval: float,
                 history_size: int, sync_seconds: float, version: Callable[[], str]) -> None:
        self.registry = registry
        self.replica = replica
        self.prefix = prefix
        self.interval = interval
        self.history_size = history_size
        self.version = version
        # how long what a replica wrote stays: the history's span, plus a minute of slack
        self.horizon = interval * (history_size + 1) + 60.0
        # a replica that wrote within this is "live" (it writes every sync_seconds)
        self.live_within = 3 * sync_seconds + 2.0
        self._lock = threading.Lock()  # guards _written, _newest and their clients' twins
        self._written: set[str] = set()  # history fields already in Redis
        self._newest = float("-inf")  # start of the newest of them
        # per-client figures (usage.py), when client keys exist; in their own hash, so that
        # a replica of an older version reading the endpoints' history finds only rows
        self.usage: ClientUsage | None = None
        self._clients_written: set[str] = set()
        self._clients_newest = float("-inf")

    @property
    def replicas_key(self) -> str:
        return f"{self.prefix}replicas"

    def _doc_key(self, name: str) -> str:
        return f"{self.prefix}replica:{name}"

    def _history_key(self, name: str) -> str:
        return f"{self.prefix}history:{name}"

    def _client_history_key(self, name: str) -> str:
        return f"{self.prefix}client-history:{name}"

    def forget_written(self) -> None:
        """Redis may have lost everything (a restart): write every closed interval again."""
        with self._lock:
            self._written.clear()
            self._newest = float("-inf")
            self._clients_written.clear()
            self._clients_newest = float("-inf")

    def stage(self, pipe: Any) -> None:
        """Queue this replica's writes on a Redis pipeline (executed by the caller)."""
        figures = self.registry.counters()
        now = time.time()
        entries = figures["entries"]
        doc = {"name": self.replica, "lastSeen": now, "configVersion": self.version(),
               "interval": self.interval,
               "start": max((e["start"] for e in entries), default=now),
               "entries": [{"pool": e["pool"], "endpoint": e["endpoint"],
                            "priority": e["priority"], "weight": e["weight"],
                            "current": e["current"].as_dict()} for e in entries],
               "successApiCalls": figures["successApiCalls"],
               "failedApiCalls": figures["failedApiCalls"]}
        closed: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self._lock:
            newest = self._newest
        for e in entries:
            for entry in reversed(e["history"]):  # newest first: stop at what was written
                start = _start_of(entry)
                if start <= newest:
                    break
                closed[_field(start)].append(
                    {"pool": e["pool"], "endpoint": e["endpoint"], "priority": e["priority"],
                     "weight": e["weight"],
                     "counters": IntervalCounters.from_entry(entry).as_dict()})
        with self._lock:
            new = {k: v for k, v in closed.items() if k not in self._written}
            self._written.update(new)
            self._newest = max([self._newest, *(float(k) for k in new)])
        ttl = max(1, round(self.horizon))
        if self.usage is not None:
            self._stage_clients(pipe, doc, ttl)
        pipe.set(self._doc_key(self.replica), json.dumps(doc, separators=(",", ":")), ex=ttl)
        pipe.zadd(self.replicas_key, {self.replica: now})
        pipe.zremrangebyscore(self.replicas_key, "-inf", now - self.horizon)
        if new:
            pipe.hset(self._history_key(self.replica),
                      mapping={k: json.dumps(v, separators=(",", ":")) for k, v in new.items()})
        pipe.expire(self._history_key(self.replica), ttl)

    def _stage_clients(self, pipe: Any, doc: dict[str, Any], ttl: int) -> None:
        """Each client's current interval in ``doc``; its closed ones not yet written, in
        ``{prefix}client-history:{name}`` (one field per interval start: name -> counters)."""
        assert self.usage is not None
        clients = self.usage.raw()
        doc["clients"] = {name: {"start": c["start"], "current": c["current"]}
                          for name, c in clients.items()}
        with self._lock:
            newest = self._clients_newest
        closed: dict[str, dict[str, Any]] = defaultdict(dict)
        for name, c in clients.items():
            for entry in reversed(c["history"]):
                start = _start_of(entry)
                if start <= newest:
                    break
                closed[_field(start)][name] = entry["collectedMetrics"]
        with self._lock:
            new = {k: v for k, v in closed.items() if k not in self._clients_written}
            self._clients_written.update(new)
            self._clients_newest = max([self._clients_newest, *(float(k) for k in new)])
        key = self._client_history_key(self.replica)
        if new:
            pipe.hset(key, mapping={k: json.dumps(v, separators=(",", ":"))
                                    for k, v in new.items()})
        pipe.expire(key, ttl)

    # --- the cluster's view ----------------------------------------------------------------
    def read(self, client: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every replica's document and closed intervals, from Redis: (documents, histories)."""
        now = time.time()
        names = client.zrangebyscore(self.replicas_key, now - self.horizon, "+inf")
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.get(self._doc_key(name))
            pipe.hgetall(self._history_key(name))
            pipe.hgetall(self._client_history_key(name))
        answers = pipe.execute()
        docs, histories = [], []
        for doc, history, clients in zip(answers[::3], answers[1::3], answers[2::3],
                                         strict=True):
            if doc is None:
                continue
            doc = json.loads(doc)
            doc["clientHistory"] = {float(k): json.loads(v) for k, v in (clients or {}).items()}
            docs.append(doc)
            histories.append({float(k): json.loads(v) for k, v in (history or {}).items()})
        return docs, histories

    def summed(self, docs: list[dict[str, Any]], histories: list[dict[float, Any]]
               ) -> dict[str, Any]:
        """The sums of ``read``'s answer, in the shape of /metrics (the rows, the totals and
        the list of replicas). Rows follow this replica's configuration, then any (pool,
        endpoint) only other replicas list."""
        now = time.time()
        current_start = max((d["start"] for d in docs), default=now)
        sums: dict[Row, _Sums] = {}

        def sums_of(row: Mapping[str, Any]) -> _Sums:
            key = (row["pool"], row["endpoint"])
            if key not in sums:
                sums[key] = _Sums(row["priority"], row.get("weight", 1.0))
            return sums[key]

        for doc, history in zip(docs, histories, strict=True):
            # the current interval of a replica that has not written its closing yet (or
            # stopped before it could) is a closed interval of the cluster
            late = doc["start"] < current_start - 1e-6 and doc["start"] not in history
            for row in doc["entries"]:
                target = sums_of(row)
                counters = IntervalCounters.from_dict(row["current"])
                if late:
                    target.history.setdefault(doc["start"], IntervalCounters()).add(counters)
                elif doc["start"] >= current_start - 1e-6:
                    target.current.add(counters)
            for start, rows in history.items():
                for row in rows:
                    sums_of(row).history.setdefault(start, IntervalCounters()).add(
                        IntervalCounters.from_dict(row["counters"]))

        def render(key: Row, with_weight: bool) -> dict[str, Any]:
            s = sums[key]
            starts = sorted(s.history)[-self.history_size:]
            history = [s.history[t].history_entry(t) for t in starts]
            return {"endpoint": key[1], "priority": s.priority,
                    **({"weight": s.weight} if with_weight else {}),
                    "metrics": metrics_json(s.current, history)}

        own = {(e.pool, e.url): e for e in self.registry.current.entries()}
        for key, entry in own.items():  # this replica's order and weights for its own rows
            if key in sums:
                sums[key].priority, sums[key].weight = entry.priority, entry.weight
        order = [k for k in own if k in sums] + sorted(k for k in sums if k not in own)
        pools: dict[str, list[dict[str, Any]]] = {}
        for key in order:
            if key[0] != DEFAULT_POOL:
                pools.setdefault(key[0], []).append(render(key, True))
        clients = self._client_sums(docs, current_start)
        served = sum(d["successApiCalls"] for d in docs)
        unserved = sum(d["failedApiCalls"] for d in docs)
        return {
            "endpointMetrics": [render(k, False) for k in order if k[0] == DEFAULT_POOL],
            "deploymentMetrics": pools,
            "successApiCalls": served,
            "failedApiCalls": unserved,
            "totalApiCalls": served + unserved,
            "replicas": [{"name": d["name"], "lastSeen": iso_time(d["lastSeen"]),
                          "live": now - d["lastSeen"] <= self.live_within,
                          "configVersion": d["configVersion"]}
                         for d in sorted(docs, key=lambda d: d["name"])],
            "currentIntervalStart": iso_time(current_start),
            **({"clientMetrics": clients} if clients is not None else {}),
        }

    def _client_sums(self, docs: list[dict[str, Any]], current_start: float
                     ) -> dict[str, Any] | None:
        """clientMetrics summed over the replicas (None when none counts clients); the
        current intervals as for the endpoints (a late one is a closed interval)."""
        if self.usage is None and not any("clients" in d for d in docs):
            return None
        current: dict[str, ClientCounters] = defaultdict(ClientCounters)
        history: dict[str, dict[float, ClientCounters]] = defaultdict(dict)
        for doc in docs:
            closed = doc.get("clientHistory", {})
            for start, figures in closed.items():
                for name, counters in figures.items():
                    history[name].setdefault(start, ClientCounters()).add(
                        ClientCounters.from_json(counters))
            for name, c in doc.get("clients", {}).items():
                counters = ClientCounters.from_json(c["current"])
                if c["start"] >= current_start - 1e-6:
                    current[name].add(counters)
                elif c["start"] not in closed:
                    history[name].setdefault(c["start"], ClientCounters()).add(counters)
        out = {}
        for name in sorted({*current, *history}):
            starts = sorted(history[name])[-self.history_size:]
            out[name] = {**current[name].as_json(), "history": {
                str(i): {"collectionTime": iso_time(t),
                         "collectedMetrics": history[name][t].as_json()}
                for i, t in enumerate(starts)}}
        return out
