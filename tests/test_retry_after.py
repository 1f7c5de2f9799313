"""retry-after parsing: milliseconds first, then seconds or an HTTP date; capped, and a value
that asks for no wait (zero, negative, past) or cannot be read counts as absent."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from gateway_app.routing.retry_after import retry_after_seconds, whole_seconds
from tests.fakes import reply

NOW = 1_800_000_000.0
DEFAULT = 10.0
CAP = 300.0


def date(offset: float) -> str:
    return formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize("headers, expected", [
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "9"}, 9.0),
    ({"retry-after": "2.5"}, 2.5),
    ({"retry-after": " 7 "}, 7.0),
    ({"retry-after": date(30)}, 30.0),
    ({"retry-after": date(10**6)}, CAP),
    ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, CAP),
    ({"retry-after": "99999999"}, CAP),
    ({"retry-after": "1e308"}, CAP),
    ({"retry-after-ms": "1e308"}, CAP),
    ({"retry-after-ms": "inf", "retry-after": "3"}, 3.0),
    ({"retry-after-ms": "-1000", "retry-after": "4"}, 4.0),
    ({"retry-after-ms": "0", "retry-after": date(20)}, 20.0),
    ({"retry-after-ms": "250", "retry-after": "-5"}, 0.25),
    ({}, DEFAULT),
])
def test_usable_values(headers, expected):
    got = retry_after_seconds(headers, default=DEFAULT, cap=CAP, now=NOW)
    assert got == pytest.approx(expected)


ODD = ["abc", "soon", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1e309",
       "-5", "-0.5", "-1e308", "0", "0.0", "-0", "0e5", "", " ", "\t", "0x10", "5s", "1,5",
       "Wed, 21 Oct 2015 07:28:00", "Wed, 21 Oct 2015 07:28:00 -0000", "Mon, 99 Foo 2015",
       date(-30), date(-10**9), date(0), "Thu, 01 Jan 1970 00:00:00 GMT"]


@pytest.mark.parametrize("value", ODD)
@pytest.mark.parametrize("name", ["retry-after", "retry-after-ms"])
def test_odd_values_count_as_absent_and_the_default_applies(name, value):
    assert retry_after_seconds({name: value}, default=DEFAULT, cap=CAP, now=NOW) == DEFAULT


@pytest.mark.parametrize("ms, seconds", [("-1000", "-5"), ("nan", "-inf"), ("0", "0"),
                                         ("", date(-1)), ("abc", "1e309"), (" ", "")])
def test_both_headers_odd_gives_the_default(ms, seconds):
    headers = {"retry-after-ms": ms, "retry-after": seconds}
    assert retry_after_seconds(headers, default=DEFAULT, cap=CAP, now=NOW) == DEFAULT


def test_the_default_is_capped_and_never_negative():
    assert retry_after_seconds({}, default=900.0, cap=CAP, now=NOW) == CAP
    assert retry_after_seconds({"retry-after": "-5"}, default=0.0, cap=CAP, now=NOW) == 0.0


@pytest.mark.parametrize("seconds, expected", [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2),
                                               (2.5, 3), (59.99, 60)])
def test_whole_seconds_rounds_up_to_at_least_one(seconds, expected):
    assert whole_seconds(seconds) == expected


@pytest.mark.parametrize("headers", [{"retry-after": "-5"}, {"retry-after-ms": "-1000"}])
def test_a_negative_retry_after_benches_the_deployment_over_http(headers, fake, start_gateway):
    """The attack's case: one 429 with a negative value, then every call went to it anyway."""
    throttled = fake().script(reply(429, {"error": {"code": "429", "message": "slow"}}, headers))
    spare = fake()
    gw = start_gateway([throttled, spare])
    first = gw.lb()
    assert first.status_code == 200 and first.headers["x-apirouter-endpoint"] == "1"
    for _ in range(5):
        assert gw.lb().headers["x-apirouter-endpoint"] == "1"
    assert (throttled.calls, spare.calls) == (1, 6)
