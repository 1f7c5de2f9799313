"""The one-command demo: a burst through gateway and simulator, scripts/demo.py and traffic.py.

Everything listens on free loopback ports; waits are bounded polls.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from scripts import demo, traffic
from simulator import SimulatorServer
from tests.tools import stop_process

REPO = Path(__file__).resolve().parent.parent
API_VERSION = "2024-10-21"
# rpm 3 over a 2 s window: the fourth call of a burst is throttled, and the first deployment
# is free again about 2 s later
FAST = {"tpm": 100_000, "window_seconds": 2, "ttft_ms": 5, "ms_per_token": 1}
SIM_CONFIG = {"deployments": [
    {"name": "first", "apikey": "sim-key-first", "rpm": 3, **FAST},
    {"name": "second", "apikey": "sim-key-second", "rpm": 1000, **FAST},
]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """``check()``'s first truthy result, or the last falsy one after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(every)


def endpoint_metrics(url: str) -> dict[str, dict[str, Any]]:
    """Deployment name -> its current-interval metrics, from the gateway's /metrics."""
    body = requests.get(f"{url}/metrics", timeout=10).json()
    return {traffic.deployment_label(e["endpoint"]).split()[-1]: e["metrics"]
            for e in body["endpointMetrics"]}


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SIM_CONFIG, host="127.0.0.1", port=0) as sim:
        yield sim


def test_burst_fails_over_then_first_deployment_serves_again(
        simulator: SimulatorServer, start_gateway: Callable[..., Any]) -> None:
    gw = start_gateway([
        {"uri": f"{simulator.url}/openai/deployments/{d['name']}/chat/completions"
                f"?api-version={API_VERSION}", "apikey": d["apikey"]}
        for d in SIM_CONFIG["deployments"]])

    burst = traffic.run_burst(gw.url, calls=12, concurrency=3, max_tokens=5)

    assert [r.status for r in burst.results] == [200] * 12
    assert burst.results[0].endpoint == "0"
    metrics = endpoint_metrics(gw.url)
    first, second = metrics["first"], metrics["second"]
    assert first["apiCalls"] >= 1
    # the burst went past its 3 requests: it was throttled, or passed over once its
    # x-ratelimit-remaining-requests said it was full (headroom routing)
    prometheus = requests.get(f"{gw.url}/prometheus", timeout=10).text
    passed_over = sum(float(line.rsplit(" ", 1)[1]) for line in prometheus.splitlines()
                      if line.startswith("apirouter_skips_total{") and "/first/" in line)
    assert first["failedCalls"] + passed_over >= 1
    assert second["apiCalls"] >= 1
    assert first["apiCalls"] + second["apiCalls"] == 12
    summary = traffic.report(gw.url, burst, traffic.endpoint_map(gw.url) or {})
    assert "12 calls in" in summary
    assert "sim-key" not in summary

    # after the cooldown (the simulator's retry-after-ms, under 2 s) the first one serves again
    served_by = poll(lambda: traffic.send_call(gw.url, 0, 5, False).endpoint == "0", 10)
    assert served_by, "the first deployment did not serve again after its cooldown"
    assert endpoint_metrics(gw.url)["first"]["apiCalls"] == first["apiCalls"] + 1


