"""Property-based tests (hypothesis) of the configuration schema, the retry-after parser and
the usage reader.

``parse_config`` must answer any JSON-like document with a GatewayConfig or a ConfigError, never
another exception, and never echo a key. ``retry_after_seconds`` must never raise and stay within
[0, cap] whatever a backend sends. The documents are built from the marshmallow schemas
themselves, so a field added to the configuration is exercised without touching this file.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields
from requests.structures import CaseInsensitiveDict

from gateway_app.config import ConfigError, ConfigSchema, GatewayConfig, parse_config
from gateway_app.routing.retry_after import retry_after_seconds, whole_seconds
from gateway_app.routing.sse import Usage, usage_of

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- JSON-like values ---------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from([10**400, -(10**400), float("nan"), float("inf"), -0.0]))
JSON_LIKE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=12)

ENV_NAMES = ["KEY_A", "KEY_B", "KEY_EMPTY", "UNSET_KEY", "9BAD", "bad-name"]
ENVIRON = st.fixed_dictionaries({"KEY_A": st.just("env-key-a"), "KEY_EMPTY": st.just("")},
                                optional={"KEY_B": st.text(max_size=8)})
STRINGS = st.text(max_size=16) | st.sampled_from([
    "", " ", "0", "x" * 70, "gpt-4o", "2024-10-21", "2024-10-21-preview", "global", "regional",
    "http://127.0.0.1:8080/openai/deployments/d/chat/completions?api-version=2024-10-21",
    "https://east.openai.azure.com", "https://east.openai.azure.com/", "http://", "ftp://x",
    "http://[::1", "http://a:99999", "https://例え.jp/x", "//no-scheme", *ENV_NAMES])
NUMBERS = st.integers() | st.floats() | st.sampled_from(
    [0, -1, 1, 2**63, 10**400, 0.5, 1e-320, 1e308, -0.0, float("nan"), float("inf")])
# keys given in the file carry this mark; no error message may contain it
SECRET = "SECRET-"
SECRET_FIELDS = frozenset({"apikey", "key"})


def for_field(name: str, field: fields.Field, depth: int) -> st.SearchStrategy[Any]:
    """Values for one marshmallow field: mostly of its type, sometimes anything."""
    typed: st.SearchStrategy[Any]
    if name in SECRET_FIELDS:
        typed = st.text(max_size=12).map(lambda s: SECRET + s) | st.just(SECRET)
    elif isinstance(field, fields.Nested):
        typed = for_schema(field.schema, depth + 1)
        if field.many:
            typed = st.lists(typed, max_size=3)
    elif isinstance(field, fields.List):
        typed = st.lists(for_field("", field.inner, depth + 1), max_size=3)
    elif isinstance(field, fields.Dict):
        keys = STRINGS if field.key_field is None else for_field("", field.key_field, depth)
        values = JSON_LIKE if field.value_field is None else for_field(
            "", field.value_field, depth + 1)
        typed = st.dictionaries(keys.filter(lambda k: isinstance(k, str)), values, max_size=3)
    elif isinstance(field, fields.Number):
        typed = NUMBERS
    elif isinstance(field, fields.Boolean):
        typed = st.booleans()
    else:
        typed = STRINGS
    return st.one_of(typed, typed, typed, JSON_LIKE)


def for_schema(schema: Schema, depth: int = 0) -> st.SearchStrategy[Any]:
    """Objects with any subset of the schema's fields, plus now and then an unknown one."""
    if depth > 4:
        return JSON_LIKE
    optional = {field.data_key or name: for_field(name, field, depth)
                for name, field in schema.fields.items()}
    known = st.fixed_dictionaries({}, optional=optional)
    unknown = st.dictionaries(st.text(max_size=6).filter(lambda k: k not in optional), SCALARS,
                              max_size=1)
    return st.tuples(known, unknown).map(lambda pair: {**pair[1], **pair[0]})


URLS = st.sampled_from([
    "http://127.0.0.1:8080/openai/deployments/d/chat/completions?api-version=2024-10-21",
    "https://east.openai.azure.com/openai/deployments/gpt-4o/embeddings?api-version=2024-10-21",
    "http://localhost/x"])
