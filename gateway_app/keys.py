"""Secrets the gateway checks: client keys, and the throttle on wrong gateway keys.

State, not web code: the web layer only reads the header (gateway_app/web/auth.py).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode(), expected.encode())


class ClientKeys:
    """The accepted client keys (name -> key); immutable, replaced whole on reload."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = tuple(keys.items())

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, presented: str | None) -> str | None:
        """The name of the client whose key was presented, or None.

        Every key is compared, in constant time each, so the time taken does not tell which
        key came close.
        """
        if presented is None:
            return None
        found = None
        for name, key in self._keys:
            if same_secret(presented, key) and found is None:
                found = name
        return found


@dataclass(frozen=True)
class Verdict:
    """How to answer one wrong key: ``wait`` is 0 within the address's allowance (401), else
    the seconds until it is within it again (429); ``announce`` marks the first one past it."""

    wait: float
    announce: bool = False


@dataclass
class _Strikes:
    times: deque[float]  # the last ``limit`` counted wrong keys, oldest first
    announced: bool = False


class WrongKeyThrottle:
    """Counts wrong gateway keys per client address over a sliding window; refuses nobody.

    The handler checks the key before asking here, so the right key works from an address
    under attack (behind an ingress every client shares one). Past ``limit`` wrong keys within
    ``seconds``, an address's further wrong keys are answered 429 and logged once, so a flood
    costs a constant-time comparison each and no log volume. This does not slow guessing (each
    answer still says right or wrong); the key's strength does, see README, Security.
    """

    MAX_ADDRESSES = 10_000  # bounds memory under a flood of addresses; the oldest are forgotten

    def __init__(self, limit: int, seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()  # guards _addresses and every _Strikes in it
        self._addresses: OrderedDict[str, _Strikes] = OrderedDict()

    def failed(self, address: str) -> Verdict:
        """Count a wrong key from ``address`` and say how to answer it."""
        now = self._clock()
        with self._lock:
            strikes = self._addresses.pop(address, None) or _Strikes(deque())
            self._addresses[address] = strikes  # most recent last
            while len(self._addresses) > self.MAX_ADDRESSES:
                self._addresses.popitem(last=False)
            times = strikes.times
            while times and now - times[0] >= self.seconds:
                times.popleft()
            if len(times) < self.limit:
                times.append(now)
                strikes.announced = False
                return Verdict(0.0)
            # over the allowance: not counted, so a flood does not push the window on
            announce = not strikes.announced
            strikes.announced = True
            return Verdict(self.seconds - (now - times[0]), announce)
