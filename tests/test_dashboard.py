"""The dashboard: served with its assets, and rendered by a real headless chromium.

The browser is a chromium on PATH (scripts/install-browser.sh installs Debian's; the test only
looks for it). Without one, the browser test is skipped with that command, unless
API_GATEWAY_REQUIRE_TOOLS=1 (as in CI): then it fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gateway_app.web.capacity import DASHBOARD_DIR
from tests.fakes import chat_body, reply, throttle, wait_until
from tests.tools import missing_tool

FAST = {"API_GATEWAY_METRICS_CINTERVAL": "0.005",  # 0.3 s intervals
        "API_GATEWAY_METRICS_CHISTORY": "600"}
BROWSER_TIMEOUT_S = 90


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium command on PATH."""
    found = shutil.which("chromium")
    if found is None:
        missing_tool("chromium is not on PATH", "bash scripts/install-browser.sh (as root)")
    assert found is not None
    return found


def browse(chromium: str, profile: Path, url: str, *action: str) -> subprocess.CompletedProcess:
    """Load ``url`` in a fresh headless chromium that can reach nothing but 127.0.0.1."""
    profile.mkdir()
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               # any other host fails to resolve: the page must need nothing from outside
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
               # virtual time stops while requests are pending, so the page's first refresh
               # (three fetches) completes within the budget however slow the machine is
               "--virtual-time-budget=4000", "--window-size=1280,1600", "--hide-scrollbars",
               *action, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
                          check=False)


class Elements(HTMLParser):
    """Every start tag of a document, with its attributes and the text directly in it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text: list[str] = []
        self.found.append((tag, {k: v or "" for k, v in attrs}, text))
        self._open.append(text)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self._open[-1].append(data.strip())

    def tags(self, tag: str, **attrs: str) -> list[tuple[dict[str, str], list[str]]]:
        return [(a, t) for name, a, t in self.found
                if name == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def test_dashboard_page_and_assets_are_served_from_the_package(fake, start_gateway):
    gw = start_gateway([fake()])
    page = gw.get("dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'src="dashboard/dashboard.js"' in page.text
    for name, kind in [("dashboard.js", "javascript"), ("dashboard.css", "text/css")]:
        asset = gw.get(f"dashboard/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        assert asset.content == (DASHBOARD_DIR / name).read_bytes()
    assert gw.get("dashboard/nothing.js").status_code == 404
    assert gw.get("dashboard/..%2Fcapacity.py").status_code == 404


def test_dashboard_assets_name_no_other_host():
    for path in DASHBOARD_DIR.iterdir():
        urls = re.findall(r"\w+://[^\s\"'`)]+", path.read_text())
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, path.name  # SVG's namespace


def loaded(done: subprocess.CompletedProcess) -> Elements:
    """The DOM Chromium dumped, after checking that it ran."""
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Elements()
    dom.feed(done.stdout)
    return dom


def browse_during(traffic: Callable[[], None], stop: threading.Event,
                  ready: Callable[[], Any], chromium: str, tmp_path: Path, url: str,
                  shot: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Keep ``traffic`` flowing in a thread; once ``ready``, load ``url`` twice in Chromium:
    its DOM, then a screenshot to ``shot``."""
    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        wait_until(ready)
        done = browse(chromium, tmp_path / "profile-dom", url, "--dump-dom")
        pictured = browse(chromium, tmp_path / "profile-shot", url, f"--screenshot={shot}")
    finally:
        stop.set()
        sender.join(10)
    return done, pictured