KEY_SOURCES = (st.text(max_size=12).map(lambda s: {"apikey": SECRET + s})
               | st.sampled_from(["KEY_A", "KEY_B"]).map(lambda name: {"apikeyEnv": name}))
VALID_ENDPOINTS = st.tuples(
    st.fixed_dictionaries({"uri": URLS}, optional={"priority": st.integers(0, 3),
                                                   "timeout": st.floats(0.1, 600)}),
    KEY_SOURCES).map(lambda pair: {**pair[0], **pair[1]})
# valid ones too, so that the success path is exercised as often as the failures
VALID_DOCUMENTS = st.fixed_dictionaries(
    {"endpoints": st.lists(VALID_ENDPOINTS, min_size=1, max_size=4,
                           unique_by=lambda e: e["uri"])},  # a uri twice is refused
    optional={"clientKeys": st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["app-a", "app-b"]),
         "key": st.text(min_size=1, max_size=8).map(lambda s: SECRET + s)}), max_size=2)})
DOCUMENTS = st.one_of(for_schema(ConfigSchema()), VALID_DOCUMENTS, JSON_LIKE)


# --- the configuration --------------------------------------------------------------------

@SETTINGS
@given(document=DOCUMENTS, environ=ENVIRON)
@example(document={"endpoints": [{"uri": "http://a", "apikey": "k", "timeout": 10**400}]},
         environ={})
@example(document={"endpoints": [{"uri": "http://a", "apikeyEnv": "KEY_EMPTY"}]},
         environ={"KEY_EMPTY": ""})
@example(document={"endpoints": []}, environ={})
@example(document=[], environ={})
def test_parse_config_raises_only_config_error(document: Any, environ: dict[str, str]) -> None:
    try:
        config = parse_config(document, environ)
    except ConfigError as exc:
        message = str(exc)
        assert message, "a ConfigError says what is wrong"
        assert SECRET not in message, f"a key leaked into the error: {message}"
        return
    assert isinstance(config, GatewayConfig)
    assert config.endpoints or getattr(config, "pools", None), "something to serve"
    for endpoint in config.endpoints:
        assert endpoint.api_key, "every endpoint has a key"
        assert endpoint.uri.startswith(("http://", "https://"))
        assert SECRET not in repr(endpoint), "repr() never shows a key"


@SETTINGS
@given(st.lists(VALID_ENDPOINTS | for_schema(ConfigSchema().fields["endpoints"].inner.schema),
                min_size=1, max_size=4),
       ENVIRON)
def test_valid_endpoints_keep_their_order_and_keys(entries: list[Any],
                                                   environ: dict[str, str]) -> None:
    """Whatever parses keeps file order for equal priorities and takes keys from the file or
    from the environment variable it names."""
    try:
        config = parse_config({"endpoints": entries}, environ)
    except ConfigError:
        return
    priorities = [e.priority for e in config.endpoints]
    assert priorities == sorted(priorities)
    for endpoint in config.endpoints:
        assert endpoint.api_key.startswith(SECRET) or endpoint.api_key in environ.values()


# --- retry-after --------------------------------------------------------------------------

NOW = 1_800_000_000.0
HTTP_DATES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                          timezones=st.just(UTC)).map(lambda d: format_datetime(d, usegmt=True))
OFFSET_DATES = st.builds(
    lambda d, minutes: format_datetime(d.replace(tzinfo=timezone(timedelta(minutes=minutes)))),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-1439, max_value=1439))
HEADER_VALUES = st.one_of(
    st.text(max_size=40),
    st.integers().map(str),
    st.floats().map(repr),
    st.floats().map(str),
    HTTP_DATES,
    OFFSET_DATES,
    st.sampled_from([
        "", " ", "-1", "-0", "0", "1e400", "-1e400", "nan", "NaN", "inf", "-inf", "Infinity",
        "1_000", "٣", "0x10", "10 ", " 10", "10s", "10.5.1", "9" * 400,
        "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
        "Mon, 01 Jan 0001 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 -2359",
        "Sun, 06 Nov 1994 08:49:37", "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994", "Mon, 32 Jan 2024 00:00:00 GMT", "GMT", ",",
    ]))
HEADERS = st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms", "x-other"]),
                          HEADER_VALUES, max_size=3)
CAPS = st.floats(min_value=0, max_value=1e7)
DEFAULTS = st.floats(min_value=-1e7, max_value=1e7)