class Output:
    """Collects a process's output lines from a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> None:
        self._thread.join(5)


def served_rows(text: str) -> dict[str, int]:
    """Deployment name -> calls served, from the burst table of traffic.format_burst."""
    rows = re.findall(r"^\d+\s+\S+ (\S+)\s+(\d+)\s+\d+\s+\d+$", text, re.MULTILINE)
    return {name: int(served) for name, served in rows}


def test_demo_script_shows_failover_and_stops_on_sigterm() -> None:
    port, sim_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--port", str(port), "--sim-port", str(sim_port),
         "--calls", "12", "--max-tokens", "5"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        base = f"http://127.0.0.1:{port}/api/v1/dev/apirouter"
        assert poll(lambda: demo.wait_until_up(f"{base}/healthz", timeout=0.5), 30), output.text
        assert poll(lambda: "following the gateway's log" in output.text, 30), output.text
        text = output.text
        assert "12 calls in" in text
        served = served_rows(text)
        assert served.get("primary", 0) >= 1, text
        assert served.get("secondary", 0) >= 1, text
        assert sum(served.values()) == 12, text
        assert f"/reconfig/{demo.DEMO_KEY}" in text
        assert "DEMO_KEY in scripts/demo.py" in text
        assert "sim-key" not in text
        # the next steps: the dashboard, the capacity report, and the SDKs through the pool
        assert f"  {base}/dashboard\n" in text
        assert f"  curl -s {base}/capacity\n" in text
        assert "python -m gateway_app.capacity --metrics metrics.json" in text
        assert 'through the pool "gpt-4o"' in text
        snippet = re.search(r"^python - <<'EOF'\n(.*?)^EOF$", text, re.MULTILINE | re.DOTALL)
        assert snippet, text
        code = snippet.group(1)
        assert "AzureOpenAI(" in code and "OpenAI(base_url=" in code
        assert code.count('model="gpt-4o"') == 2
        # the snippet as printed works against this demo
        sdk = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, check=False)
        assert sdk.returncode == 0, sdk.stderr[-2000:]
        answers = sdk.stdout.splitlines()
        assert [line.split(":")[0] for line in answers] == ["AzureOpenAI", "OpenAI"], sdk.stdout
        assert all(len(line.split(":", 1)[1].strip()) > 0 for line in answers), sdk.stdout

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, output.text
    finally:
        if proc.poll() is None:  # a failed check: still stop the gateway the demo started
            stop_process(proc)
    output.join()
    assert "stopped the gateway and the simulator" in output.text
    assert demo.port_free(port)
    assert demo.port_free(sim_port)


def test_demo_stops_on_ctrl_c_even_when_started_with_sigint_ignored() -> None:
    # as ``python scripts/demo.py &`` from a script would start it
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--port", str(port), "--sim-port", str(free_port()),
         "--no-burst"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    output = Output(proc)
    try:
        assert poll(lambda: "following the gateway's log" in output.text, 30), output.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, output.text
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
    output.join()
    assert "stopped the gateway and the simulator" in output.text
    assert demo.port_free(port)


def test_burst_table_counts_per_endpoint_and_gateway_429s() -> None:
    results = [traffic.CallResult(200, "0", 1), traffic.CallResult(200, "1", 2),
               traffic.CallResult(400, "1", 1, error="BadRequest"),
               traffic.CallResult(429, None, 0, retry_after="7", error="AllEndpointsBusy"),
               traffic.CallResult(None, error="ConnectionError")]
    burst = traffic.Burst(results, 1.0, 2, 5, False)
    text = traffic.format_burst(burst, {
        "0": "http://h:1/openai/deployments/a/chat/completions?api-version=x",
        "1": "http://h:1/openai/deployments/b/chat/completions?api-version=x"})
    assert "5 calls in 1.0 s (concurrency 2, max_tokens 5): 2 served" in text
    assert served_rows(text) == {"a": 1, "b": 1}
    assert re.search(r"^1\s+h:1 b\s+1\s+1\s+1$", text, re.MULTILINE), text
    assert "429 from the gateway (every endpoint busy): 1, told retry-after 7 s" in text
    assert "other errors: 1 (ConnectionError x1)" in text


def test_demo_refuses_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "scripts/demo.py", "--port", str(port),
             "--sim-port", str(free_port()), "--no-burst"],
            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in done.stderr


def test_demo_points_a_config_copy_at_another_simulator_port(tmp_path: Path) -> None:
    assert demo.gateway_config(8080, tmp_path) == "api-router-config.json"
    copy = Path(demo.gateway_config(9123, tmp_path))
    text = copy.read_text()
    assert copy.parent == tmp_path
    assert "127.0.0.1:9123/openai/deployments/primary/" in text
    assert ":8080" not in text


@pytest.mark.parametrize("script", ["scripts/traffic.py", "scripts/demo.py"])
def test_scripts_help(script: str) -> None:
    done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    assert "usage: python " + script in done.stdout


def test_traffic_exits_1_when_the_gateway_is_unreachable(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1/dev/apirouter"
    assert traffic.main(["--url", url, "--calls", "1"]) == 1
    assert "does not answer" in capsys.readouterr().err


def test_docs_show_the_steps_the_demo_prints() -> None:
    base, root = "http://127.0.0.1:8000/api/v1/dev/apirouter", "http://127.0.0.1:8000"
    pool = demo.first_pool(demo.GATEWAY_CONFIG)
    assert pool == "gpt-4o"
    page = (REPO / "docs" / "demo.md").read_text()
    assert demo.sdk_snippet(root, pool) in page
    printed = demo.curl_lines(base, root, pool) + "\n" + demo.explore_lines(base, root, pool)
    commands = [line.strip() for line in printed.splitlines() if line.startswith("  curl")]
    assert len(commands) == 11
    assert [c for c in commands if c not in page] == []
