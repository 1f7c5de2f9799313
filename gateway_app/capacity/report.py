"""Capacity planning: from closed metrics intervals to tokens per minute and a PTU estimate.

The input is history entries: those a gateway keeps in memory (its ``/metrics`` document, live
or saved to files) and those its JSON-lines history file kept (history_file.py).
Per (pool, backend) (``/lb``'s ``endpoints`` list, pool None, and each deployment pool's
backends), per model and for the instance, the report gives calls, failures, tokens, TPM
(average, 95th percentile, peak interval), RPM, average latency, and the Provisioned
Throughput Units that the 95th-percentile and the peak TPM would need. Served as JSON by
``GET {prefix}/capacity``, and on the command line: ``python -m gateway_app.capacity --help``
(``__main__.py`` calls :func:`main`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from marshmallow import ValidationError

from ..routing.metrics import MINUTE_FIELDS
from . import clients
from . import planning as plan
from .prices import PRICE_SOURCE
from .ptu import (
    DEFAULT_LIKE,
    DEFAULT_MODEL,
    DEPLOYMENT_TYPES,
    TABLE_SOURCE,
    CapacitySchema,
    ModelThroughput,
    Planning,
    deployment_name,
)

LB_LABEL = "/lb"  # how the /lb list is shown; no pool can be named so (pool names have no "/")

# --- history entries ----------------------------------------------------------------------

class InputError(ValueError):
    """A saved /metrics document or history file cannot be read; the message says where."""


@dataclass(frozen=True)
class Interval:
    """One closed interval of one endpoint of ``/lb`` (pool None) or of one pool's backend."""

    instance: str
    source: str  # the gateway process (pod or host) whose collector closed it
    endpoint: str
    priority: int
    start: datetime
    minutes: float
    calls: int  # answered by the endpoint
    failed: int  # throttled or failed
    tokens: float
    latency_ms: float  # mean over ``calls``
    completion: float | None = None  # output tokens, when the entry tells them apart
    pool: str | None = None  # the deployment pool that lists the backend; None: /lb's list
    # (bucket index, figures in MINUTE_FIELDS order) of the minutes that saw calls; None for
    # entries of gateways that did not record them
    per_minute: tuple[tuple[int, tuple[int, ...]], ...] | None = None
    minute_seconds: float = 60.0


def pool_label(pool: str | None) -> str:
    """How a row's list is named for people: the pool's name, or ``/lb``."""
    return LB_LABEL if pool is None else pool


def _interval(instance: str, source: str, endpoint: str, priority: int,
              entry: Mapping[str, Any], minutes: float, pool: str | None) -> Interval:
    metrics = entry["collectedMetrics"]
    return Interval(instance=instance, source=source, endpoint=endpoint, priority=int(priority),
                    pool=None if pool is None else str(pool),
                    start=datetime.fromisoformat(entry["collectionTime"]).astimezone(UTC),
                    minutes=float(minutes),
                    calls=int(metrics["noOfApiCalls"]), failed=int(metrics["noOfFailedCalls"]),
                    tokens=float(metrics["throughput"]["kTokensPerWindow"]) * 1000,
                    latency_ms=float(metrics["latency"]["avgResponseTimeMsec"]),
                    completion=_completion(metrics), **_per_minute(metrics))


