"""retry-after parsing: milliseconds first, then seconds or an HTTP date; capped and floored."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from gateway_app.routing.retry_after import retry_after_seconds, whole_seconds

NOW = 1_800_000_000.0


@pytest.mark.parametrize("headers, expected", [
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "9"}, 9.0),
    ({"retry-after": "2.5"}, 2.5),
    ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
    ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),
    ({"retry-after": "-4"}, 0.0),
    ({"retry-after": "99999999"}, 300.0),
    ({"retry-after-ms": "nan"}, 10.0),
    ({"retry-after-ms": "inf", "retry-after": "3"}, 3.0),
    ({"retry-after": "soon"}, 10.0),
    ({"retry-after": ""}, 10.0),
    ({}, 10.0),
])
def test_retry_after_seconds(headers, expected):
    assert retry_after_seconds(headers, default=10.0, cap=300.0, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("seconds, expected", [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2),
                                               (2.5, 3), (59.99, 60)])
def test_whole_seconds_rounds_up_to_at_least_one(seconds, expected):
    assert whole_seconds(seconds) == expected
