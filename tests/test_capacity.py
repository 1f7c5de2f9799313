"""Capacity planning: PTU table and estimate, report, history file, route and command line."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway_app.capacity.history_file import HistoryFile
from gateway_app.capacity.ptu import ModelThroughput, Planning, model_in_name, published_table
from gateway_app.capacity.report import (
    build_report,
    format_table,
    intervals_from_history,
    intervals_from_metrics,
    live_report,
    row_label,
)
from gateway_app.config import ConfigError, parse_config
from gateway_app.routing.metrics import IntervalCounters
from tests.fakes import chat_body, reply, throttle, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
AZURE = "https://res.openai.azure.com/openai/deployments/{}/chat/completions?api-version=2024-10-21"


Traffic = dict[str, list[tuple[int, int, int, float]]]


def endpoint_list(endpoints: Traffic, minutes: float = 1.0) -> list[dict[str, Any]]:
    """/metrics entries: per endpoint URI, intervals of (calls, failed, tokens, latency)."""
    listed = []
    for priority, (uri, intervals) in enumerate(endpoints.items()):
        history = {}
        for n, (calls, failed, tokens, latency) in enumerate(intervals):
            counters = IntervalCounters(api_calls=calls, failed_calls=failed, tokens=tokens,
                                        latency_ms=latency * calls)
            history[str(n)] = counters.history_entry(T0 + n * minutes * 60)
        listed.append({"endpoint": uri, "priority": priority, "metrics": {"history": history}})
    return listed


def metrics_document(endpoints: Traffic, minutes: float = 1.0, instance: str = "gw-1",
                     pools: dict[str, Traffic] | None = None) -> dict[str, Any]:
    """A /metrics document: /lb's ``endpoints`` and, when given, ``deploymentMetrics``."""
    document = {"instanceName": instance, "collectionInterval": minutes, "historyCount": 600,
                "endpointMetrics": endpoint_list(endpoints, minutes)}
    if pools:
        document["deploymentMetrics"] = {name: endpoint_list(backends, minutes)
                                         for name, backends in pools.items()}
    return document


