"""The operators' files: the Grafana dashboard and the Prometheus alerting rules.

promtool (Debian's prometheus package, installed by scripts/install-ci-tools.sh) checks the
rules and runs their unit tests; every metric name the dashboard and the rules use must be one
a real gateway exports on /prometheus, after traffic or registered at zero.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import chat_body, reply, throttle
from tests.tools import REPO_ROOT, missing_tool

FILES = REPO_ROOT / "k8s-chart" / "files"
DASHBOARD = FILES / "grafana-dashboard.json"
RULES = FILES / "prometheus-rules.yml"
RULES_TEST = FILES / "prometheus-rules.test.yml"
METRIC = re.compile(r"\bapirouter_[a-z0-9_]+")
# a family's samples are named with these suffixes, by type
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                            "_created"),
            "gauge": ("",), "summary": ("_sum", "_count", "_created")}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing_tool("promtool is not on PATH", "bash scripts/install-ci-tools.sh --monitoring "
                                                 "(as root)")
    assert found is not None
    return found


def test_promtool_checks_the_rules(promtool):
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def test_promtool_runs_the_rules_unit_tests(promtool):
    done = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=FILES,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names(text: str) -> set[str]:
    """Every sample name a /prometheus page has or would have: its samples, and the names
    its families' types give them even when they have no sample yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return found


def test_every_metric_the_dashboard_and_rules_use_is_exported(fake, start_gateway):
    throttled = fake(default=throttle("1"))
    served = fake(default=reply(200, chat_body(tokens=50)))
    key = "client-key-monitoring-1"
    client = {"clientKeys": [{"name": "app", "key": key, "tokenQuota": 100_000,
                              "quotaPeriod": "daily"}]}
    gw = start_gateway([throttled.uri("east"), served.uri("west")], sections=client)
    for _ in range(3):
        assert gw.lb(headers={"api-key": key}).status_code == 200
    page = requests.get(f"{gw.url}/prometheus", timeout=10, headers={"api-key": key}).text
    exported = exported_names(page)
    # the quota gauges: three answers of 50 tokens each, settled by their usage
    assert 'apirouter_client_quota_used_tokens{client="app",period="daily"} 150.0' in page
    assert 'apirouter_client_quota_tokens{client="app",period="daily"} 100000.0' in page
    assert "apirouter_backend_calls_total" in exported  # the page was read

    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}
    rules = yaml.safe_load(RULES.read_text())
    used_by_rules = {name for group in rules["groups"] for rule in group["rules"]
                     for name in METRIC.findall(rule["expr"])}
    assert used and used_by_rules
    assert used - exported == set(), "the dashboard uses metrics the gateway does not export"
    assert used_by_rules - exported == set(), "the rules use metrics the gateway does not export"
    # what the dashboard promised to show is there
    for name in ("apirouter_backend_calls_total", "apirouter_skips_total",
                 "apirouter_backend_latency_seconds_bucket",
                 "apirouter_time_to_first_token_seconds_bucket",
                 "apirouter_endpoint_cooldown_seconds", "apirouter_tokens_total",
                 "apirouter_client_tokens_total", "apirouter_client_quota_used_tokens"):
        assert name in used, name


def test_the_dashboard_is_importable_and_provisionable():
    dashboard = json.loads(DASHBOARD.read_text())
    # provisioning from a file needs a uid and no "id"; import needs a title and panels
    assert dashboard["uid"] == "apirouter" and "id" not in dashboard and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target
    kinds = {v["name"]: v["type"] for v in dashboard["templating"]["list"]}
    assert kinds == {"datasource": "datasource", "pool": "query"}


def test_docs_name_the_files():
    docs = (REPO_ROOT / "docs" / "monitoring.md").read_text()
    for path in (DASHBOARD, RULES, RULES_TEST):
        assert str(path.relative_to(REPO_ROOT)) in docs