def _per_minute(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The perMinute block of an entry as Interval fields (none: per_minute None)."""
    block = metrics.get("perMinute")
    if not isinstance(block, Mapping):
        return {}
    seconds = float(block["seconds"])
    buckets = tuple(
        (math.floor(datetime.fromisoformat(m["start"]).timestamp() / seconds + 1e-9),
         tuple(int(m.get(name, 0)) for name in MINUTE_FIELDS))
        for m in block["minutes"])
    # counters made without buckets (hand-built, or summed from entries without them) would
    # read as idle minutes: their figures must account for every answered call
    if sum(figures[0] for _, figures in buckets) != int(metrics["noOfApiCalls"]):
        return {}
    return {"minute_seconds": seconds, "per_minute": buckets}


def _completion(metrics: Mapping[str, Any]) -> float | None:
    """Output tokens of an entry; None for entries of gateways that did not record them."""
    split = metrics.get("tokenSplit")
    return float(split["completionTokens"]) if isinstance(split, Mapping) else None


def intervals_from_metrics(document: Mapping[str, Any], where: str = "metrics",
                           minutes: float | None = None) -> list[Interval]:
    """The history of every endpoint in a ``GET /metrics`` document."""
    try:
        minutes = float(minutes or document["collectionInterval"])
        instance = str(document.get("instanceName", ""))
        return [_interval(instance, instance, e["endpoint"], e["priority"], entry, minutes, pool)
                for pool, e in _endpoints_of(document)
                for entry in e["metrics"]["history"].values()]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: not a /metrics document of the gateway "
                         f"({type(exc).__name__}: {exc})") from None


def _endpoints_of(document: Mapping[str, Any]
                  ) -> list[tuple[str | None, Mapping[str, Any]]]:
    """(pool, endpoint) of a /metrics document: /lb's endpoints (pool None), then each pool's
    backends."""
    pools = document.get("deploymentMetrics", {})
    return [*((None, e) for e in document["endpointMetrics"]),
            *((name, b) for name, backends in pools.items() for b in backends)]


def intervals_from_history(lines: Iterable[str], where: str = "history",
                           minutes: float | None = None) -> list[Interval]:
    """The entries of a JSON-lines history file; blank lines are skipped."""
    found = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if "client" in entry:  # a client's usage (client_usage_from_history reads those)
                continue
            instance = str(entry.get("instanceName", ""))
            found.append(_interval(instance, str(entry.get("source") or instance),
                                   entry["endpoint"], entry["priority"], entry,
                                   minutes or entry["intervalMinutes"], _pool_of(entry)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where}:{number}: not a history entry "
                             f"({type(exc).__name__}: {exc})") from None
    return found


def _pool_of(entry: Mapping[str, Any]) -> str | None:
    """The pool of a history line: ``pool``, else ``deployment`` (where the registry's closing
    puts a pool backend's pool today); neither means /lb's list."""
    pool = entry.get("pool", entry.get("deployment"))
    return None if pool in (None, "") else str(pool)


def unique(intervals: Iterable[Interval]) -> list[Interval]:
    """One interval per (pool, endpoint, start), oldest first: saved files overlap; the last
    wins."""
    kept = {(i.pool, i.endpoint, i.start): i for i in intervals}
    return sorted(kept.values(), key=lambda i: (i.start, i.pool is not None, i.pool or "",
                                                i.priority))


_DEPLOYMENT_URL = re.compile(r"^([a-z][a-z0-9+.-]*://[^/?#]+)(/openai/deployments/[^/?#]+)",
                             re.IGNORECASE)


def deployment_identity(uri: str) -> str:
    """The Azure deployment a URI reaches (resource and deployment name), whatever the
    operation or query: /lb's ``.../deployments/D/chat/completions?...`` and a pool's
    ``.../deployments/D`` are one deployment."""
    match = _DEPLOYMENT_URL.match(uri)
    return (match.group(1).lower() + match.group(2)) if match else uri


def _once_per_deployment(intervals: Iterable[Interval]) -> list[Interval]:
    """The intervals that rows adding up deployments count: a deployment shown in several
    lists (/lb and pools) counts once per window when the lists show the same figures.

    A gateway that keeps one set of counters per deployment shows them in every list that
    names it; one that kept them per list shows different figures, which are different calls
    and are all added.
    """
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for i in intervals:
        key = (i.source, deployment_identity(i.endpoint), i.start, i.minutes, i.calls, i.failed,
               i.tokens, i.latency_ms, i.completion)
        if key not in seen:
            seen.add(key)
            kept.append(i)
    return kept


# --- the report ---------------------------------------------------------------------------

def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Row:
    """One line of the report: a (pool, endpoint), a model across endpoints, or the
    instance."""

    scope: str  # "endpoint", "model" or "instance"
    name: str  # endpoint URI, model name or instance name
    priority: int | None = None
    deployment: str = ""
    model: str = ""
    model_source: str = ""
    intervals: int = 0
    calls: int = 0
    failed_calls: int = 0
    failed_share: float = 0.0
    tokens: int = 0
    tpm_avg: float = 0.0
    tpm_p95: float = 0.0
    tpm_peak: float = 0.0
    peak_interval: str = ""
    rpm_avg: float = 0.0
    rpm_peak: float = 0.0
    avg_latency_ms: float = 0.0
    output_share: float = 0.0  # output tokens / all tokens, as used for the PTUs
    output_share_source: str = ""  # "configuration", "measured" or "unknown" (taken as 0)
    tpm_per_ptu: float | None = None
    ptu_p95_needed: float = 0.0
    ptu_p95: int = 0
    ptu_peak_needed: float = 0.0
    ptu_peak: int = 0
    # endpoint rows: the pool's name, None for /lb's list; last, so CSV columns keep their place
    pool: str | None = None
    # beyond here, new columns go last too. "minute": tpmP95, tpmPeak and rpmPeak are over
    # minute buckets (every interval recorded perMinute), "interval": over whole intervals
    tpm_basis: str = "interval"
    peak_minute: str = ""
    # the pool-level demand the rows' entries carry (a pool's first entry records it)
    unmet_calls: int = 0
    unmet_tokens: int = 0
    unmet_minutes: int = 0
    demand_tpm_p95: float = 0.0
    demand_tpm_peak: float = 0.0


def _by_minute(row: Row, raw: list[Interval]) -> Row:
    """Minute peaks and percentiles, and unmet demand, when every interval recorded them."""
    series = plan.minute_series(raw)
    if series is None:
        return row
    figures = plan.minute_figures(series)
    return replace(row, tpm_basis="minute", tpm_avg=figures["tpmAvg"],
                   rpm_avg=figures["rpmAvg"], tpm_p95=figures["tpmP95"],
                   tpm_peak=figures["tpmPeak"], peak_minute=figures["peakMinute"] or "",
                   rpm_peak=figures["rpmPeak"], unmet_calls=figures["unmetCalls"],
                   unmet_tokens=figures["unmetTokens"], unmet_minutes=figures["unmetMinutes"],
                   demand_tpm_p95=figures["demandTpmP95"],
                   demand_tpm_peak=figures["demandTpmPeak"])


def _summarize(row: Row, intervals: list[Interval]) -> Row:
    """Fill the traffic figures of ``row`` from intervals that each stand for one window."""
    tpm = [i.tokens / i.minutes for i in intervals]
    rpm = [i.calls / i.minutes for i in intervals]
    calls = sum(i.calls for i in intervals)
    failed = sum(i.failed for i in intervals)
    peak = max(range(len(tpm)), key=tpm.__getitem__, default=None)
    return replace(
        row, intervals=len(intervals), calls=calls, failed_calls=failed,
        failed_share=round(failed / (calls + failed), 4) if calls + failed else 0.0,
        tokens=round(sum(i.tokens for i in intervals)),
        tpm_avg=round(sum(tpm) / len(tpm), 1) if tpm else 0.0,
        tpm_p95=round(percentile(tpm, 0.95), 1), tpm_peak=round(max(tpm, default=0.0), 1),
        peak_interval="" if peak is None else _iso(intervals[peak].start),
        rpm_avg=round(sum(rpm) / len(rpm), 2) if rpm else 0.0,
        rpm_peak=round(max(rpm, default=0.0), 2),
        avg_latency_ms=round(sum(i.latency_ms * i.calls for i in intervals) / calls, 1)
        if calls else 0.0,
        **_measured_share(intervals))


def _measured_share(intervals: list[Interval]) -> dict[str, Any]:
    """The output share of the intervals that recorded it, else "unknown" (0)."""
    known = [i for i in intervals if i.completion is not None]
    tokens = sum(i.tokens for i in known)
    if not tokens:
        return {"output_share": 0.0, "output_share_source": "unknown"}
    share = sum(i.completion or 0.0 for i in known) / tokens
    return {"output_share": round(min(max(share, 0.0), 1.0), 4),
            "output_share_source": "measured"}


def _sized(row: Row, model: ModelThroughput, configured: float | None) -> Row:
    """PTUs for the row's p95 and peak TPM; a configured output share wins over the measured."""
    if configured is not None:
        row = replace(row, output_share=configured, output_share_source="configuration")
    p95, p95_deploy = model.ptu(row.tpm_p95, row.output_share)
    peak, peak_deploy = model.ptu(row.tpm_peak, row.output_share)
    return replace(row, tpm_per_ptu=model.tpm_per_ptu, ptu_p95_needed=round(p95, 2),
                   ptu_p95=p95_deploy, ptu_peak_needed=round(peak, 2), ptu_peak=peak_deploy)


def _aligned(intervals: list[Interval]) -> list[Interval]:
    """The intervals summed per window of one grid: over endpoints and gateway processes.

    A process closes every endpoint's window at once, one interval apart, with a phase of its
    own; so do the other pods of a deployment, and the same pod after a restart. Per source, a
    run of windows whole intervals apart keeps the phase of its first window ``a``: its window
    ``j`` is window ``floor(a / I) + j`` of the grid. Windows of different processes that
    share a grid window overlap in time and are added up; one process never fills a grid
    window twice, whatever the jitter of its closings.
    """
    by_source: dict[str, list[Interval]] = defaultdict(list)
    for i in intervals:
        by_source[i.source].append(i)
    windows: dict[int, list[Interval]] = defaultdict(list)
    for members in by_source.values():
        anchor: float | None = None
        for i in sorted(members, key=lambda i: i.start):
            t, length = i.start.timestamp(), i.minutes * 60
            if anchor is None or abs((t - anchor) / length - round((t - anchor) / length)) > 0.25:
                anchor = t  # not whole intervals after the run's first window: a new phase
            windows[math.floor(anchor / length) + round((t - anchor) / length)].append(i)
    return [_merged(members) for _, members in sorted(windows.items())]


def _merged(members: list[Interval]) -> Interval:
    calls = sum(m.calls for m in members)
    return Interval(
        instance=", ".join(sorted({m.instance for m in members})), source="", endpoint="",
        priority=0, start=min(m.start for m in members),
        minutes=max(m.minutes for m in members), calls=calls,
        failed=sum(m.failed for m in members), tokens=sum(m.tokens for m in members),
        latency_ms=sum(m.latency_ms * m.calls for m in members) / calls if calls else 0.0,
        # a window where some member did not record its output tokens tells nothing of them
        completion=(None if any(m.completion is None for m in members)
                    else sum(m.completion or 0.0 for m in members)))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _camel(record: Any) -> dict[str, Any]:
    """A dataclass as a dict with the camelCase keys of the gateway's other JSON."""
    return {re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), k): v
            for k, v in asdict(record).items()}


