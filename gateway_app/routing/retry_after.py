"""How long a throttled backend asked to be left alone, from its response headers."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime


def _seconds(raw: str | None, scale: float) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip()) * scale
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _http_date(raw: str | None, now: float) -> float | None:
    if not raw:
        return None
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return when.timestamp() - now


def retry_after_seconds(headers: Mapping[str, str], default: float, cap: float,
                        now: float | None = None) -> float:
    """Cooldown in seconds: ``retry-after-ms``, then ``retry-after`` (seconds or an HTTP date).

    A missing or unreadable header gives ``default``; the result is always within [0, cap].
    """
    now = time.time() if now is None else now
    for value in (_seconds(headers.get("retry-after-ms"), 0.001),
                  _seconds(headers.get("retry-after"), 1.0),
                  _http_date(headers.get("retry-after"), now)):
        if value is not None:
            return min(max(value, 0.0), cap)
    return min(max(default, 0.0), cap)


def whole_seconds(seconds: float) -> int:
    """A retry-after value for a client: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))
