"""Per-deployment rate limits: tokens and requests over a sliding window, thread-safe.

Azure admits a call when both budgets have room for it, counting the call's estimated prompt
tokens plus its ``max_tokens`` at admission (not the tokens it finally produces). Azure itself
evaluates over short 1 s or 10 s slices; the simulator keeps it simple and exact: every
admitted call is remembered with its time and cost for ``window_seconds`` (60 by default, so
``tpm`` and ``rpm`` are per minute), and a call is refused while the calls of the last window
leave no room. The wait it reports is exact: the moment enough old calls leave the window.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """The answer to one admission request."""

    admitted: bool
    remaining_requests: int
    remaining_tokens: int
    retry_after: float = 0.0  # seconds until the call would fit; 0 when admitted
    limit: str = ""  # "tokens" or "requests": which budget refused the call


class SlidingWindowLimiter:
    """Token and request budgets over the last ``window`` seconds."""

    def __init__(
        self,
        tokens: int,
        requests: int,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tokens < 1 or requests < 1 or window <= 0:
            raise ValueError("tokens and requests must be >= 1 and window > 0")
        self.tokens = tokens
        self.requests = requests
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: deque[tuple[float, int]] = deque()  # (admitted at, cost), oldest first
        self._used = 0  # sum of the costs in _calls

    def acquire(self, cost: int) -> Decision:
        """Admit a call of ``cost`` tokens, or refuse it with the time to wait.

        A call that costs more than the whole token budget is charged the whole budget: it
        waits for an empty window instead of never being admitted.
        """
        cost = min(max(cost, 0), self.tokens)
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._calls) + 1 <= self.requests and self._used + cost <= self.tokens:
                self._calls.append((now, cost))
                self._used += cost
                return Decision(True, *self._remaining())
            limit = "requests" if len(self._calls) + 1 > self.requests else "tokens"
            return Decision(False, *self._remaining(), self._wait(now, cost), limit)

    def remaining(self) -> tuple[int, int]:
        """(requests, tokens) left in the current window."""
        with self._lock:
            self._expire(self._clock())
            return self._remaining()

    def _remaining(self) -> tuple[int, int]:
        return max(0, self.requests - len(self._calls)), max(0, self.tokens - self._used)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._calls and self._calls[0][0] <= horizon:
            self._used -= self._calls.popleft()[1]

    def _wait(self, now: float, cost: int) -> float:
        """Seconds until enough of the oldest calls leave the window for this one to fit."""
        count, used = len(self._calls), self._used
        for admitted_at, old_cost in self._calls:
            count -= 1
            used -= old_cost
            if count + 1 <= self.requests and used + cost <= self.tokens:
                return max(admitted_at + self.window - now, 0.001)
        return self.window  # not reached: an empty window always fits a capped cost