ASSUMPTIONS = [
    "TPM counts the tokens of calls the endpoints answered. With per-minute history "
    "(tpmBasis 'minute'), p95 and peak are over minute buckets, idle minutes as 0; else "
    "(older history) TPM of an interval = kTokensPerWindow * 1000 / interval minutes.",
    "Unmet demand: calls the gateway answered 429/503 itself (every backend busy), counted "
    "by Azure's admission estimate (prompt characters / 4 + max_tokens); reported apart "
    "(unmet*, demandTpm*) and added to the coverage curve's demand.",
    "Coverage: N PTUs serve a minute fully when its demand, output tokens weighed by the "
    "model's throughput ratio, fits N x TPM per PTU; the excess spills to pay-as-you-go. "
    "Monthly figures scale the observed minutes to 730 hours.",
    "Output tokens weigh the model's throughput ratio in input tokens. Their share is "
    "measured from the endpoints' usage (prompt and completion tokens of each interval), "
    "unless the configuration's capacity.outputShare sets it; history without that split "
    "(older saved files) counts as input tokens, which underestimates PTUs.",
    "Cached prompt tokens (which PTUs do not charge) are not known, so none are deducted.",
    "Deployable PTUs: the needed PTUs rounded up to the model's increment, at least its "
    "minimum deployment. p95 is the nearest-rank 95th percentile over the intervals kept.",
    "An endpoint's model comes from the configuration's capacity.endpointModels, else a model "
    "named in its deployment name, else the 'default' row (gpt-4o's figures unless "
    "overridden).",
    "Endpoint rows are per (pool, endpoint): pool null is the endpoints list of POST /lb, "
    "else the deployment pool that lists the backend.",
    "Per-model and instance rows add up the endpoints' intervals window by window, and every "
    "row adds up the gateway processes (pods) whose history is given, each process's windows "
    "placed on one grid; the instance's PTUs are the sum of one deployment per model.",
    "A deployment that /lb and pools both list counts once in a window of the per-model and "
    "instance rows when the lists show the same figures for it (one set of counters per "
    "deployment); different figures are different calls, and are added.",
    "Failures are noOfFailedCalls: throttled (429) and failed calls together (the history "
    "does not tell them apart), so failedShare is an upper bound of the 429 share.",
]