def test_dashboard_renders_charts_cooldowns_and_capacity_in_chromium(
        chromium, fake, start_gateway, tmp_path):
    throttled = fake(default=throttle("120"))
    busy = fake(default=reply(200, chat_body(tokens=900), delay=0.01))
    spare = fake(default=reply(200, chat_body(tokens=300)))
    endpoints = [throttled.uri("gpt-4o-east"), busy.uri("gpt-4o-mini-west"), spare.uri("spare")]
    gw = start_gateway(endpoints, env=FAST)

    stop = threading.Event()

    def traffic() -> None:  # keeps calls flowing while the browser loads the page
        for _ in range(200):
            if stop.wait(0.02):
                return
            gw.lb()
    shot = tmp_path / "dashboard.png"
    done, pictured = browse_during(
        traffic, stop, lambda: any(
            h["collectedMetrics"]["noOfApiCalls"]
            for h in gw.metrics()["endpointMetrics"][1]["metrics"]["history"].values()),
        chromium, tmp_path, f"{gw.url}/dashboard", shot)

    dom = loaded(done)
    (body, _), = dom.tags("body")
    status = [text for attrs, text in dom.tags("p") if attrs.get("id") == "status"]
    assert body["data-state"] == "ready", status

    # per endpoint: a card with a calls chart (answered, failed) and a TPM chart, drawn
    cards = dom.tags("article", **{"class": "endpoint"})
    assert [a["data-endpoint"] for a, _ in cards] == endpoints
    assert [" ".join(text) for _, text in dom.tags("h3")] == [
        "/lb · 0 gpt-4o-east", "/lb · 1 gpt-4o-mini-west", "/lb · 2 spare"]
    charts = dom.tags("svg", **{"class": "chart"})
    assert len(charts) == 2 * len(endpoints)
    lines = [a["points"].split() for a, _ in dom.tags("polyline")]
    assert len(lines) == 3 * len(endpoints)
    assert all(len(points) >= 2 for points in lines)
    baseline = max(float(p.split(",")[1]) for points in lines for p in points)  # y of 0
    raised = [points for points in lines if any(float(p.split(",")[1]) < baseline
                                                for p in points)]
    assert len(raised) >= 3  # the traffic shows: answered calls, TPM, and the 429

    # the cooldown table: the throttled endpoint is cooling down
    assert len(dom.tags("tr", data_available="false")) == 1
    assert len(dom.tags("tr", data_available="true")) == 2
    cells = [" ".join(text) for _, text in dom.tags("td")]
    assert "cooling down" in cells and "throttled" in cells

    # the capacity table: one row per endpoint, one per model, the instance
    rows = dom.tags("tr", data_scope="endpoint")
    assert len(rows) == len(endpoints)
    models = [a["title"] for a, _ in dom.tags("tr", data_scope="model")]
    assert models == ["default", "gpt-4o", "gpt-4o-mini"]  # "spare" names no model
    assert len(dom.tags("tr", data_scope="instance")) == 1
    assert sum(len(text) for _, text in dom.tags("td")) > 30

    # the decision: served vs unmet per minute, a coverage curve per model, the advice
    decision = dom.tags("svg", **{"class": "chart decision"})
    labels = [a["aria-label"] for a, _ in decision]
    assert labels[0] == "Tokens per minute, whole instance: served vs unmet"
    assert sorted(re.sub(r"\(\d+ minutes?\)", "", label) for label in labels[1:]) == sorted(
        f"{m}: share of minutes fully served, by PTUs " for m in _coverage_models(gw))
    advice = [" ".join(text) for _, text in dom.tags("li") if _]
    assert any(re.search(r"gpt-4o-mini: \d+ PTU serve [\d.]+% of the \d+ minutes? fully "
                         r"\(target 95%\)", a) for a in advice), advice
    ptu_ticks = [" ".join(t) for _, t in dom.tags("text", **{"class": "axis tick-label ptu"})]
    assert len(ptu_ticks) >= 2 * len(labels[1:]) and all(t.isdigit() for t in ptu_ticks)
    assert dom.tags("circle", **{"class": "recommended"})

    assert pictured.returncode == 0, pictured.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"dashboard screenshot: {shot}")


def _coverage_models(gw: Any) -> list[str]:
    """The models the report draws a coverage curve for."""
    return list(gw.get("capacity").json()["coverage"])