def rows_by_scope(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for row in report["rows"]:
        found.setdefault(row["scope"], []).append(row)
    return found


# --- the table and the estimate -------------------------------------------------------------

def test_published_figures_and_deployment_types():
    table = published_table()
    assert table["gpt-4o"] == ModelThroughput(2500, 15, 5, 4)
    assert table["gpt-4o-mini"] == ModelThroughput(37000, 15, 5, 4)
    assert table["gpt-4.1"].tpm_per_ptu == 3000 and table["gpt-4.1-mini"].tpm_per_ptu == 14900
    assert table["default"] == table["gpt-4o"]
    regional = published_table("regional")
    assert (regional["gpt-4o"].min_ptu, regional["gpt-4o"].increment) == (50, 50)
    assert (regional["gpt-4o-mini"].min_ptu, regional["gpt-4o-mini"].increment) == (25, 25)


@pytest.mark.parametrize(("tpm", "share", "needed", "deploy"), [
    (0, 0.0, 0.0, 0),  # no traffic, no deployment
    (2500, 0.0, 1.0, 15),  # below the minimum: the minimum
    (50_000, 0.0, 20.0, 20),  # exactly on an increment
    (50_001, 0.0, 20.0004, 25),  # just past it: the next increment
    (10_000, 0.25, 7.0, 15),  # a quarter output tokens at 4 input tokens each: 1.75x
])
def test_ptu_estimate_rounds_to_minimum_and_increment(tpm, share, needed, deploy):
    raw, deployable = published_table()["gpt-4o"].ptu(tpm, share)
    assert raw == pytest.approx(needed, abs=1e-4)
    assert deployable == deploy


@pytest.mark.parametrize(("name", "model"), [
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-east", "gpt-4o"),
    ("gpt-4o-mini-east", "gpt-4o-mini"),
    ("prod_GPT-4.1-mini", "gpt-4.1-mini"),
    ("chat-gpt-4.1", "gpt-4.1"),
    ("o3-mini", "o3-mini"),
    ("primary", None),
    ("gpt-4o1", None),  # not a whole word
])
def test_model_from_deployment_name(name, model):
    assert model_in_name(name, published_table()) == model


def test_model_of_an_endpoint_config_first_then_name_then_default():
    planning = Planning.from_section({"endpointModels": {
        "primary": "gpt-4.1", AZURE.format("gpt-4o-west"): "gpt-4o-mini"}})
    assert planning.model_of(AZURE.format("primary")) == ("gpt-4.1", "config")
    assert planning.model_of(AZURE.format("gpt-4o-west")) == ("gpt-4o-mini", "config")
    assert planning.model_of(AZURE.format("gpt-4o-east")) == ("gpt-4o", "deployment")
    assert planning.model_of(AZURE.format("secondary")) == ("default", "default")
    assert planning.model_of("http://127.0.0.1:9/no/deployment") == ("default", "default")


def test_config_section_overrides_the_table():
    planning = Planning.from_section({
        "deploymentType": "regional", "outputShare": 0.2,
        "models": {"gpt-4o": {"minPtu": 100}, "default": {"tpmPerPtu": 1000},
                   "my-finetune": {"tpmPerPtu": 1200, "minPtu": 25, "ptuIncrement": 25}}})
    assert planning.deployment_type == "regional" and planning.output_share == 0.2
    assert planning.table["gpt-4o"] == ModelThroughput(2500, 100, 50, 4)
    assert planning.table["default"].tpm_per_ptu == 1000
    assert planning.table["my-finetune"] == ModelThroughput(1200, 25, 25, 4)
    assert model_in_name("my-finetune-v2", planning.table) == "my-finetune"


def test_configuration_file_accepts_and_checks_the_capacity_section():
    endpoints = [{"uri": AZURE.format("primary"), "apikey": "k"}]
    section = {"deploymentType": "global", "outputShare": 0.1,
               "models": {"gpt-4o": {"tpmPerPtu": 2000}},
               "endpointModels": {"primary": "gpt-4o"}}
    config = parse_config({"endpoints": endpoints, "capacity": section}, {})
    assert config.sections["capacity"] == section
    assert parse_config({"endpoints": endpoints}, {}).sections == {}
    for bad, where in [({"deploymentType": "hourly"}, "capacity.deploymentType"),
                       ({"outputShare": 1.5}, "capacity.outputShare"),
                       ({"models": {"gpt-4o": {"minPtu": 0}}}, "capacity.models.gpt-4o"),
                       ({"models": {"mine": {"minPtu": 5}}}, "capacity.models: mine"),
                       ({"endpointModels": {"primary": "gpt-9"}}, "capacity.endpointModels")]:
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            parse_config({"endpoints": endpoints, "capacity": bad}, {})


# --- the report ----------------------------------------------------------------------------

def test_report_per_endpoint_and_instance():
    east, west = AZURE.format("gpt-4o-east"), AZURE.format("gpt-4o-west")
    # 20 one-minute intervals: east carries 1000 tokens a minute, one peak of 60,000
    east_intervals = [(10, 0, 1000, 200.0)] * 19 + [(30, 10, 60_000, 400.0)]
    west_intervals = [(0, 0, 0, 0.0)] * 19 + [(5, 0, 5000, 1000.0)]
    doc = metrics_document({east: east_intervals, west: west_intervals})
    report = live_report(doc, None)
    rows = rows_by_scope(report)
    assert set(rows) == {"endpoint", "instance"}  # one model: no per-model rows
    first, second = rows["endpoint"]
    assert (second["calls"], second["tpmPeak"], second["model"]) == (5, 5000.0, "gpt-4o")
    assert (first["name"], first["priority"], first["deployment"], first["model"],
            first["modelSource"]) == (east, 0, "gpt-4o-east", "gpt-4o", "deployment")
    assert (first["intervals"], first["calls"], first["failedCalls"]) == (20, 220, 10)
    assert first["failedShare"] == pytest.approx(10 / 230, abs=1e-4)
    assert first["tokens"] == 79_000
    assert first["tpmAvg"] == pytest.approx(3950.0)
    assert first["tpmP95"] == 1000.0  # nearest rank: the 19th of 20 sorted values
    assert first["tpmPeak"] == 60_000.0
    assert first["peakInterval"].startswith("2026-01-01T00:19:00")
    assert first["rpmPeak"] == 30.0
    assert first["avgLatencyMs"] == pytest.approx((190 * 200 + 30 * 400) / 220, abs=0.1)
    assert (first["ptuP95Needed"], first["ptuP95"]) == (0.4, 15)
    assert (first["ptuPeakNeeded"], first["ptuPeak"]) == (24.0, 25)
    total = rows["instance"][0]
    assert (total["name"], total["calls"], total["tokens"]) == ("gw-1", 225, 84_000)
    assert total["tpmPeak"] == 65_000.0  # the two endpoints' last intervals added
    assert (total["ptuPeakNeeded"], total["ptuPeak"]) == (26.0, 30)
    assert report["intervalMinutes"] == 1.0 and report["status"] == "OK"
    assert report["from"].startswith("2026-01-01T00:00:00")
    assert "Microsoft Learn" in report["ptuTable"]["source"]
    assert "2026-04-07" in report["ptuTable"]["source"]
    assert any("429" in a for a in report["assumptions"])


def test_report_with_several_models_sums_one_deployment_per_model():
    doc = metrics_document({AZURE.format("gpt-4o"): [(10, 0, 100_000, 100.0)],
                            AZURE.format("gpt-4o-mini"): [(10, 0, 100_000, 100.0)]})
    rows = rows_by_scope(live_report(doc, None))
    models = {r["name"]: r for r in rows["model"]}
    assert (models["gpt-4o"]["ptuPeakNeeded"], models["gpt-4o"]["ptuPeak"]) == (40.0, 40)
    assert models["gpt-4o-mini"]["ptuPeak"] == 15  # 2.7 needed: the minimum
    total = rows["instance"][0]
    assert total["model"] == "gpt-4o, gpt-4o-mini"
    assert total["ptuPeak"] == 55 and total["tpmPeak"] == 200_000.0


def test_endpoint_without_history_is_listed_with_zeros():
    doc = metrics_document({AZURE.format("gpt-4o"): []})
    report = live_report(doc, None)
    rows = rows_by_scope(report)
    assert rows["endpoint"][0]["intervals"] == 0 and rows["endpoint"][0]["ptuPeak"] == 0
    assert rows["instance"][0]["calls"] == 0
    assert (report["intervalMinutes"], report["from"], report["to"]) == (1.0, None, None)


def test_overlapping_inputs_are_merged():
    uri = AZURE.format("gpt-4o")
    early = metrics_document({uri: [(1, 0, 100, 10.0)] * 3})
    later = metrics_document({uri: [(1, 0, 100, 10.0)] * 5})
    intervals = intervals_from_metrics(early) + intervals_from_metrics(later)
    assert len(intervals) == 8
    report = build_report(intervals, Planning())
    assert rows_by_scope(report)["endpoint"][0]["intervals"] == 5


SIM = "http://127.0.0.1:8080/openai/deployments/{}"  # a pool backend's URI


def test_one_row_per_pool_and_backend_labelled_with_the_pool():
    # the demo's configuration: /lb and the pool "gpt-4o" list the same deployments
    lb = {f"{SIM.format(name)}/chat/completions?api-version=2024-10-21": intervals
          for name, intervals in [("primary", [(3, 1, 300, 100.0)]),
                                  ("secondary", [(0, 0, 0, 0.0)])]}
    pool = {SIM.format("primary"): [(5, 0, 500, 50.0)], SIM.format("secondary"): []}
    report = live_report(metrics_document(lb, pools={"gpt-4o": pool}), None)
    rows = rows_by_scope(report)["endpoint"]
    assert [(r["pool"], r["priority"], r["deployment"]) for r in rows] == [
        (None, 0, "primary"), (None, 1, "secondary"),
        ("gpt-4o", 0, "primary"), ("gpt-4o", 1, "secondary")]
    assert [r["calls"] for r in rows] == [3, 0, 5, 0]
    assert [row_label(r) for r in rows] == [
        "/lb · 0 primary", "/lb · 1 secondary", "gpt-4o · 0 primary", "gpt-4o · 1 secondary"]
    # different figures in /lb and the pool: different calls, added up
    total = rows_by_scope(report)["instance"][0]
    assert (total["calls"], total["tokens"], total["pool"]) == (8, 800, None)
    text = format_table(report)
    assert "\ngpt-4o · 0 primary  http://127.0.0.1:8080/openai/deployments/primary  " in text
    assert [line.split()[:4] for line in text.splitlines()[3:7]] == [
        ["/lb", "0", "primary", "default"], ["/lb", "1", "secondary", "default"],
        ["gpt-4o", "0", "primary", "default"], ["gpt-4o", "1", "secondary", "default"]]


def test_a_deployment_with_one_set_of_counters_counts_once_in_the_totals():
    # a gateway keeping one set of counters per deployment shows them under /lb and the pool
    figures = [(4, 1, 400, 80.0), (2, 0, 200, 60.0)]
    lb = {AZURE.format("gpt-4o-east"): figures}
    pool = {"https://RES.openai.azure.com/openai/deployments/gpt-4o-east": figures}
    report = live_report(metrics_document(lb, pools={"gpt-4o": pool}), None)
    rows = rows_by_scope(report)
    assert [(r["pool"], r["calls"]) for r in rows["endpoint"]] == [(None, 6), ("gpt-4o", 6)]
    total = rows["instance"][0]
    assert (total["calls"], total["failedCalls"], total["tokens"]) == (6, 1, 600)
    assert total["tpmPeak"] == 400.0


def test_legend_says_where_each_model_comes_from():
    doc = metrics_document({AZURE.format("primary"): [(1, 0, 100, 10.0)],
                            AZURE.format("gpt-4o-mini-east"): [(1, 0, 100, 10.0)],
                            AZURE.format("chat"): [(1, 0, 100, 10.0)]})
    text = format_table(live_report(doc, {"endpointModels": {"chat": "gpt-4.1"}}))
    assert "(model default: default)" not in text and ": default)" not in text
    assert (f"/lb · 0 primary  {AZURE.format('primary')}  model not known (none in the "
            "deployment's name): the table's default row, gpt-4o's figures\n") in text
    assert "  model gpt-4o-mini, from the deployment's name\n" in text
    assert "  model gpt-4.1, from the configuration (capacity.endpointModels)\n" in text
    changed = format_table(live_report(doc, {"models": {"default": {"tpmPerPtu": 999}}}))
    assert "default row, figures from the configuration\n" in changed


def test_history_lines_keep_the_pool():
    sink = HistoryFile("unused", "gw-1", 1.0, source="pod-a")
    entry = IntervalCounters(api_calls=1, tokens=100).history_entry(T0)
    lines = [sink.line({"endpoint": AZURE.format("primary"), "priority": 0, **entry}),
             sink.line({"endpoint": SIM.format("primary"), "priority": 0, "deployment": "gpt-4o",
                        **entry}),
             sink.line({"endpoint": SIM.format("primary"), "priority": 0, "pool": "gpt-4o-b",
                        **entry})]
    assert [i.pool for i in intervals_from_history(lines)] == [None, "gpt-4o", "gpt-4o-b"]


def pod_history(source: str, starts: list[float], tokens: list[int]) -> list[str]:
    """History lines of one gateway process: one endpoint, one-minute windows at ``starts``."""
    sink = HistoryFile("unused", "gw-1", 1.0, source=source)
    return [sink.line({"endpoint": AZURE.format("gpt-4o"), "priority": 0,
                       **IntervalCounters(api_calls=1, tokens=n).history_entry(start)})
            for start, n in zip(starts, tokens, strict=True)]


def test_several_pods_are_added_up_window_by_window():
    # two pods of one gateway (same name), windows 20 s out of phase
    pod_a = pod_history("pod-a", [T0 + 60 * k for k in range(5)], [1000, 1000, 9000, 1000, 1000])
    pod_b = pod_history("pod-b", [T0 + 20 + 60 * k for k in range(5)],
                        [2000, 2000, 2000, 8000, 2000])
    report = build_report(intervals_from_history(pod_a + pod_b), Planning())
    assert report["sources"] == ["pod-a", "pod-b"] and report["instanceName"] == "gw-1"
    rows = rows_by_scope(report)
    for row in rows["endpoint"] + rows["instance"]:
        assert row["intervals"] == 5 and row["calls"] == 10
        assert (row["tpmPeak"], row["tpmAvg"]) == (11_000.0, 5800.0)
        assert row["peakInterval"].startswith("2026-01-01T00:02:00")


def test_jitter_and_restarts_never_put_two_windows_of_a_pod_together():
    # closings a few milliseconds early or late, around a whole minute
    jittery = [T0 - 0.01 + 60 * k + (0.02 if k % 2 else -0.02) for k in range(6)]
    # a restart: two windows, then a new phase 30 s off
    restarted = [T0 + 600, T0 + 660, T0 + 750, T0 + 810]
    lines = pod_history("pod-a", jittery + restarted, [1000] * 10)
    row = rows_by_scope(build_report(intervals_from_history(lines), Planning()))["instance"][0]
    assert (row["intervals"], row["tpmPeak"]) == (10, 1000.0)


# --- the history file ------------------------------------------------------------------------

def closing(n: int, uri: str = AZURE.format("gpt-4o")) -> list[dict[str, Any]]:
    entry = IntervalCounters(api_calls=2, tokens=3000, latency_ms=100).history_entry(T0 + 60 * n)
    return [{"endpoint": uri, "priority": 0, **entry}]


def test_history_file_appends_lines_that_read_back(tmp_path):
    path = tmp_path / "history.jsonl"
    sink = HistoryFile(str(path), "gw-1", 1.0)
    sink(closing(0))
    sink([])
    sink(closing(1))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert (first["instanceName"], first["intervalMinutes"], first["priority"]) == (
        "gw-1", 1.0, 0)
    assert first["source"]  # the host name when no pod name is given
    assert first["collectedMetrics"]["noOfApiCalls"] == 2
    intervals = intervals_from_history(lines, str(path))
    assert [i.tokens for i in intervals] == [3000.0, 3000.0]


def test_history_file_rotates_past_its_size(tmp_path):
    path = tmp_path / "history.jsonl"
    line_size = len(HistoryFile(str(path), "gw-1", 1.0).line(closing(0)[0]))
    sink = HistoryFile(str(path), "gw-1", 1.0, max_bytes=2 * line_size + 10)  # two lines fit
    for n in range(3):
        sink(closing(n))
    assert len(Path(f"{path}.1").read_text().splitlines()) == 2
    assert len(path.read_text().splitlines()) == 1


def test_history_file_error_is_logged_once_and_never_raised(tmp_path, caplog):
    folder = tmp_path / "missing"
    sink = HistoryFile(str(folder / "history.jsonl"), "gw-1", 1.0)
    with caplog.at_level(logging.INFO, logger="apirouter"):
        for n in range(3):
            sink(closing(n))
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(folder) in errors[0].getMessage()
        folder.mkdir()
        sink(closing(3))
        sink(closing(4))
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len((folder / "history.jsonl").read_text().splitlines()) == 2


# --- served by the gateway -------------------------------------------------------------------

FAST = {"API_GATEWAY_METRICS_CINTERVAL": "0.005",  # 0.3 s intervals
        "API_GATEWAY_METRICS_CHISTORY": "600"}


def test_capacity_route_and_history_file_from_live_traffic(fake, start_gateway, tmp_path):
    history = tmp_path / "history.jsonl"
    first = fake().script(throttle("30"))
    second = fake(default=reply(200, chat_body(tokens=600)))
    gw = start_gateway([first.uri("gpt-4o-east"), second.uri("primary")],
                       env={**FAST, "API_GATEWAY_METRICS_HISTORY_FILE": str(history)})
    for _ in range(5):
        assert gw.lb().status_code == 200

    def served_history() -> bool:
        entries = gw.metrics()["endpointMetrics"][1]["metrics"]["history"].values()
        return sum(e["collectedMetrics"]["noOfApiCalls"] for e in entries) == 5
    wait_until(served_history)

    response = gw.get("capacity")
    assert response.status_code == 200
    report = response.json()
    rows = rows_by_scope(report)
    east, primary = rows["endpoint"]
    assert (east["model"], east["failedCalls"], east["calls"]) == ("gpt-4o", 1, 0)
    assert (primary["model"], primary["modelSource"]) == ("default", "default")
    assert (primary["calls"], primary["tokens"]) == (5, 3000)
    # 600 tokens a call, in 0.3 s intervals: peaks are over minute buckets all the same, so
    # the five calls weigh 3,000 tokens per minute (less if a minute began among them)
    assert primary["tpmBasis"] == "minute"
    assert 0 < primary["tpmPeak"] <= 3000 and primary["tpmPeak"] % 600 == 0
    assert rows["instance"][0]["unmetCalls"] == 0
    assert primary["ptuPeak"] >= 15
    assert report["intervalMinutes"] == 0.005 and report["instanceName"] == "test-gw"
    # the output share comes from the calls' usage: 10 completion tokens of 600
    assert (primary["outputShare"], primary["outputShareSource"]) == (0.0167, "measured")
    assert report["outputShare"] is None
    # output tokens weigh 4 input tokens for gpt-4o (the default row): PTUs grow with them
    assert primary["ptuPeakNeeded"] == pytest.approx(
        primary["tpmPeak"] * (1 - 10 / 600 + 4 * 10 / 600) / 2500, rel=0.01)

    # the history file has the same intervals (and maybe a closing more)
    wait_until(lambda: history.exists() and history.stat().st_size > 0)
    lines = history.read_text().splitlines()
    from_file = intervals_from_history(lines, str(history))
    assert {i.endpoint for i in from_file} == {first.uri("gpt-4o-east"), second.uri("primary")}
    assert sum(i.calls for i in from_file) == 5
    assert all(i.instance == "test-gw" and i.minutes == 0.005 for i in from_file)
    # the per-minute figures are in the file too, beside the original's fields
    assert all(i.per_minute is not None for i in from_file)
    assert sum(f[0] for i in from_file for _, f in i.per_minute or ()) == 5
    assert all("perMinute" in json.loads(line)["collectedMetrics"] for line in lines)


def test_capacity_route_uses_the_configuration_section(fake, start_gateway):
    backend = fake()
    gw = start_gateway([backend.uri("primary")], env=FAST)
    gw.config_file.write_text(json.dumps({
        "endpoints": [{"uri": backend.uri("primary"), "apikey": "k"}],
        "capacity": {"deploymentType": "regional", "endpointModels": {"primary": "gpt-4.1"}}}))
    gw.gateway.reload()
    report = gw.get("capacity").json()
    assert report["deploymentType"] == "regional"
    row = rows_by_scope(report)["endpoint"][0]
    assert (row["model"], row["modelSource"], row["tpmPerPtu"]) == ("gpt-4.1", "config", 3000)
    assert report["ptuTable"]["models"]["gpt-4.1"]["minPtu"] == 50


# --- the command line ------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway_app.capacity", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_cli_prints_a_table_and_writes_csv(tmp_path):
    east, west = AZURE.format("gpt-4o-east"), AZURE.format("secondary")
    saved = tmp_path / "metrics.json"
    saved.write_text(json.dumps(metrics_document(
        {east: [(10, 1, 50_000, 300.0)] * 3, west: [(2, 0, 1000, 500.0)] * 3})))
    history = tmp_path / "history.jsonl"
    sink = HistoryFile(str(history), "gw-1", 1.0)
    for n in range(3, 6):  # three later intervals of east, from the file
        sink(closing(n, east))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"endpoints": [{"uri": west, "apikeyEnv": "UNSET_KEY"}],
                                  "capacity": {"endpointModels": {"secondary": "gpt-4o-mini"}}}))
    out = tmp_path / "capacity.csv"
    done = run_cli("--metrics", str(saved), "--history", str(history), "--config", str(config),
                   "--csv", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warning about the module being loaded twice
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Capacity of gw-1: intervals of 1.0 min")
    header = lines[1].split()
    assert header[:4] == ["pool", "#", "deployment", "model"] and "PTU" in header
    assert any(line.split()[:4] == ["/lb", "0", "gpt-4o-east", "gpt-4o"] for line in lines)
    assert any(line.split()[:4] == ["/lb", "1", "secondary", "gpt-4o-mini"] for line in lines)
    assert any("(instance)" in line for line in lines)
    assert any(line.startswith("PTU table: Microsoft Learn") for line in lines)
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["scope"] for r in rows] == ["endpoint", "endpoint", "model", "model", "instance"]
    assert rows[0]["intervals"] == "6" and rows[0]["calls"] == "36"
    assert rows[0]["tpmPeak"] == "50000.0" and rows[0]["ptuPeak"] == "20"
    assert rows[1]["model"] == "gpt-4o-mini"