def build_report(intervals: Iterable[Interval], planning: Planning,
                 endpoints: Iterable[tuple[str | None, str, int]] = (), instance: str = "",
                 interval_minutes: float | None = None) -> dict[str, Any]:
    """The capacity report: rows per (pool, endpoint), per model (when several) and the
    instance.

    ``endpoints`` lists (pool, uri, priority) of endpoints to show even without history (the
    live configuration; pool None for /lb's list); the others come from the intervals.
    ``interval_minutes`` is reported when there are no intervals to tell it.
    """
    intervals = unique(intervals)
    by_endpoint: dict[tuple[str | None, str], list[Interval]] = defaultdict(list)
    priority: dict[tuple[str | None, str], int] = {}
    for i in intervals:
        by_endpoint[i.pool, i.endpoint].append(i)
        priority[i.pool, i.endpoint] = i.priority  # the latest entry's priority wins
    for pool, uri, position in endpoints:
        by_endpoint.setdefault((pool, uri), [])
        priority[pool, uri] = position
    rows: list[Row] = []
    models_of: dict[str, str] = {}
    for pool, uri in sorted(by_endpoint, key=lambda k: (k[0] is not None, k[0] or "",
                                                         priority[k], k[1])):
        model, source = planning.model_of(uri)
        models_of[uri] = model
        row = Row(scope="endpoint", name=uri, priority=priority[pool, uri], pool=pool,
                  deployment=deployment_name(uri), model=model, model_source=source)
        summary = _by_minute(_summarize(row, _aligned(by_endpoint[pool, uri])),
                             by_endpoint[pool, uri])
        rows.append(_sized(summary, planning.table[model], planning.output_share))
    # rows over several endpoints count a deployment listed by /lb and by pools once
    intervals = _once_per_deployment(intervals)
    models = sorted(set(models_of.values()))
    model_rows = []
    coverage: dict[str, Any] = {}
    for model in models:
        members = [i for i in intervals if models_of[i.endpoint] == model]
        row = _summarize(Row(scope="model", name=model, model=model), _aligned(members))
        row = _sized(_by_minute(row, members), planning.table[model], planning.output_share)
        model_rows.append(row)
        covered = _coverage(members, row, planning)
        if covered is not None:
            coverage[model] = covered
    instances = sorted({i.instance for i in intervals})
    name = instance or ", ".join(instances)
    total = _by_minute(_summarize(Row(scope="instance", name=name, model=", ".join(models)),
                                  _aligned(intervals)), intervals)
    if len(model_rows) == 1:
        total = _sized(total, planning.table[models[0]], planning.output_share)
    else:
        total = replace(total,
                        ptu_p95_needed=round(sum(r.ptu_p95_needed for r in model_rows), 2),
                        ptu_p95=sum(r.ptu_p95 for r in model_rows),
                        ptu_peak_needed=round(sum(r.ptu_peak_needed for r in model_rows), 2),
                        ptu_peak=sum(r.ptu_peak for r in model_rows))
        rows.extend(model_rows)
    rows.append(total)
    minutes = sorted({i.minutes for i in intervals}) or [interval_minutes]
    warnings = []
    if len(minutes) > 1:
        warnings.append(f"the inputs mix interval lengths ({minutes} min): windows of "
                        "different lengths are added up as if they were the same")
    return {
        "instanceName": name,
        "generatedAt": _iso(datetime.now(UTC)),
        "intervalMinutes": minutes[0] if len(minutes) == 1 else minutes,
        "from": _iso(intervals[0].start) if intervals else None,
        "to": _iso(intervals[-1].start) if intervals else None,
        "sources": sorted({i.source for i in intervals}),
        "deploymentType": planning.deployment_type,
        "outputShare": planning.output_share,
        "rows": [_camel(r) for r in rows],
        "coverage": coverage,
        "recommendation": _recommendation(coverage, planning.target),
        "minuteDemand": _minute_demand(intervals),
        "priceTable": {"source": PRICE_SOURCE,
                       "models": {m: _camel(p) for m, p in sorted(planning.prices.items())}},
        "ptuTable": {"source": TABLE_SOURCE,
                     "models": {m: _camel(t) for m, t in sorted(planning.table.items())}},
        "assumptions": ASSUMPTIONS,
        "warnings": warnings,
        "status": "OK",
    }


