"""Fault injection: seeded dice that decide, per call, to drop it, fail it or slow it down."""

from __future__ import annotations

import enum
import random
import threading
from dataclasses import dataclass


class Fault(enum.Enum):
    """What happens to one call before it is answered normally."""

    NONE = "none"
    DROP = "drop"  # close the connection without answering
    ERROR_500 = "500"  # answer 500 at once
    SLOW = "slow"  # answer normally after an extra delay


@dataclass(frozen=True)
class FaultRates:
    """Shares of calls, each 0.0-1.0, checked in this order: drop, then 500, then slow."""

    drop: float = 0.0
    error_500: float = 0.0
    slow: float = 0.0


class FaultInjector:
    """Draws a fault for each call from one ``random.Random`` per deployment.

    Three numbers are drawn for every call, whatever the outcome, so a given seed always
    gives the same sequence of faults for the same sequence of calls.
    """

    def __init__(self, rates: FaultRates, seed: int | None = None) -> None:
        self.rates = rates
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self) -> Fault:
        """The fault for the next call (``Fault.NONE`` for most)."""
        with self._lock:
            drop, error, slow = (self._random.random() for _ in range(3))
        if drop < self.rates.drop:
            return Fault.DROP
        if error < self.rates.error_500:
            return Fault.ERROR_500
        if slow < self.rates.slow:
            return Fault.SLOW
        return Fault.NONE