def test_cli_json_and_options(tmp_path):
    saved = tmp_path / "metrics.json"
    saved.write_text(json.dumps(metrics_document({AZURE.format("gpt-4o"): [(10, 0, 100_000,
                                                                              100.0)]})))
    done = run_cli("--metrics", str(saved), "--json", "--deployment-type", "regional",
                   "--output-share", "0.5")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["deploymentType"] == "regional" and report["outputShare"] == 0.5
    row = report["rows"][0]
    assert row["ptuPeakNeeded"] == 100.0  # 100,000 TPM * 2.5 / 2,500
    assert row["ptuPeak"] == 100


def test_cli_help_tells_the_real_default_of_output_share(tmp_path):
    done = run_cli("--help")
    assert done.returncode == 0
    help_text = " ".join(done.stdout.split())
    assert ("--output-share SHARE share of tokens that are output tokens, 0-1, for every row "
            "(default: the --config file's capacity.outputShare if it sets one, else measured "
            "per row from the history's prompt and completion tokens (tokenSplit); a row whose "
            "history has no split, saved by an older gateway, counts 0)") in help_text
    # and that is what the command does: measured from the split, else 0 ...
    split = tmp_path / "split.jsonl"
    old = tmp_path / "old.jsonl"
    sink = HistoryFile("unused", "gw-1", 1.0)
    entry = IntervalCounters(api_calls=1, tokens=1000, prompt_tokens=750,
                             completion_tokens=250).history_entry(T0)
    split.write_text(sink.line({"endpoint": AZURE.format("gpt-4o"), "priority": 0, **entry}))
    del entry["collectedMetrics"]["tokenSplit"]
    old.write_text(sink.line({"endpoint": AZURE.format("gpt-4o"), "priority": 0, **entry}))
    for path, share, source in [(split, 0.25, "measured"), (old, 0.0, "unknown")]:
        done = run_cli("--history", str(path), "--json")
        assert done.returncode == 0, done.stderr
        row = json.loads(done.stdout)["rows"][0]
        assert (row["outputShare"], row["outputShareSource"]) == (share, source)
    # ... unless the configuration sets it
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"endpoints": [{"uri": AZURE.format("gpt-4o"),
                                                 "apikey": "k"}],
                                  "capacity": {"outputShare": 0.5}}))
    done = run_cli("--history", str(split), "--config", str(config), "--json")
    row = json.loads(done.stdout)["rows"][0]
    assert (row["outputShare"], row["outputShareSource"]) == (0.5, "configuration")


