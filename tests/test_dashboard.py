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
from html.parser import HTMLParser
from pathlib import Path

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
    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        wait_until(lambda: any(h["collectedMetrics"]["noOfApiCalls"] for h in
                               gw.metrics()["endpointMetrics"][1]["metrics"]["history"].values()))
        url = f"{gw.url}/dashboard"
        done = browse(chromium, tmp_path / "profile-dom", url, "--dump-dom")
        shot = tmp_path / "dashboard.png"
        pictured = browse(chromium, tmp_path / "profile-shot", url, f"--screenshot={shot}")
    finally:
        stop.set()
        sender.join(10)

    assert done.returncode == 0, done.stderr[-2000:]
    dom = Elements()
    dom.feed(done.stdout)
    (body, _), = dom.tags("body")
    status = [text for attrs, text in dom.tags("p") if attrs.get("id") == "status"]
    assert body["data-state"] == "ready", status

    # per endpoint: a card with a calls chart (answered, failed) and a TPM chart, drawn
    cards = dom.tags("article", **{"class": "endpoint"})
    assert [a["data-endpoint"] for a, _ in cards] == endpoints
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

    assert pictured.returncode == 0, pictured.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"dashboard screenshot: {shot}")