def pool_backend(endpoint: str, deployment: str) -> dict[str, str]:
    return {"endpoint": endpoint, "deployment": deployment, "apikey": f"key-{deployment}"}


def test_dashboard_charts_every_pool_backend_in_chromium(chromium, fake, start_gateway, tmp_path):
    east = fake(default=reply(200, chat_body(tokens=900), delay=0.01))
    west = fake(default=reply(200, chat_body(tokens=300)))
    pools = {"deployments": {
        "gpt-4o": {"backends": [pool_backend(east.base, "gpt-4o-east"),
                                pool_backend(west.base, "gpt-4o-west")]},
        "gpt-4o-mini": {"backends": [pool_backend(west.base, "mini")]}}}
    gw = start_gateway([], env=FAST, sections=pools)  # pools only: /lb has no endpoints
    azure = f"{gw.base}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    chat = {"messages": [{"role": "user", "content": "hi"}]}

    stop = threading.Event()

    def traffic() -> None:  # keeps calls flowing through both pools while the browser loads
        for n in range(300):
            if stop.wait(0.02):
                return
            if n % 3:
                gw.http.post(azure, json=chat, timeout=10)
            else:
                gw.http.post(f"{gw.base}/v1/chat/completions",
                             json={"model": "gpt-4o-mini", **chat}, timeout=10)

    def closed_with_calls() -> bool:
        pooled = gw.metrics()["deploymentMetrics"]
        return all(sum(h["collectedMetrics"]["noOfApiCalls"] > 0
                       for h in b["metrics"]["history"].values()) >= 2
                   for name in ("gpt-4o", "gpt-4o-mini") for b in pooled[name][:1])

    shot = tmp_path / "dashboard-pools.png"
    done, pictured = browse_during(traffic, stop, closed_with_calls, chromium, tmp_path,
                                   f"{gw.url}/dashboard", shot)

    dom = loaded(done)
    (body, _), = dom.tags("body")
    assert body["data-state"] == "ready", dom.tags("p", id="status")

    # one card per (pool, backend), named by its pool
    cards = dom.tags("article", **{"class": "endpoint"})
    assert [(a["data-pool"], a["data-endpoint"]) for a, _ in cards] == [
        ("gpt-4o", f"{east.base}/openai/deployments/gpt-4o-east"),
        ("gpt-4o", f"{west.base}/openai/deployments/gpt-4o-west"),
        ("gpt-4o-mini", f"{west.base}/openai/deployments/mini")]
    assert [" ".join(text) for _, text in dom.tags("h3")] == [
        "gpt-4o · 0 gpt-4o-east", "gpt-4o · 1 gpt-4o-west", "gpt-4o-mini · 0 mini"]
    (_, note), = dom.tags("p", id="history-note")
    kept = int(note[0].split()[0])
    assert kept >= 2, note

    # the pools' traffic is charted: answered calls and TPM rise above 0 in both pools
    lines = [a["points"].split() for a, _ in dom.tags("polyline")]
    assert len(lines) == 3 * len(cards) and all(len(points) == kept for points in lines)
    baseline = max(float(p.split(",")[1]) for points in lines for p in points)
    raised = [any(float(p.split(",")[1]) < baseline for p in points) for points in lines]
    assert raised[0] and raised[2]  # gpt-4o-east: answered, TPM
    assert raised[6] and raised[8]  # gpt-4o-mini's only backend: answered, TPM

    # each figure says what it covers, and the time axis has readable ticks
    titles = [" ".join(text) for _, text in dom.tags("dt")]
    assert titles.count("Current interval (still open)") == len(cards)
    last = [t for t in titles if t.startswith("Last closed interval (")]
    assert len(last) == len(cards)
    assert all(re.fullmatch(r"Last closed interval \(\d\d:\d\d:\d\d to \d\d:\d\d:\d\d UTC\)", t)
               for t in last), last
    ticks = [" ".join(text) for _, text in dom.tags("text", **{"class": "axis tick-label"})]
    assert len(ticks) >= 2 * 2 * len(cards)
    assert all(re.fullmatch(r"\d\d:\d\d(:\d\d(\.\d)?)?", t) for t in ticks), ticks
    legends = [" ".join(text) for attrs, text in dom.tags("text")
               if attrs.get("class", "").startswith("legend")]
    # names only: no unlabelled figure
    assert set(legends) == {"answered", "failed", "TPM", "served", "unmet",
                            "minutes served fully"}

    # the state and capacity tables name the pool too
    capacity = dom.tags("tr", data_scope="endpoint")
    assert [a["data-pool"] for a, _ in capacity] == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    cells = [" ".join(text) for _, text in dom.tags("td")]
    assert cells.count("gpt-4o") >= 4 and cells.count("gpt-4o-mini") >= 2

    assert pictured.returncode == 0, pictured.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"dashboard screenshot (pools only): {shot}")