def test_cli_errors(tmp_path):
    done = run_cli()
    assert done.returncode == 2 and "--metrics or --history" in done.stderr
    done = run_cli("--history", "x.jsonl", "--interval", "0")
    assert done.returncode == 2 and "--interval" in done.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"endpointMetrics": 3}')
    done = run_cli("--metrics", str(broken))
    assert done.returncode == 1 and str(broken) in done.stderr
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"endpoint": "x"}\n')
    done = run_cli("--history", str(bad_line))
    assert done.returncode == 1 and f"{bad_line}:1" in done.stderr
    done = run_cli("--history", str(tmp_path / "absent.jsonl"))
    assert done.returncode == 1 and "absent.jsonl" in done.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    done = run_cli("--history", str(empty))
    assert done.returncode == 1 and "no closed interval" in done.stderr


def test_capacity_report_includes_deployment_pools(fake, start_gateway):
    lb, pooled = fake(), fake(default=reply(200, chat_body(tokens=100)))
    pool = {"deployments": {"gpt-4o-mini": {"backends": [
        {"endpoint": pooled.base, "deployment": "gpt-4o-mini-east", "apikey": "k"}]}}}
    gw = start_gateway([lb.uri("primary")], env=FAST, sections=pool)
    url = f"{gw.base}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    assert gw.http.post(url, json={"messages": []}, timeout=10).status_code == 200

    def pooled_history() -> bool:
        backend = gw.metrics()["deploymentMetrics"]["gpt-4o-mini"][0]
        return any(e["collectedMetrics"]["noOfApiCalls"]
                   for e in backend["metrics"]["history"].values())
    wait_until(pooled_history)
    rows = rows_by_scope(gw.get("capacity").json())
    by_deployment = {r["deployment"]: r for r in rows["endpoint"]}
    assert set(by_deployment) == {"primary", "gpt-4o-mini-east"}
    assert by_deployment["gpt-4o-mini-east"]["calls"] == 1
    assert by_deployment["gpt-4o-mini-east"]["pool"] == "gpt-4o-mini"
    assert by_deployment["primary"]["pool"] is None
    assert by_deployment["gpt-4o-mini-east"]["model"] == "gpt-4o-mini"  # from the name


