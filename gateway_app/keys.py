"""Secrets the gateway checks: client keys, and the lockout that slows guessing the gateway key.

State, not web code: the web layer only reads the header (gateway_app/web/auth.py).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping


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


class Lockout:
    """Refuses an address for ``seconds`` after ``limit`` failures within ``seconds``."""

    MAX_ADDRESSES = 10_000  # bounds memory under a flood of addresses

    def __init__(self, limit: int, seconds: float = 60.0) -> None:
        self.limit = limit
        self.seconds = seconds
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def remaining(self, address: str) -> float:
        """Seconds the address is still refused for (0 when it may try)."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(address, ()) if now - t < self.seconds]
            if len(recent) < self.limit:
                return 0.0
            return self.seconds - (now - recent[-1])

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.pop(address, ()) if now - t < self.seconds]
            self._failures[address] = [*recent, now][-self.limit:]
            while len(self._failures) > self.MAX_ADDRESSES:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)
