"""A deployment's remaining budget, as one of its answers states it (headroom routing).

Every answer of a standard Azure OpenAI deployment says what is left of its quota after
admitting the call it answers: ``x-ratelimit-remaining-requests`` and
``x-ratelimit-remaining-tokens``. A provisioned deployment says how busy it is instead:
``azure-openai-deployment-utilization`` (a percentage, documented by Microsoft as approximate).
One answer's values are one :class:`Headroom`; the registry keeps the latest per backend and
counts down from it what it sends (routing/registry.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

REQUESTS_HEADER = "x-ratelimit-remaining-requests"
TOKENS_HEADER = "x-ratelimit-remaining-tokens"
UTILIZATION_HEADER = "azure-openai-deployment-utilization"

_COUNT = re.compile(r"\s*([0-9]{1,15})\s*")  # ASCII digits only: no signs, no fractions
_PERCENT = re.compile(r"\s*([0-9]{1,6}(?:\.[0-9]{1,6})?)\s*%?\s*")  # "45.2%" as Azure sends it


@dataclass(frozen=True, slots=True)
class Headroom:
    """One reading of a backend's remaining budget; None where the answer said nothing usable.

    ``read_at`` is when it arrived (time.monotonic()): it is trusted for
    ``API_GATEWAY_HEADROOM_SECONDS`` after. ``as_of`` is when the call it came with was sent:
    the budget it states already holds that call and every one sent before it, so only calls
    sent after ``as_of`` are counted down from it.
    """

    requests: int | None
    tokens: int | None
    utilization: float | None
    read_at: float
    as_of: float

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], read_at: float,
                     as_of: float) -> Headroom | None:
        """The reading an answer's ``headers`` carry, or None when they carry none."""
        requests = _count(headers.get(REQUESTS_HEADER))
        tokens = _count(headers.get(TOKENS_HEADER))
        utilization = _percent(headers.get(UTILIZATION_HEADER))
        if requests is None and tokens is None and utilization is None:
            return None
        return cls(requests, tokens, utilization, read_at, as_of)


def _count(value: str | None) -> int | None:
    found = _COUNT.fullmatch(value) if value else None
    return int(found.group(1)) if found else None


def _percent(value: str | None) -> float | None:
    found = _PERCENT.fullmatch(value) if value else None
    return float(found.group(1)) if found else None