@SETTINGS
@given(headers=HEADERS, default=DEFAULTS, cap=CAPS,
       now=st.floats(min_value=0, max_value=2**34))
@example(headers={"retry-after-ms": "nan", "retry-after": "inf"}, default=5.0, cap=60.0, now=NOW)
@example(headers={"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, default=5.0, cap=60.0,
         now=NOW)
@example(headers={"retry-after": "Mon, 01 Jan 0001 00:00:00 GMT"}, default=5.0, cap=60.0,
         now=NOW)
@example(headers={"retry-after": "-5"}, default=5.0, cap=60.0, now=NOW)
@example(headers={"retry-after-ms": "1e400"}, default=5.0, cap=0.0, now=NOW)
def test_retry_after_never_raises_and_stays_within_cap(headers: dict[str, str], default: float,
                                                       cap: float, now: float) -> None:
    for given_headers in (headers, CaseInsensitiveDict(headers)):
        value = retry_after_seconds(given_headers, default, cap, now)
        assert isinstance(value, float)
        assert math.isfinite(value) and 0 <= value <= cap, (headers, value)


@SETTINGS
@given(ms=st.floats(min_value=0.001, max_value=1e9), seconds=HEADER_VALUES, cap=CAPS)
def test_retry_after_ms_wins_when_readable(ms: float, seconds: str, cap: float) -> None:
    headers = {"retry-after-ms": repr(ms), "retry-after": seconds}
    value = retry_after_seconds(headers, 1.0, cap, NOW)
    assert math.isclose(value, min(ms / 1000, cap), rel_tol=1e-9, abs_tol=1e-12)


@SETTINGS
@given(ms=st.floats(max_value=0) | st.just(-0.0), seconds=HEADER_VALUES, cap=CAPS)
def test_retry_after_ms_asking_no_wait_never_wins(ms: float, seconds: str, cap: float) -> None:
    """Zero or negative counts as absent: the answer is retry-after's alone."""
    alone = retry_after_seconds({"retry-after": seconds}, 1.0, cap, NOW)
    value = retry_after_seconds({"retry-after-ms": repr(ms), "retry-after": seconds}, 1.0, cap,
                                NOW)
    assert value == alone


@SETTINGS
@given(delta=st.integers(min_value=-10**9, max_value=10**9), cap=CAPS)
def test_retry_after_date_is_the_time_left(delta: int, cap: float) -> None:
    """A future date gives the time left; a date now or past counts as absent (the default)."""
    when = datetime.fromtimestamp(NOW + delta, UTC)
    value = retry_after_seconds({"retry-after": format_datetime(when, usegmt=True)}, 1.0, cap,
                                NOW)
    assert math.isclose(value, min(delta if delta > 0 else 1.0, cap), abs_tol=1e-6)


@SETTINGS
@given(st.floats(min_value=0, max_value=1e9))
def test_whole_seconds_rounds_up_to_at_least_one(seconds: float) -> None:
    whole = whole_seconds(seconds)
    assert isinstance(whole, int) and whole >= 1 and whole >= seconds - 1e-6


# --- usage_of -----------------------------------------------------------------------------

TRICKY_TEXT = st.text(max_size=40) | st.sampled_from([
    "usage", '"usage"', '"total_tokens": 99', 'usage":{"total_tokens":7}', "\\", "\n\n"])
COUNTS = st.integers(min_value=0, max_value=10**7)


@SETTINGS
@given(content=TRICKY_TEXT, after=TRICKY_TEXT, prompt=COUNTS, completion=COUNTS,
       compact=st.booleans(), details=st.booleans())
def test_usage_of_reads_the_real_usage_whatever_the_text_says(content, after, prompt,
                                                              completion, compact, details):
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": 0}
    answer = {"choices": [{"message": {"content": content}}], "usage": usage,
              "system_fingerprint": after}
    separators = (",", ":") if compact else (", ", ": ")
    payload = json.dumps(answer, separators=separators).encode()
    assert usage_of(payload) == Usage(prompt, completion, prompt + completion)


@SETTINGS
@given(content=TRICKY_TEXT)
def test_usage_of_finds_nothing_without_usage(content):
    payload = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
    assert usage_of(payload) is None
