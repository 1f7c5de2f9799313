"""Capacity planning at the minute: demand per minute, the PTU coverage curve, prices and costs.

Azure's quotas and a provisioned deployment's throughput are per minute, so a burst averaged
over a 60-minute interval hides what a purchase must absorb. Every interval records its figures
per minute bucket (``perMinute``, routing/metrics.py); this module adds them up window by
window and answers: with N PTUs, what share of minutes would be fully served, how many tokens
would spill over to pay-as-you-go, and what each mix would cost per month.

Demand of a minute = the tokens the endpoints served (prompt + completion, as they reported)
+ the unmet demand: calls the gateway answered 429/503 itself because every backend was busy,
counted by Azure's admission estimate (``Call.cost``). Unmet demand is a pool-level series,
recorded on the pool's first entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .prices import ModelPrice
from .ptu import ModelThroughput

MINUTES_PER_MONTH = 730 * 60  # Azure bills 730 hours a month
DEFAULT_TARGET = 0.95  # share of minutes a recommended PTU count serves fully

# --- demand per minute ---------------------------------------------------------------------

@dataclass
class Minute:
    """One minute bucket of one scope, summed over its endpoints and gateway processes."""

    start: float  # epoch seconds
    calls: int = 0
    prompt: int = 0
    completion: int = 0
    unmet_calls: int = 0
    unmet_tokens: int = 0  # estimated (Call.cost)
    demand_tokens: int = 0  # estimated, served and unmet: what Azure's admission counts
    demand_calls: int = 0

    @property
    def served(self) -> int:
        return self.prompt + self.completion


@dataclass
class MinuteSeries:
    """Every bucket an interval of the scope covered, busy or idle, oldest first."""

    seconds: float
    minutes: list[Minute] = field(default_factory=list)

    @property
    def per_minute(self) -> float:
        """Factor from tokens per bucket to tokens per minute."""
        return 60.0 / self.seconds


def minute_series(intervals: Iterable[Any]) -> MinuteSeries | None:
    """The buckets of ``intervals`` (report.Interval), summed by bucket; None when any interval
    has no per-minute figures (a gateway that did not record them) or they mix lengths.

    Every bucket an interval covers counts, the idle ones as zero: a percentile over busy
    minutes alone would overstate the demand.
    """
    intervals = list(intervals)
    if not intervals or any(i.per_minute is None for i in intervals):
        return None
    lengths = {i.minute_seconds for i in intervals}
    if len(lengths) > 1:
        return None
    seconds = lengths.pop()
    buckets: dict[int, Minute] = {}
    for i in intervals:
        start = i.start.timestamp()
        first = math.floor(start / seconds + 1e-9)
        last = math.ceil((start + i.minutes * 60) / seconds - 1e-9)
        for index in range(first, max(last, first + 1)):
            buckets.setdefault(index, Minute(index * seconds))
        for index, figures in i.per_minute:
            m = buckets.setdefault(index, Minute(index * seconds))
            calls, _failed, prompt, completion, demand_calls, demand, unmet_calls, unmet = figures
            m.calls += calls
            m.prompt += prompt
            m.completion += completion
            m.demand_tokens += demand
            m.demand_calls += demand_calls
            m.unmet_calls += unmet_calls
            m.unmet_tokens += unmet
    return MinuteSeries(seconds, [buckets[k] for k in sorted(buckets)])


def nearest_rank(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def minute_figures(series: MinuteSeries) -> dict[str, Any]:
    """Served and unmet demand per minute: p95 and peak, totals, minutes with unmet demand."""
    k = series.per_minute
    served = [m.served * k for m in series.minutes]
    demand = [(m.served + m.unmet_tokens) * k for m in series.minutes]
    peak = max(range(len(served)), key=served.__getitem__, default=None)
    calls = [m.calls * k for m in series.minutes]
    return {
        "minuteSeconds": series.seconds,
        "minutes": len(series.minutes),
        "tpmAvg": round(sum(served) / len(served), 1) if served else 0.0,
        "rpmAvg": round(sum(calls) / len(calls), 2) if calls else 0.0,
        "tpmP95": round(nearest_rank(served, 0.95), 1),
        "tpmPeak": round(max(served, default=0.0), 1),
        "peakMinute": None if peak is None else _iso(series.minutes[peak].start),
        "rpmPeak": round(max(calls, default=0.0), 2),
        "unmetCalls": sum(m.unmet_calls for m in series.minutes),
        "unmetTokens": sum(m.unmet_tokens for m in series.minutes),
        "unmetMinutes": sum(1 for m in series.minutes if m.unmet_calls),
        "demandTpmP95": round(nearest_rank(demand, 0.95), 1),
        "demandTpmPeak": round(max(demand, default=0.0), 1),
    }


def series_json(series: MinuteSeries) -> list[dict[str, Any]]:
    """The per-minute served and unmet tokens, for the dashboard."""
    return [{"start": _iso(m.start), "servedTokens": m.served, "unmetTokens": m.unmet_tokens,
             "calls": m.calls, "unmetCalls": m.unmet_calls} for m in series.minutes]


# --- the coverage curve and the costs ------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """A minute's demand in input and output tokens."""

    input: float
    output: float

    def weighed(self, model: ModelThroughput) -> float:
        """In input-token equivalents, as PTU throughput counts them."""
        return self.input + self.output * model.output_ratio


