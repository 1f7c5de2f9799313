"""Usage by client, for chargeback: calls and tokens of each client name over the closed
intervals a gateway kept (``clientMetrics`` of /metrics, ``client`` lines of the history file).

Names only: the gateway never records a client's key, so none can appear here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

COUNTERS = ("calls", "rateLimitedCalls", "refusedCalls", "promptTokens", "completionTokens",
            "totalTokens")
CSV_FIELDS = ("client", *COUNTERS, "tokenShare", "from", "to", "intervals")

# (source, client, collectionTime) -> collectedMetrics; a source is a process (or a file)
ClientIntervals = dict[tuple[str, str, str], Mapping[str, Any]]


def from_metrics(document: Mapping[str, Any], found: ClientIntervals | None = None
                 ) -> ClientIntervals:
    """The closed client intervals of a ``GET /metrics`` document."""
    found = {} if found is None else found
    source = str(document.get("instanceName", ""))
    for name, figures in (document.get("clientMetrics") or {}).items():
        for entry in figures.get("history", {}).values():
            found[source, name, entry["collectionTime"]] = entry["collectedMetrics"]
    return found


def from_history(lines: Iterable[str], found: ClientIntervals | None = None) -> ClientIntervals:
    """The client lines of a JSON-lines history file (others are skipped)."""
    found = {} if found is None else found
    for line in lines:
        if '"client"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the endpoint reader reports unreadable lines
        if not isinstance(entry, dict) or "client" not in entry:
            continue
        source = str(entry.get("source") or entry.get("instanceName", ""))
        found[source, str(entry["client"]), entry["collectionTime"]] = entry["collectedMetrics"]
    return found


def client_rows(intervals: ClientIntervals) -> list[dict[str, Any]]:
    """One row per client, most tokens first: its counters summed over every interval and
    source, and its share of all clients' tokens."""
    rows: dict[str, dict[str, Any]] = {}
    for (_source, name, start), figures in sorted(intervals.items(), key=lambda i: i[0][2]):
        row = rows.setdefault(name, {"client": name, **dict.fromkeys(COUNTERS, 0),
                                     "from": start, "to": start, "intervals": 0})
        for key in COUNTERS:
            row[key] += int(figures.get(key, 0))
        row["to"] = start
        row["intervals"] += 1
    total = sum(r["totalTokens"] for r in rows.values())
    for row in rows.values():
        row["tokenShare"] = row["totalTokens"] / total if total else 0.0
    return sorted(rows.values(), key=lambda r: (-r["totalTokens"], r["client"]))


def write_csv(rows: Iterable[Mapping[str, Any]], out: TextIO) -> None:
    """The chargeback CSV: one line per client."""
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in CSV_FIELDS} for row in rows)


def format_rows(rows: list[Mapping[str, Any]]) -> str:
    """Usage by client as aligned text."""
    cells = [["client", "calls", "429", "403", "prompt", "completion", "tokens", "share"]]
    cells += [[r["client"], str(r["calls"]), str(r["rateLimitedCalls"]), str(r["refusedCalls"]),
               str(r["promptTokens"]), str(r["completionTokens"]), str(r["totalTokens"]),
               f"{r['tokenShare']:.1%}"] for r in rows]
    widths = [max(len(line[c]) for line in cells) for c in range(len(cells[0]))]
    lines = ["  ".join(v.ljust(w) if c == 0 else v.rjust(w)
                       for c, (v, w) in enumerate(zip(line, widths, strict=True)))
             for line in cells]
    return "\n".join(["Usage by client:", lines[0], "-" * len(lines[0]), *lines[1:]]) + "\n"