def _coverage(members: list[Interval], row: Row, planning: Planning
              ) -> dict[str, Any] | None:
    """The coverage curve and costs of one model's intervals (None without minute figures)."""
    series = plan.minute_series(members)
    if series is None or not series.minutes:
        return None
    return plan.coverage(series, planning.table[row.model], planning.prices.get(row.model),
                         row.output_share, planning.target,
                         configured=planning.output_share is not None)


def _recommendation(coverage: Mapping[str, Any], target: float) -> dict[str, Any]:
    """The recommended and cheapest mixes summed over models, priced per month."""
    if not coverage:
        return {"target": target, "available": False,
                "why": "no interval recorded per-minute figures"}
    priced = all(c["payAsYouGoPerMonth"] is not None for c in coverage.values())
    summary: dict[str, Any] = {
        "target": target, "available": True,
        "ptu": {m: c["recommended"]["ptu"] for m, c in coverage.items()},
        "minutesServedShare": {m: c["recommended"]["minutesServedShare"]
                               for m, c in coverage.items()},
        "spillTokensPerMonth": sum(c["recommended"]["spillTokensPerMonth"]
                                   for c in coverage.values()),
        "priced": priced,
    }
    if priced:
        options = next(iter(coverage.values()))["recommended"]["costPerMonth"]
        summary["payAsYouGoPerMonth"] = round(sum(c["payAsYouGoPerMonth"]
                                                  for c in coverage.values()), 2)
        summary["recommendedPerMonth"] = {
            o: round(sum(c["recommended"]["costPerMonth"][o] for c in coverage.values()), 2)
            for o in options}
        summary["cheapest"] = {m: c["cheapest"] for m, c in coverage.items()}
        summary["cheapestPerMonth"] = round(sum(c["cheapest"]["costPerMonth"]
                                                for c in coverage.values()), 2)
    return summary