def test_dashboard_shows_unmet_demand_and_a_coverage_curve_in_chromium(
        chromium, start_gateway, tmp_path):
    """Through the simulator, bursts beyond one small deployment's window: the gateway answers
    some calls 429 itself. Buckets of 1 s (API_GATEWAY_METRICS_MINUTE_SECONDS) stand for
    minutes so that a few seconds give a curve of several points."""
    from simulator import SimulatorServer

    deployment = {"name": "gpt-4o-sim", "apikey": "k", "tpm": 600, "rpm": 1000,
                  "window_seconds": 1, "ttft_ms": 0, "ms_per_token": 0}
    with SimulatorServer({"deployments": [deployment]}, host="127.0.0.1", port=0) as sim:
        gw = start_gateway(
            [{"uri": f"{sim.url}/openai/deployments/gpt-4o-sim/chat/completions"
                     "?api-version=2024-10-21", "apikey": "k"}],
            env={**FAST, "API_GATEWAY_METRICS_MINUTE_SECONDS": "1"},
            # 100 tokens a second per PTU: a bucket of 1 s is read as a minute, so 6,000 TPM
            sections={"capacity": {"models": {"gpt-4o": {"tpmPerPtu": 6000, "minPtu": 1,
                                                         "ptuIncrement": 1}}}})
        stop = threading.Event()
        chat = {"messages": [{"role": "user", "content": "x" * 200}], "max_tokens": 50}

        def traffic() -> None:  # bursts of growing size, one a second
            for n in range(40):
                if stop.wait(0.25):
                    return
                for _ in range(1 + n % 5):
                    gw.lb(chat)

        def enough() -> bool:
            report = gw.get("capacity").json()
            return (rows_of(report)["unmetCalls"] > 0
                    and len(report["minuteDemand"]["minutes"]) >= 5)

        shot = tmp_path / "dashboard-decision.png"
        done, pictured = browse_during(traffic, stop, enough, chromium, tmp_path,
                                       f"{gw.url}/dashboard", shot)
    dom = loaded(done)
    labels = [a["aria-label"] for a, _ in dom.tags("svg", **{"class": "chart decision"})]
    assert labels[0] == ("Tokens per minute (buckets of 1 s), whole instance: served vs unmet")
    assert labels[1].startswith("gpt-4o: share of minutes fully served, by PTUs")
    assert dom.tags("rect", **{"class": "bar series-0"})
    assert dom.tags("rect", **{"class": "bar series-1"})  # unmet demand is drawn
    ptu_ticks = [" ".join(t) for _, t in dom.tags("text", **{"class": "axis tick-label ptu"})]
    assert len(ptu_ticks) >= 3, ptu_ticks
    (_, note), = dom.tags("p", id="decision-note")
    assert re.search(r"Unmet demand: [1-9]\d* call", " ".join(note)), note
    assert pictured.returncode == 0, pictured.stderr[-2000:]
    print(f"dashboard screenshot (decision): {shot}")


def rows_of(report: dict[str, Any]) -> dict[str, Any]:
    """The instance row of a capacity report."""
    return report["rows"][-1]
