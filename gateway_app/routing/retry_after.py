"""How long a throttled backend asked to be left alone, from its response headers.

A 429 always benches the backend: a value that asks for no wait at all (zero, negative, a date
that has passed) is read as no value, like one that cannot be read, so the next header or the
default applies. Otherwise a backend (or a proxy in front of it) answering ``retry-after: -5``
would get every following call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime


def _wait(seconds: float) -> float | None:
    """A usable wait: finite and above zero; anything else counts as absent."""
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _seconds(raw: str | None, scale: float) -> float | None:
    if raw is None:
        return None
    try:
        return _wait(float(raw.strip()) * scale)
    except (ValueError, OverflowError):
        return None


def _http_date(raw: str | None, now: float) -> float | None:
    if not raw or not raw.strip():
        return None
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return _wait(when.timestamp() - now)


def retry_after_seconds(headers: Mapping[str, str], default: float, cap: float,
                        now: float | None = None) -> float:
    """Cooldown in seconds: ``retry-after-ms``, then ``retry-after`` (seconds or an HTTP date).

    A header that is missing, unreadable, not finite, zero, negative or a past date counts as
    absent; with neither usable, ``default`` applies. The result is within [0, cap] (0 only
    when ``default`` is 0).
    """
    now = time.time() if now is None else now
    for value in (_seconds(headers.get("retry-after-ms"), 0.001),
                  _seconds(headers.get("retry-after"), 1.0),
                  _http_date(headers.get("retry-after"), now)):
        if value is not None:
            return min(value, cap)
    return min(max(default, 0.0), cap)


def whole_seconds(seconds: float) -> int:
    """A retry-after value for a client: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))