def _minute_demand(intervals: list[Interval]) -> dict[str, Any] | None:
    """Served and unmet tokens per minute of the instance, for the dashboard's chart."""
    series = plan.minute_series(intervals)
    if series is None:
        return None
    return {"minuteSeconds": series.seconds, "minutes": plan.series_json(series)}


def live_report(metrics_document: Mapping[str, Any], section: Mapping[str, Any] | None
                ) -> dict[str, Any]:
    """The report over what a running gateway keeps in memory."""
    intervals = intervals_from_metrics(metrics_document)
    endpoints = [(pool, e["endpoint"], e["priority"])
                 for pool, e in _endpoints_of(metrics_document)]
    report = build_report(intervals, Planning.from_section(section), endpoints,
                          instance=metrics_document.get("instanceName", ""),
                          interval_minutes=metrics_document.get("collectionInterval"))
    if "clientMetrics" in metrics_document:  # client keys are configured
        status = report.pop("status")
        report["clients"] = clients.client_rows(clients.from_metrics(metrics_document))
        report["status"] = status
    return report


# --- output: a readable table and CSV ------------------------------------------------------

COLUMNS = [  # (title, key of a report row, format)
    ("pool", "pool", "{}"), ("#", "priority", "{}"), ("deployment", "deployment", "{}"),
    ("model", "model", "{}"), ("calls", "calls", "{}"), ("failed", "failedCalls", "{}"),
    ("fail%", "failedShare", "{:.1%}"), ("tokens", "tokens", "{}"),
    ("TPM avg", "tpmAvg", "{:.0f}"), ("TPM p95", "tpmP95", "{:.0f}"),
    ("TPM peak", "tpmPeak", "{:.0f}"), ("RPM avg", "rpmAvg", "{:.1f}"),
    ("RPM peak", "rpmPeak", "{:.1f}"), ("ms avg", "avgLatencyMs", "{:.0f}"),
    ("out%", "outputShare", "{:.0%}"), ("PTU p95", "ptuP95", "{}"), ("PTU peak", "ptuPeak", "{}"),
]
TEXT_COLUMNS = {"pool", "deployment", "model"}


def _cell(row: Mapping[str, Any], key: str, form: str) -> str:
    if row["scope"] != "endpoint":
        if key == "pool":
            return ""
        if key == "deployment":
            return f"({row['scope']})" if row["scope"] == "instance" else "(all)"
    elif key == "pool":
        return pool_label(row.get("pool"))
    value = row[key]
    return "" if value is None else form.format(value)


def row_label(row: Mapping[str, Any]) -> str:
    """``gpt-4o · 0 primary``: the list, the priority in it and the deployment."""
    return f"{pool_label(row.get('pool'))} · {row['priority']} {row['deployment'] or row['name']}"


