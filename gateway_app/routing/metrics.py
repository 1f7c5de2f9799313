"""Per-endpoint counters for the current interval, and the bounded history of closed ones.

These objects are not thread-safe by themselves: the registry mutates and reads them only while
holding its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from .sse import Usage

# Azure grants 6 requests per minute for every 1,000 tokens per minute of quota.
REQUESTS_PER_KTOKENS = 6


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

    def add(self, other: IntervalCounters) -> None:
        """Add another process's counters of the same interval (the cluster's view)."""
        self.api_calls += other.api_calls
        self.failed_calls += other.failed_calls
        self.tokens += other.tokens
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency_ms += other.latency_ms

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntervalCounters:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> IntervalCounters:
        """The counters a closed history entry was made from (whole numbers exactly; the
        latency sum up to rounding)."""
        metrics = entry["collectedMetrics"]
        calls = int(metrics["noOfApiCalls"])
        split = metrics.get("tokenSplit") or {}
        return cls(api_calls=calls, failed_calls=int(metrics["noOfFailedCalls"]),
                   tokens=round(metrics["throughput"]["kTokensPerWindow"] * 1000),
                   prompt_tokens=int(split.get("promptTokens", 0)),
                   completion_tokens=int(split.get("completionTokens", 0)),
                   latency_ms=metrics["latency"]["avgResponseTimeMsec"] * calls)

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
            },
        }


class EndpointMetrics:
    """The current interval of one endpoint plus up to ``history_size`` closed intervals."""

    def __init__(self, history_size: int, started_at: float) -> None:
        self.current = IntervalCounters()
        self.started_at = started_at
        self.history: deque[dict[str, Any]] = deque(maxlen=history_size)

    def success(self, latency_ms: float, usage: Usage | None) -> None:
        c = self.current
        c.api_calls += 1
        c.latency_ms += latency_ms
        if usage is not None:
            c.tokens += usage.total
            c.prompt_tokens += usage.prompt
            c.completion_tokens += usage.completion

    def failure(self) -> None:
        self.current.failed_calls += 1

    def close_interval(self, now: float) -> dict[str, Any]:
        """Push the current interval to the history (oldest dropped) and start a new one."""
        entry = self.current.history_entry(self.started_at)
        self.history.append(entry)
        self.current = IntervalCounters()
        self.started_at = now
        return entry

    def copy(self) -> tuple[IntervalCounters, list[dict[str, Any]]]:
        """The current counters and the history, copied (closed entries are never changed,
        so they are shared), for building JSON outside the registry's lock."""
        return replace(self.current), list(self.history)


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