# --- minute figures, coverage, cost (issue 21) -----------------------------------------------

def minute_entry(start: float, per_minute: dict[int, tuple[int, int, int, int]],
                 minutes: float) -> dict[str, Any]:
    """A history entry of ``minutes`` starting at ``start`` whose minute ``n`` (from the start)
    saw (calls, prompt tokens, unmet calls, unmet tokens)."""
    counters = IntervalCounters()
    for n, (calls, prompt, unmet_calls, unmet) in per_minute.items():
        counters.api_calls += calls
        counters.tokens += prompt
        counters.prompt_tokens += prompt
        counters.minutes[int(start // 60) + n] = [calls, 0, prompt, 0, calls + unmet_calls,
                                                  prompt + unmet, unmet_calls, unmet]
    return counters.history_entry(start)


def minute_document(entries: list[dict[str, Any]], minutes: float) -> dict[str, Any]:
    return {"instanceName": "gw-1", "collectionInterval": minutes, "historyCount": 600,
            "endpointMetrics": [{"endpoint": AZURE.format("gpt-4o-a"), "priority": 0,
                                 "metrics": {"history": {str(n): e
                                                         for n, e in enumerate(entries)}}}]}


def test_minute_peaks_of_an_hour_interval_with_a_known_burst():
    # one 60-minute interval: 1,000 tokens every minute, but minute 37 had 60,000 served and
    # 20,000 more the gateway refused (every backend busy)
    quiet = {n: (1, 1000, 0, 0) for n in range(60)}
    quiet[37] = (30, 60_000, 4, 20_000)
    report = build_report(intervals_from_metrics(minute_document([minute_entry(T0, quiet, 60)],
                                                                 60)), Planning())
    row = rows_by_scope(report)["endpoint"][0]
    assert row["tpmBasis"] == "minute"
    assert row["tpmAvg"] == pytest.approx((59 * 1000 + 60_000) / 60, abs=0.1)  # the hour: same
    assert (row["tpmPeak"], row["tpmP95"]) == (60_000, 1000)  # not 1,983, the hour's average
    assert row["peakMinute"] == "2026-01-01T00:37:00.000+00:00"
    assert row["rpmPeak"] == 30
    assert (row["unmetCalls"], row["unmetTokens"], row["unmetMinutes"]) == (4, 20_000, 1)
    assert row["demandTpmPeak"] == 80_000
    assert ("unmet (the gateway's own 429/503, every backend busy) 4 calls, 20,000 estimated "
            "tokens, in 1 minutes; served + unmet peak 80,000 TPM") in format_table(report)
    # the PTUs follow the minute peak: 60,000 / 2,500 = 24 -> 25 deployable
    assert (row["ptuPeakNeeded"], row["ptuPeak"]) == (24.0, 25)
    served = {m["start"]: m for m in report["minuteDemand"]["minutes"]}
    assert len(served) == 60
    assert (served["2026-01-01T00:37:00.000+00:00"]["servedTokens"],
            served["2026-01-01T00:37:00.000+00:00"]["unmetTokens"]) == (60_000, 20_000)


def test_minute_peaks_add_up_intervals_that_share_a_minute():
    # 0.5-minute intervals: two of them fill one minute bucket
    first = minute_entry(T0, {0: (1, 700, 0, 0)}, 0.5)
    second = minute_entry(T0 + 30, {0: (1, 500, 0, 0)}, 0.5)
    row = rows_by_scope(build_report(intervals_from_metrics(
        minute_document([first, second], 0.5)), Planning()))["endpoint"][0]
    assert (row["tpmBasis"], row["tpmPeak"]) == ("minute", 1200)


HAND = {"models": {"test": {"tpmPerPtu": 1000, "minPtu": 1, "ptuIncrement": 1,
                            "outputRatio": 1}},
        "endpointModels": {"gpt-4o-a": "test"},
        "prices": {"test": {"ptuHourly": 1, "ptuMonthly": 200, "ptuYearly": 150,
                            "inputPer1k": 0.01, "outputPer1k": 0.03}}}


def test_coverage_and_cost_on_a_hand_computed_example():
    # four minutes of 1,000, 1,000, 2,000 and 4,000 input tokens; 1 PTU serves 1,000 a minute
    entry = minute_entry(T0, {0: (1, 1000, 0, 0), 1: (1, 1000, 0, 0), 2: (1, 2000, 0, 0),
                              3: (1, 4000, 0, 0)}, 4)
    planning = Planning.from_section(HAND)
    report = build_report(intervals_from_metrics(minute_document([entry], 4)), planning)
    c = report["coverage"]["test"]
    # a month is 730 h = 43,800 minutes: 10,950 times the 4 minutes seen
    assert [(p["ptu"], p["minutesServedShare"], p["spillTokens"], p["spillTokensPerMonth"])
            for p in c["curve"]] == [(1, 0.5, 4000, 43_800_000), (2, 0.75, 2000, 21_900_000),
                                     (3, 0.75, 1000, 10_950_000), (4, 1.0, 0, 0)]
    # 8,000 tokens -> 87.6 M a month at $0.01 per 1,000
    assert c["payAsYouGoPerMonth"] == 876.0
    best = c["recommended"]
    assert best["ptu"] == 4  # 95% of minutes needs the peak here
    assert best["costPerMonth"] == {"hourly": 2920.0, "monthlyReservation": 800.0,
                                    "yearlyReservation": 600.0}
    # yearly: 1 PTU 150 + 438 spilled = 588; 2: 300 + 219 = 519; 3: 450 + 109.5; 4: 600
    assert c["cheapest"] == {"ptu": 2, "billing": "yearlyReservation", "costPerMonth": 519.0}
    advice = report["recommendation"]
    assert (advice["ptu"], advice["payAsYouGoPerMonth"], advice["cheapestPerMonth"]) == (
        {"test": 4}, 876.0, 519.0)
    # a lower target settles for fewer PTUs and says what spills
    lower = build_report(intervals_from_metrics(minute_document([entry], 4)),
                         Planning.from_section(HAND, target=0.7))
    assert lower["coverage"]["test"]["recommended"]["ptu"] == 2
    assert lower["recommendation"]["spillTokensPerMonth"] == 21_900_000
    text = format_table(report)
    assert "recommended for 95% of minutes: 4 PTU" in text
    assert "cheapest 2 PTU yearlyReservation $519" in text


def test_prices_are_cited_and_overridable():
    planning = Planning.from_section({"prices": {"gpt-4o": {"inputPer1k": 0.5}}})
    assert planning.prices["gpt-4o"].input_per_1k == 0.5
    assert planning.prices["gpt-4o"].output_per_1k == 0.01  # kept
    assert Planning().prices["default"] == Planning().prices["gpt-4o"]
    with pytest.raises(ConfigError):
        parse_config({"endpoints": [{"uri": AZURE.format("a"), "apikey": "k"}],
                      "capacity": {"prices": {"gpt-4o": {"inputPer1k": -1}}}}, {})
    with pytest.raises(ConfigError):
        parse_config({"endpoints": [{"uri": AZURE.format("a"), "apikey": "k"}],
                      "capacity": {"targetCoverage": 1.5}}, {})


def test_unmet_demand_is_recorded_with_the_calls_estimate(fake, start_gateway):
    busy = fake(default=throttle("30"))
    gw = start_gateway([busy.uri("only")], env=FAST)
    payload = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}
    assert gw.lb(payload).status_code == 429  # the backend's 429: it cools down
    assert gw.lb(payload).status_code == 429  # the gateway's own: nothing to send it to

    def recorded() -> list[dict[str, Any]]:
        history = gw.metrics()["endpointMetrics"][0]["metrics"]["history"].values()
        return [m for e in history for m in e["collectedMetrics"]["perMinute"]["minutes"]]
    wait_until(lambda: sum(m["unmetCalls"] for m in recorded()) == 2)
    minutes = recorded()
    # 400 characters / 4 + max_tokens 50, per call
    assert sum(m["unmetTokens"] for m in minutes) == 2 * 150
    assert sum(m["demandTokens"] for m in minutes) == 2 * 150
    assert sum(m["failedCalls"] for m in minutes) == 1
    rows = rows_by_scope(gw.get("capacity").json())
    assert (rows["instance"][0]["unmetCalls"], rows["instance"][0]["unmetTokens"]) == (2, 300)


def test_minute_buckets_survive_the_clusters_copies_and_sums():
    one = IntervalCounters(api_calls=2, tokens=30)
    one.minutes[100] = [2, 0, 20, 10, 3, 45, 1, 15]
    other = IntervalCounters.from_dict(json.loads(json.dumps(one.as_dict())))  # via Redis
    assert other == one
    other.add(one)
    assert other.minutes == {100: [4, 0, 40, 20, 6, 90, 2, 30]}
    entry = other.history_entry(100 * 60.0)
    assert IntervalCounters.from_entry(entry).minutes == other.minutes
    assert entry["collectedMetrics"]["perMinute"]["minutes"][0]["start"] == (
        "1970-01-01T01:40:00.000+00:00")
