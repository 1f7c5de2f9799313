"""Per-endpoint counters for the current interval, and the bounded history of closed ones.

These objects are not thread-safe by themselves: the registry mutates and reads them only while
holding its lock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from .sse import Usage

# Azure grants 6 requests per minute for every 1,000 tokens per minute of quota.
REQUESTS_PER_KTOKENS = 6

# The figures of one minute bucket, in this order: calls answered, failed calls, their prompt
# and completion tokens (what the endpoint reported); then, on a pool's first entry only, the
# pool's demand: client calls and their estimated tokens (Call.cost), served or not, and the
# unmet part of it (calls the gateway answered 429/503 itself, every backend busy).
MINUTE_FIELDS = ("calls", "failedCalls", "promptTokens", "completionTokens",
                 "demandCalls", "demandTokens", "unmetCalls", "unmetTokens")
CALLS, FAILED, PROMPT, COMPLETION, DEMAND_CALLS, DEMAND_TOKENS, UNMET_CALLS, UNMET_TOKENS = (
    range(len(MINUTE_FIELDS)))


def iso_time(epoch: float) -> str:
    """UTC time as ISO 8601 with milliseconds, the format of every timestamp we show."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


@dataclass
class IntervalCounters:
    api_calls: int = 0  # answered by the endpoint and relayed to the client
    failed_calls: int = 0  # throttled (429), faults (5xx, connection errors, timeouts)
    tokens: int = 0  # total_tokens reported by the endpoint
    prompt_tokens: int = 0  # the input and output parts of them, for capacity planning
    completion_tokens: int = 0
    latency_ms: float = 0.0  # summed over api_calls
    # Azure's quotas and PTUs work per minute, whatever API_GATEWAY_METRICS_CINTERVAL is: the
    # same figures per minute bucket (index: epoch seconds // bucket_seconds, so the buckets of
    # every process and interval line up). An interval of N minutes holds at most N + 1.
    minutes: dict[int, list[int]] = field(default_factory=dict)
    bucket_seconds: float = 60.0  # shorter only to test against a simulator's short window

    def bucket(self, now: float) -> list[int]:
        """The figures of the minute bucket that holds ``now``, created empty if needed."""
        index = int(now // self.bucket_seconds)
        figures = self.minutes.get(index)
        if figures is None:
            figures = self.minutes[index] = [0] * len(MINUTE_FIELDS)
        return figures

    def add(self, other: IntervalCounters) -> None:
        """Add another process's counters of the same interval (the cluster's view)."""
        self.api_calls += other.api_calls
        self.failed_calls += other.failed_calls
        self.tokens += other.tokens
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency_ms += other.latency_ms
        self.bucket_seconds = other.bucket_seconds
        for index, figures in other.minutes.items():
            mine = self.minutes.setdefault(index, [0] * len(MINUTE_FIELDS))
            for n, value in enumerate(figures):
                mine[n] += value

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntervalCounters:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        # JSON (the cluster's copies) turns the bucket indexes into strings
        values["minutes"] = {int(k): list(v) for k, v in values.get("minutes", {}).items()}
        return cls(**values)

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> IntervalCounters:
        """The counters a closed history entry was made from (whole numbers exactly; the
        latency sum up to rounding)."""
        metrics = entry["collectedMetrics"]
        calls = int(metrics["noOfApiCalls"])
        split = metrics.get("tokenSplit") or {}
        per_minute = metrics.get("perMinute") or {}
        seconds = float(per_minute.get("seconds", 60.0))
        minutes = {int(datetime.fromisoformat(m["start"]).timestamp() // seconds):
                   [int(m.get(name, 0)) for name in MINUTE_FIELDS]
                   for m in per_minute.get("minutes", ())}
        return cls(api_calls=calls, failed_calls=int(metrics["noOfFailedCalls"]),
                   tokens=round(metrics["throughput"]["kTokensPerWindow"] * 1000),
                   prompt_tokens=int(split.get("promptTokens", 0)),
                   completion_tokens=int(split.get("completionTokens", 0)),
                   latency_ms=metrics["latency"]["avgResponseTimeMsec"] * calls,
                   minutes=minutes, bucket_seconds=seconds)

    def history_entry(self, started_at: float) -> dict[str, Any]:
        """The original's shape of one closed interval."""
        k_tokens = self.tokens / 1000
        per_call = self.tokens / self.api_calls if self.api_calls else 0.0
        return {
            "collectionTime": iso_time(started_at),
            "collectedMetrics": {
                "noOfApiCalls": self.api_calls,
                "noOfFailedCalls": self.failed_calls,
                "throughput": {
                    "kTokensPerWindow": k_tokens,
                    "requestsPerWindow": k_tokens * REQUESTS_PER_KTOKENS,
                    "avgTokensPerCall": per_call,
                    "avgRequestsPerCall": per_call * REQUESTS_PER_KTOKENS / 1000,
                },
                "latency": {
                    "avgResponseTimeMsec": (self.latency_ms / self.api_calls
                                            if self.api_calls else 0.0),
                },
                # beyond the original: the split PTU sizing needs (output weighs more)
                "tokenSplit": {"promptTokens": self.prompt_tokens,
                               "completionTokens": self.completion_tokens},
                # beyond the original: the same per minute, and the pool's demand (only the
                # minutes that saw any call; the others of the interval were all zero)
                "perMinute": {
                    "seconds": self.bucket_seconds,
                    "minutes": [{"start": iso_time(index * self.bucket_seconds),
                                 **dict(zip(MINUTE_FIELDS, figures, strict=True))}
                                for index, figures in sorted(self.minutes.items())],
                },
            },
        }


class EndpointMetrics:
    """The current interval of one endpoint plus up to ``history_size`` closed intervals."""

    def __init__(self, history_size: int, started_at: float,
                 bucket_seconds: float = 60.0) -> None:
        self.bucket_seconds = bucket_seconds
        self.current = IntervalCounters(bucket_seconds=bucket_seconds)
        self.started_at = started_at
        self.history: deque[dict[str, Any]] = deque(maxlen=history_size)

    def success(self, latency_ms: float, usage: Usage | None,
                now: float | None = None) -> None:
        c = self.current
        c.api_calls += 1
        c.latency_ms += latency_ms
        minute = c.bucket(time.time() if now is None else now)
        minute[CALLS] += 1
        if usage is not None:
            c.tokens += usage.total
            c.prompt_tokens += usage.prompt
            c.completion_tokens += usage.completion
            minute[PROMPT] += usage.prompt
            minute[COMPLETION] += usage.completion

    def failure(self, now: float | None = None) -> None:
        self.current.failed_calls += 1
        self.current.bucket(time.time() if now is None else now)[FAILED] += 1

    def demand(self, cost: int, served: bool, now: float | None = None) -> None:
        """A client call of the pool this entry heads, with its estimated tokens."""
        minute = self.current.bucket(time.time() if now is None else now)
        minute[DEMAND_CALLS] += 1
        minute[DEMAND_TOKENS] += cost
        if not served:
            minute[UNMET_CALLS] += 1
            minute[UNMET_TOKENS] += cost

    def close_interval(self, now: float) -> dict[str, Any]:
        """Push the current interval to the history (oldest dropped) and start a new one."""
        entry = self.current.history_entry(self.started_at)
        self.history.append(entry)
        self.current = IntervalCounters(bucket_seconds=self.bucket_seconds)
        self.started_at = now
        return entry

    def copy(self) -> tuple[IntervalCounters, list[dict[str, Any]]]:
        """The current counters and the history, copied (closed entries are never changed,
        so they are shared), for building JSON outside the registry's lock."""
        current = replace(self.current,
                          minutes={k: list(v) for k, v in self.current.minutes.items()})
        return current, list(self.history)


def metrics_json(current: IntervalCounters, history: Sequence[dict[str, Any]]
                 ) -> dict[str, Any]:
    """The original's ``metrics`` object of one row; history "0" is the oldest kept."""
    return {
        "apiCalls": current.api_calls,
        "failedCalls": current.failed_calls,
        "totalCalls": current.api_calls + current.failed_calls,
        "kInferenceTokens": current.tokens / 1000,
        "history": {str(i): entry for i, entry in enumerate(history)},
    }
