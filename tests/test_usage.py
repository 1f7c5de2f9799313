"""Per-client limits and usage (gateway_app/usage.py), with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway_app.config import ConfigError, parse_config
from gateway_app.routing.sse import Usage
from gateway_app.usage import ClientLimits, ClientUsage, Refusal, Ticket, period_bounds


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_tpm_slides_and_says_when_the_call_fits() -> None:
    clock = Clock(1000.0)
    usage = ClientUsage(5, clock=clock)
    limits = ClientLimits(tpm=100)
    assert isinstance(usage.admit("a", limits, "/lb", 60), Ticket)
    clock.now += 10
    assert isinstance(usage.admit("a", limits, "/lb", 30), Ticket)
    clock.now += 5
    refused = usage.admit("a", limits, "/lb", 20)
    assert isinstance(refused, Refusal) and (refused.status, refused.limit) == (429, "tpm")
    # the first call (60) leaves the window at 1060: 45 s from now
    assert refused.retry_after == pytest.approx(45.0)
    assert "client a: over its tpm of 100" in refused.message
    assert isinstance(usage.admit("b", limits, "/lb", 90), Ticket)  # another client's own room
    clock.now += 45
    assert isinstance(usage.admit("a", limits, "/lb", 20), Ticket)


def test_rpm_counts_requests() -> None:
    clock = Clock(0.0)
    usage = ClientUsage(5, clock=clock)
    limits = ClientLimits(rpm=2)
    for _ in range(2):
        assert isinstance(usage.admit("a", limits, "/lb", 0), Ticket)
        clock.now += 1
    refused = usage.admit("a", limits, "/lb", 0)
    assert isinstance(refused, Refusal) and refused.limit == "rpm"
    assert refused.retry_after == pytest.approx(58.0)


def test_settlement_replaces_the_estimate_with_real_usage() -> None:
    clock = Clock(0.0)
    usage = ClientUsage(5, clock=clock)
    limits = ClientLimits(tpm=100, token_quota=1000, quota_period="daily")
    ticket = usage.admit("a", limits, "/lb", 90)
    assert isinstance(ticket, Ticket)
    assert isinstance(usage.admit("a", limits, "/lb", 20), Refusal)
    ticket.settle(Usage(5, 5, 10))
    assert usage.counted("a") == (10, 1, 10)
    ticket.settle(Usage(50, 50, 100))  # once only
    assert usage.counted("a") == (10, 1, 10)
    kept = usage.admit("a", limits, "/lb", 20)
    assert isinstance(kept, Ticket)
    kept.settle(None)  # no usage: the estimate stands
    refunded = usage.admit("a", limits, "/lb", 30)
    assert isinstance(refunded, Ticket)
    refunded.settle(None, served=False)  # no backend served it
    assert usage.counted("a") == (30, 3, 30)


def test_quota_rolls_over_with_the_calendar_period() -> None:
    clock = Clock(epoch("2026-12-01T23:59:00"))
    usage = ClientUsage(5, clock=clock)
    limits = ClientLimits(token_quota=100, quota_period="daily")
    assert isinstance(usage.admit("a", limits, "/lb", 100), Ticket)
    refused = usage.admit("a", limits, "/lb", 1)
    assert isinstance(refused, Refusal) and (refused.status, refused.limit) == (403, "tokenQuota")
    assert refused.period_end == epoch("2026-12-02T00:00:00")
    assert refused.retry_after == pytest.approx(60.0)
    assert "2026-12-02T00:00:00+00:00" in refused.message
    clock.now = epoch("2026-12-02T00:00:00")
    assert isinstance(usage.admit("a", limits, "/lb", 100), Ticket)


@pytest.mark.parametrize(("period", "moment", "start", "end"), [
    ("hourly", "2026-12-01T10:30:00", "2026-12-01T10:00:00", "2026-12-01T11:00:00"),
    ("daily", "2026-12-01T10:30:00", "2026-12-01T00:00:00", "2026-12-02T00:00:00"),
    ("weekly", "2026-12-03T10:30:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
    ("monthly", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ("monthly", "2028-02-10T00:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
])
def test_period_bounds_are_utc_calendar_periods(period: str, moment: str, start: str,
                                                end: str) -> None:
    assert period_bounds(epoch(moment), period) == (epoch(start), epoch(end))


def test_new_limits_keep_the_usage_counted() -> None:
    clock = Clock(0.0)
    usage = ClientUsage(5, clock=clock)
    assert isinstance(usage.admit("a", ClientLimits(tpm=1000), "/lb", 500), Ticket)
    assert isinstance(usage.admit("a", ClientLimits(tpm=600), "/lb", 200), Refusal)


def test_deployments_restrict_the_pools() -> None:
    usage = ClientUsage(5, clock=Clock(0.0))
    limits = ClientLimits(deployments=frozenset({"gpt-4o"}))
    assert isinstance(usage.admit("a", limits, "gpt-4o", 1), Ticket)
    refused = usage.admit("a", limits, "/lb", 1)
    assert isinstance(refused, Refusal) and (refused.status, refused.limit) == (403, "deployments")


def test_a_call_larger_than_the_whole_tpm_is_refused_not_delayed() -> None:
    refused = ClientUsage(5, clock=Clock(0.0)).admit("a", ClientLimits(tpm=100), "/lb", 101)
    assert isinstance(refused, Refusal) and refused.status == 400


def test_intervals_close_with_history() -> None:
    clock = Clock(0.0)
    usage = ClientUsage(2, clock=clock)
    ticket = usage.admit("a", ClientLimits(rpm=1), "/lb", 10)
    assert isinstance(ticket, Ticket)
    ticket.settle(Usage(7, 3, 10))
    usage.admit("a", ClientLimits(rpm=1), "/lb", 10)
    closed = usage.close_intervals(60.0)
    assert closed == [{"client": "a", "collectionTime": "1970-01-01T00:00:00.000+00:00",
                       "collectedMetrics": {"calls": 1, "rateLimitedCalls": 1,
                                            "refusedCalls": 0, "promptTokens": 7,
                                            "completionTokens": 3, "totalTokens": 10}}]
    shown = usage.metrics_json(["a", "b"])
    assert shown["a"]["calls"] == 0
    assert shown["a"]["history"] == {"0": {k: v for k, v in closed[0].items() if k != "client"}}
    assert shown["b"]["calls"] == 0 and shown["b"]["history"] == {}


def config_with(**client: object) -> dict:
    return {"endpoints": [{"uri": "http://127.0.0.1:1/x", "apikey": "k"}],
            "clientKeys": [{"name": "ok", "key": "key-00000"},
                           {"name": "app", "key": "key-00001", **client}]}


@pytest.mark.parametrize(("client", "message"), [
    ({"tpm": 0}, "clientKeys[1].tpm: Must be greater than or equal to 1."),
    ({"rpm": "5"}, "clientKeys[1].rpm: Not a valid integer."),
    ({"tokenQuota": 10}, "clientKeys[1].quotaPeriod: give tokenQuota and quotaPeriod together"),
    ({"tokenQuota": 10, "quotaPeriod": "yearly"}, "clientKeys[1].quotaPeriod: Must be one of"),
    ({"deployments": ["gpt-4o"]}, "clientKeys[1].deployments[0]: no deployment pool named"),
])
def test_limit_errors_name_the_field_and_index(client: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_config(config_with(**client), {})


def test_client_defaults_fill_each_missing_field() -> None:
    config = parse_config({**config_with(rpm=5),
                           "clientDefaults": {"tpm": 100, "rpm": 1, "deployments": ["/lb"]}}, {})
    assert config.client_limits["app"] == ClientLimits(tpm=100, rpm=5,
                                                       deployments=frozenset({"/lb"}))
    assert config.client_limits["ok"] == config.client_defaults
    assert "clientDefaults" not in config.sections
    plain = parse_config({"endpoints": [{"uri": "http://127.0.0.1:1/x", "apikey": "k"}]}, {})
    assert plain.client_limits == {} and not plain.client_defaults.counted


def test_replicas_exchange_deltas_and_count_each_others_calls() -> None:
    clock = Clock(epoch("2026-12-01T10:00:00"))
    here, there = ClientUsage(5, clock=clock), ClientUsage(5, clock=clock)
    woken: list[int] = []
    here.on_pending = lambda: woken.append(1)
    limits = ClientLimits(tpm=300, rpm=10, token_quota=1000, quota_period="daily")
    ticket = here.admit("a", limits, "/lb", 100)
    assert isinstance(ticket, Ticket)
    ticket.settle(Usage(20, 20, 40))
    assert woken == [1]  # woken once while deltas pend, not per delta
    deltas = here.take_deltas()
    assert [d[2:4] for d in deltas] == [[100, 1], [-60, 0]]
    there.apply_remote(deltas)
    assert there.counted("a") == (40, 1, 40)
    assert isinstance(there.admit("a", limits, "/lb", 260), Ticket)
    assert isinstance(there.admit("a", limits, "/lb", 1), Refusal)  # 40 + 260 + 1 > 300
    clock.now += 60
    assert there.counted("a") == (0, 0, 300)  # the minute slid; the day's total stays
    assert here.take_deltas() == []


def test_deltas_of_clients_that_never_call_here_leave_the_window() -> None:
    clock = Clock(0.0)
    usage = ClientUsage(5, clock=clock)
    for second in range(120):
        clock.now = float(second)
        usage.apply_remote([["far", clock.now, 10, 1, None]])
    assert len(usage._clients["far"].records) == 60  # the last minute's, not all 120