def model_note(row: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """Where an endpoint row's model comes from, in words."""
    model, source = row["model"], row["modelSource"]
    if source == "config":
        return f"model {model}, from the configuration (capacity.endpointModels)"
    if source == "deployment":
        return f"model {model}, from the deployment's name"
    table = report["ptuTable"]["models"]
    figures = ("gpt-4o's figures" if table.get(DEFAULT_MODEL) == table.get(DEFAULT_LIKE)
               else "figures from the configuration")
    return (f"model not known (none in the deployment's name): the table's {model} row, "
            f"{figures}")


def format_table(report: Mapping[str, Any]) -> str:
    """The report as aligned text, endpoints first, then models and the instance."""
    cells = [[title for title, _, _ in COLUMNS]]
    cells += [[_cell(r, key, form) for _, key, form in COLUMNS] for r in report["rows"]]
    widths = [max(len(line[c]) for line in cells) for c in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) if key in TEXT_COLUMNS else v.rjust(w)
                       for (_, key, _), v, w in zip(COLUMNS, line, widths, strict=True)
                       ).rstrip()
             for line in cells]
    minutes = report["intervalMinutes"]
    lines[1:1] = ["-" * len(lines[0])]
    lines.insert(0, f"Capacity of {report['instanceName'] or 'the gateway'}: intervals of "
                    f"{minutes} min from {report['from']} to {report['to']}; PTUs for "
                    f"{report['deploymentType']} deployments, output share "
                    + ("measured per row" if report["outputShare"] is None
                       else f"{report['outputShare']:.0%}"))
    lines.append("")
    lines += [f"{row_label(r)}  {r['name']}  {model_note(r, report)}"
              for r in report["rows"] if r["scope"] == "endpoint"]
    lines += coverage_lines(report)
    lines.append(f"pool {LB_LABEL}: the endpoints list of POST /lb")
    lines.append(f"PTU table: {report['ptuTable']['source']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def _money(value: float | None) -> str:
    return "no price" if value is None else f"${value:,.0f}"


def coverage_lines(report: Mapping[str, Any]) -> list[str]:
    """The decision in words: per model the coverage curve, then the recommended and cheapest
    mixes with their monthly cost."""
    coverage, advice = report.get("coverage") or {}, report.get("recommendation") or {}
    if not coverage:
        return ["coverage: not available (no interval recorded per-minute figures)"]
    total = report["rows"][-1]
    lines = [f"demand per minute: served peak {total['tpmPeak']:,.0f} TPM; unmet (the "
             f"gateway's own 429/503, every backend busy) {total['unmetCalls']} calls, "
             f"{total['unmetTokens']:,} estimated tokens, in {total['unmetMinutes']} minutes; "
             f"served + unmet peak {total['demandTpmPeak']:,.0f} TPM"]
    for model, c in coverage.items():
        lines.append(f"coverage of {model} over {c['minutes']} minutes "
                     f"(buckets of {c['minuteSeconds']:g} s; share of minutes fully served, "
                     "tokens per month spilled to pay-as-you-go):")
        lines += [f"  {p['ptu']:>5} PTU  {p['minutesServedShare']:7.1%}  "
                  f"{p['spillTokensPerMonth']:>14,} spilled/month" for p in c["curve"]]
        best = c["recommended"]
        lines.append(f"  recommended for {c['target']:.0%} of minutes: {best['ptu']} PTU "
                     f"({best['minutesServedShare']:.1%} served fully, "
                     f"{best['spillTokensPerMonth']:,} tokens/month spilled)")
        if c["cheapest"]:
            cheap = c["cheapest"]
            lines.append(f"  per month: all pay-as-you-go {_money(c['payAsYouGoPerMonth'])}; "
                         "recommended " + ", ".join(f"{o} {_money(v)}" for o, v in
                                                    best["costPerMonth"].items())
                         + "; cheapest " + (f"{cheap['ptu']} PTU {cheap['billing']}"
                                            if cheap["ptu"] else "pay-as-you-go only")
                         + f" {_money(cheap['costPerMonth'])}")
    if advice.get("priced"):
        lines.append(f"all models per month: pay-as-you-go "
                     f"{_money(advice['payAsYouGoPerMonth'])}, recommended (monthly "
                     f"reservation) {_money(advice['recommendedPerMonth']['monthlyReservation'])}"
                     f", cheapest {_money(advice['cheapestPerMonth'])}")
    lines.append(f"prices: {report['priceTable']['source']}")
    return lines


def write_csv(report: Mapping[str, Any], out: TextIO) -> None:
    """The report's rows, one a line, with the JSON's field names as the header."""
    writer = csv.DictWriter(out, fieldnames=list(report["rows"][0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(report["rows"])


# --- the command line ---------------------------------------------------------------------

def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The inputs both commands read: saved /metrics answers, history files, the config."""
    parser.add_argument("--metrics", action="append", default=[], metavar="FILE",
                        help="a saved GET /metrics answer (repeatable; overlaps are merged)")
    parser.add_argument("--history", action="append", default=[], metavar="FILE",
                        help="a JSON-lines history file (API_GATEWAY_METRICS_HISTORY_FILE; "
                             "repeatable, e.g. FILE.1 and FILE)")
    parser.add_argument("--config", metavar="FILE",
                        help="the gateway's configuration file, for its capacity section")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_app.capacity",
        description="Capacity report (TPM, RPM, failures, PTU estimate) from saved /metrics "
                    "outputs and metrics history files of the gateway.")
    add_input_arguments(parser)
    parser.add_argument("--interval", type=float, metavar="MINUTES",
                        help="interval length, overriding what the inputs say")
    parser.add_argument("--deployment-type", choices=DEPLOYMENT_TYPES,
                        help="size PTUs for this deployment type (default: the config's, "
                             "else global)")
    parser.add_argument("--output-share", type=float, metavar="SHARE",
                        help="share of tokens that are output tokens, 0-1, for every row "
                             "(default: the --config file's capacity.outputShare if it sets "
                             "one, else measured per row from the history's prompt and "
                             "completion tokens (tokenSplit); a row whose history has no "
                             "split, saved by an older gateway, counts 0)")
    parser.add_argument("--target", type=float, metavar="SHARE",
                        help="share of minutes the recommended PTU count must serve fully, "
                             "0-1 (default: the --config file's capacity.targetCoverage, "
                             "else 0.95)")
    parser.add_argument("--csv", metavar="OUT", help="also write the rows as CSV to OUT")
    parser.add_argument("--clients-csv", metavar="OUT",
                        help="also write the usage by client (calls, 429s, 403s, prompt and "
                             "completion tokens, share of tokens) as CSV to OUT, for "
                             "chargeback")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _read_section(path: str) -> dict[str, Any] | None:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the configuration: {exc}") from None
    if not isinstance(document, dict) or "capacity" not in document:
        return None
    try:
        return CapacitySchema().load(document["capacity"])
    except ValidationError as exc:
        raise InputError(f"{path}: capacity: {exc.messages}") from None


def _load_inputs(args: argparse.Namespace) -> list[Interval]:
    intervals: list[Interval] = []
    for path in args.metrics:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read: {exc}") from None
        intervals += intervals_from_metrics(document, path, args.interval)
    for path in args.history:
        try:
            with open(path, encoding="utf-8") as handle:
                intervals += intervals_from_history(handle, path, args.interval)
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    return intervals


def read_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace,
                command: str) -> tuple[dict[str, Any] | None, list[Interval]] | None:
    """The --config file's capacity section and the intervals of the --metrics and --history
    files, for both commands; None once it has said on stderr what it could not read."""
    if not args.metrics and not args.history:
        parser.error("give at least one --metrics or --history file")
    try:
        section = _read_section(args.config) if args.config else None
        return section, _load_inputs(args)
    except InputError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.output_share is not None and not 0 <= args.output_share <= 1:
        parser.error("--output-share must be between 0 and 1")
    if args.target is not None and not 0 < args.target <= 1:
        parser.error("--target must be above 0 and at most 1")
    if args.interval is not None and not args.interval > 0:
        parser.error("--interval must be a positive number of minutes")
    inputs = read_inputs(parser, args, "capacity")
    if inputs is None:
        return 1
    section, intervals = inputs
    if not intervals:
        print("capacity: the inputs hold no closed interval", file=sys.stderr)
        return 1
    planning = Planning.from_section(section, deployment_type=args.deployment_type,
                                     output_share=args.output_share, target=args.target)
    report = build_report(intervals, planning)
    usage = _client_rows(args)
    if usage:
        report["clients"] = usage
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(format_table(report))
        if usage:
            sys.stdout.write("\n" + clients.format_rows(usage))
    if args.csv:
        with open(args.csv, "w", encoding="utf-8", newline="") as out:
            write_csv(report, out)
    if args.clients_csv:
        with open(args.clients_csv, "w", encoding="utf-8", newline="") as out:
            clients.write_csv(usage, out)
    return 0


def _client_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Usage by client in the inputs (already read once, so readable)."""
    found: clients.ClientIntervals = {}
    for path in args.metrics:
        clients.from_metrics(json.loads(Path(path).read_text(encoding="utf-8")), found)
    for path in args.history:
        with open(path, encoding="utf-8") as handle:
            clients.from_history(handle, found)
    return clients.client_rows(found)