def splits(series: MinuteSeries, output_share: float, configured: bool = False
           ) -> list[Split]:
    """Each minute's demand split into input and output: served tokens as the endpoints
    reported them, unmet tokens (an estimate without a split) by ``output_share``; all of
    it by ``output_share`` when it is ``configured`` (sizing for another mix on purpose)."""
    if configured:
        return [Split((m.served + m.unmet_tokens) * (1 - output_share),
                      (m.served + m.unmet_tokens) * output_share) for m in series.minutes]
    return [Split(m.prompt + m.unmet_tokens * (1 - output_share),
                  m.completion + m.unmet_tokens * output_share) for m in series.minutes]


def _spill(split: Split, capacity: float, model: ModelThroughput) -> Split:
    """What of a minute's demand does not fit ``capacity`` input-token equivalents, with the
    minute's own mix of input and output."""
    weighed = split.weighed(model)
    if weighed <= capacity or weighed <= 0:
        return Split(0.0, 0.0)
    part = (weighed - capacity) / weighed
    return Split(split.input * part, split.output * part)


def _payg(split: Split, price: ModelPrice) -> float:
    return split.input / 1000 * price.input_per_1k + split.output / 1000 * price.output_per_1k


def coverage(series: MinuteSeries, model: ModelThroughput, price: ModelPrice | None,
             output_share: float, target: float = DEFAULT_TARGET,
             configured: bool = False) -> dict[str, Any]:
    """The coverage curve of one model, its recommendation, and monthly costs.

    One point per PTU count from the model's minimum to what the peak minute needs, in the
    model's increments: the share of minutes it serves fully and the tokens that would spill
    over (per month: the observed span scaled to 730 hours). The recommendation is the
    smallest count whose share reaches ``target``; the cheapest mix is the count and billing
    option with the lowest PTU plus spillover cost (zero PTUs, all pay-as-you-go, included).
    """
    demand = splits(series, output_share, configured)
    minutes = len(demand)
    scale = MINUTES_PER_MONTH / (minutes * series.seconds / 60) if minutes else 0.0
    per_minute = series.per_minute
    peak = max((d.weighed(model) * per_minute for d in demand), default=0.0)
    top = max(model.min_ptu, model.increment * math.ceil(peak / model.tpm_per_ptu
                                                         / model.increment - 1e-9))
    total = Split(sum(d.input for d in demand), sum(d.output for d in demand))
    payg = _payg(total, price) * scale if price else None
    points = []
    for ptu in [0, *range(model.min_ptu, top + 1, model.increment)]:
        capacity = ptu * model.tpm_per_ptu / per_minute  # per bucket
        spills = [_spill(d, capacity, model) for d in demand]
        spilled = Split(sum(s.input for s in spills), sum(s.output for s in spills))
        full = sum(1 for s in spills if s.input + s.output == 0)
        point: dict[str, Any] = {
            "ptu": ptu,
            "minutesServedShare": round(full / minutes, 4) if minutes else 1.0,
            "spillTokens": round(spilled.input + spilled.output),
            "spillTokensPerMonth": round((spilled.input + spilled.output) * scale),
        }
        if price is not None:
            spill_cost = _payg(spilled, price) * scale
            point["costPerMonth"] = {option: round(ptu * fee + spill_cost, 2)
                                     for option, fee in price.ptu_month().items()}
            point["spillCostPerMonth"] = round(spill_cost, 2)
        points.append(point)
    curve = points[1:]
    recommended = next((p for p in curve if p["minutesServedShare"] >= target), curve[-1])
    result: dict[str, Any] = {
        "minutes": minutes, "minuteSeconds": series.seconds, "target": target,
        "tpmPerPtu": model.tpm_per_ptu, "minPtu": model.min_ptu, "increment": model.increment,
        "outputShare": round(output_share, 4),
        "demandTokensPerMonth": round((total.input + total.output) * scale),
        "curve": curve, "recommended": recommended,
        "payAsYouGoPerMonth": None if payg is None else round(payg, 2),
        "cheapest": None,
    }
    if price is not None:
        cheapest = min(((p["costPerMonth"][o], p["ptu"], o) for p in points
                        for o in p["costPerMonth"]), key=lambda c: (c[0], c[1]))
        result["cheapest"] = {"ptu": cheapest[1],
                              "billing": cheapest[2] if cheapest[1] else "payAsYouGo",
                              "costPerMonth": cheapest[0]}
    return result


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
