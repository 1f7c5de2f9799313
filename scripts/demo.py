"""The one-command demo: the simulator, the gateway in front of it, and a burst that fails over.

    python scripts/demo.py [--port 8000] [--sim-port 8080] [--no-burst]

Starts the bundled Azure OpenAI simulator (simulator/deployments.json: primary, secondary and
tertiary with small quotas) in this process, and the gateway as ``python wsgi.py`` with a demo
environment. Sends one burst through the gateway (scripts/traffic.py) so that primary fills up
(a 429, or its answers say it is full) and traffic moves to secondary, then tertiary. Then shows
the gateway's log until Ctrl-C or SIGTERM, stops everything it started and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts import traffic  # noqa: E402
from simulator import SimulatorServer  # noqa: E402

HOST = "127.0.0.1"
SIM_CONFIG = REPO / "simulator" / "deployments.json"
GATEWAY_CONFIG = "api-router-config.json"
CONFIG_SIM_PORT = 8080  # the port api-router-config.json points at
API_VERSION = "2024-10-21"
DEMO_KEY = "demo-key-not-a-secret"
INTERVAL_MINUTES = "0.5"
STARTUP_SECONDS = 30.0
BURST_CONCURRENCY = 4
SHUTDOWN_GRACE = 3.0  # seconds; a stream left open by curl -N must not hold Ctrl-C for long

_console = threading.Lock()


def say(text: str = "", out: IO[str] | None = None) -> None:
    """Print a block at once, so the gateway's log lines never cut through it."""
    out = out or sys.stdout
    with _console:
        out.write(text + "\n")
        out.flush()


def fail(text: str) -> None:
    """Say why the demo cannot go on, on stderr."""
    say(f"demo: {text}", sys.stderr)


class Stop(Exception):
    """SIGTERM arrived: unwind to the clean-up."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise Stop


def port_free(port: int) -> bool:
    """Whether a server could listen on HOST:port now (as waitress would, with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def gateway_config(sim_port: int, workdir: Path) -> str:
    """api-router-config.json, or a copy in ``workdir`` pointing at ``sim_port`` instead."""
    if sim_port == CONFIG_SIM_PORT:
        return GATEWAY_CONFIG
    config = json.loads((REPO / GATEWAY_CONFIG).read_text())
    pool_backends = [b for pool in config.get("deployments", {}).values()
                     for b in pool["backends"]]
    for entry, field in [*((e, "uri") for e in config["endpoints"]),
                         *((b, "endpoint") for b in pool_backends)]:
        parts = urlsplit(entry[field])
        if parts.port == CONFIG_SIM_PORT:
            entry[field] = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{sim_port}"))
    path = workdir / GATEWAY_CONFIG
    path.write_text(json.dumps(config, indent=2) + "\n")
    return str(path)


def gateway_env(port: int, config_file: str) -> dict[str, str]:
    """This process's environment without API_GATEWAY_* variables, plus the demo's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_GATEWAY_")}
    env.update({
        "API_GATEWAY_KEY": DEMO_KEY,
        "API_GATEWAY_CONFIG_FILE": config_file,
        "API_GATEWAY_NAME": "demo",
        "API_GATEWAY_ENV": "dev",
        "API_GATEWAY_METRICS_CINTERVAL": INTERVAL_MINUTES,
        "API_GATEWAY_METRICS_CHISTORY": "20",
        "API_GATEWAY_PORT": str(port),
        "API_GATEWAY_HOST": HOST,
        "API_GATEWAY_SHUTDOWN_GRACE": str(SHUTDOWN_GRACE),
        "PYTHONUNBUFFERED": "1",
    })
    return env


class LogPump(threading.Thread):
    """Copies the gateway's output to ours, one prefixed line at a time."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(name="gateway-log", daemon=True)
        self.stream = stream
        self.last_line = time.monotonic()

    def run(self) -> None:
        for line in self.stream:
            self.last_line = time.monotonic()
            say(f"gateway | {line.rstrip()}")

    def wait_quiet(self, quiet: float = 0.3, limit: float = 2.0) -> None:
        """Let the log lines of calls just made come out before we print a summary."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and time.monotonic() - self.last_line < quiet:
            time.sleep(0.05)


def start_gateway(port: int, config_file: str) -> tuple[subprocess.Popen[str], LogPump]:
    """``python wsgi.py`` in its own session, so a Ctrl-C reaches it only through us."""
    proc = subprocess.Popen(
        [sys.executable, "wsgi.py"], cwd=REPO, env=gateway_env(port, config_file),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1, start_new_session=True)
    assert proc.stdout is not None
    pump = LogPump(proc.stdout)
    pump.start()
    return proc, pump


def wait_until_up(url: str, alive: Callable[[], bool] = lambda: True,
                  timeout: float = STARTUP_SECONDS) -> bool:
    """Poll ``url`` until it answers 200; False on timeout or once ``alive()`` is False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


def stop_gateway(proc: subprocess.Popen[str], pump: LogPump) -> None:
    """SIGTERM, wait for the drain (bounded), then kill if it is still there."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SHUTDOWN_GRACE + 5)
        except subprocess.TimeoutExpired:
            say("demo: the gateway did not stop in time; killing it")
            proc.kill()
            proc.wait()
    pump.join(timeout=2)


def traffic_command(base: str) -> str:
    """The command line that sends another burst to this demo's gateway."""
    if base == traffic.DEFAULT_URL:
        return "python scripts/traffic.py"
    return f"python scripts/traffic.py --url {base}"


def curl_lines(base: str, root: str, pool: str | None) -> str:
    """The calls to try by hand."""
    chat = '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":20'
    json_type = "-H 'content-type: application/json'"
    through_pool = ([f"  curl -s '{root}/openai/deployments/{pool}/chat/completions"
                     f"?api-version={API_VERSION}' {json_type} -d '{chat}}}'"] if pool else [])
    return "\n".join([
        "Try it by hand:",
        f"  curl -si {base}/lb {json_type} -d '{chat}}}'",
        f"  curl -N {base}/lb {json_type} -d '{chat},\"stream\":true}}'",
        *through_pool,
        f"  curl -s {base}/metrics",
        f"  curl -s {base}/instanceinfo",
        f"  curl -s {base}/healthz",
        f"  curl -s {base}/readyz",
        f"Reload the configuration with the demo's gateway key, {DEMO_KEY} (its "
        "API_GATEWAY_KEY, from DEMO_KEY in scripts/demo.py):",
        f"  curl -s {base}/reconfig/{DEMO_KEY}",
        f"  curl -s -X POST {base}/reconfig -H 'x-api-gateway-key: {DEMO_KEY}'",
    ])


def first_pool(config_file: str) -> str | None:
    """The first deployment pool of the gateway's configuration, if it has one."""
    path = Path(config_file)
    config = json.loads((path if path.is_absolute() else REPO / path).read_text())
    return next(iter(config.get("deployments", {})), None)


def sdk_snippet(root: str, pool: str) -> str:
    """Python for the official ``openai`` package, both clients, through ``pool``."""
    chat = (f'model="{pool}", max_tokens=20,\n'
            '    messages=[{"role": "user", "content": "Hello"}])')
    return "\n".join([
        "python - <<'EOF'",
        "from openai import AzureOpenAI, OpenAI",
        "",
        "# the demo sets no client keys, so any api_key passes; with client keys, give yours",
        f'azure = AzureOpenAI(azure_endpoint="{root}", api_key="demo",',
        f'                    api_version="{API_VERSION}")',
        f"answer = azure.chat.completions.create({chat}",
        'print("AzureOpenAI:", answer.choices[0].message.content)',
        "",
        f'client = OpenAI(base_url="{root}/v1", api_key="demo")',
        f"answer = client.chat.completions.create({chat}",
        'print("OpenAI:", answer.choices[0].message.content)',
        "EOF",
    ])


def explore_lines(base: str, root: str, pool: str | None) -> str:
    """Where to look next: the dashboard, the capacity report and the SDKs."""
    seconds = float(INTERVAL_MINUTES) * 60
    lines = [
        "The dashboard (per pool and backend: calls, failures and TPM of each closed "
        "interval; cooldowns; the capacity table), in a browser:",
        f"  {base}/dashboard",
        f"The capacity report (TPM, RPM, a PTU estimate), once an interval has closed "
        f"(every {seconds:.0f} s):",
        f"  curl -s {base}/capacity",
        f"  curl -s {base}/metrics > metrics.json && python -m gateway_app.capacity "
        "--metrics metrics.json",
    ]
    if pool:
        lines += [f'The OpenAI SDK (pip install openai) through the pool "{pool}" of the '
                  "configuration (model = the pool's name):", "", sdk_snippet(root, pool)]
    return "\n".join(lines)


def next_steps(base: str) -> str:
    """What to watch after the burst: cooldowns expiring and metrics history filling."""
    readiness = traffic.get_json(base, "readyz") or {}
    first = next((e for e in readiness.get("endpoints", []) if e.get("priority") == 0), {})
    wait = first.get("cooldownSeconds", 0.0)
    cooling = [f"Primary is cooling down for {wait:.0f} s more (the retry-after it sent); "
               "until then calls skip it.",
               "After that, send another burst: primary serves first again, until throttled:"]
    seconds = float(INTERVAL_MINUTES) * 60
    return "\n".join([
        *(cooling if wait else ["Send another burst:"]),
        f"  {traffic_command(base)}",
        f"Metrics history gets one entry every {seconds:.0f} s "
        f"(API_GATEWAY_METRICS_CINTERVAL={INTERVAL_MINUTES}):",
        f"  curl -s {base}/metrics",
    ])


def run_demo(args: argparse.Namespace, workdir: Path,
             started: list[Callable[[], None]]) -> int:
    """Start everything, show it, and wait; each start appends its stop to ``started``."""
    if args.port == args.sim_port:
        fail("--port and --sim-port must differ")
        return 2
    if not port_free(args.port):
        fail(f"port {args.port} on {HOST} is taken (another gateway or demo?); "
             "stop it or pass --port")
        return 1
    sim = SimulatorServer(SIM_CONFIG, host=HOST, port=args.sim_port)
    try:
        sim.start()
    except OSError as exc:
        fail(f"port {args.sim_port} on {HOST} is taken ({exc.strerror or exc}); "
             "stop what uses it or pass --sim-port")
        return 1
    started.append(sim.stop)
    names = ", ".join(d.name for d in sim.config.deployments)
    say(f"demo: simulator serving {names} on {sim.url} ({SIM_CONFIG.relative_to(REPO)})")
    if not wait_until_up(f"{sim.url}/healthz", timeout=5):
        fail(f"the simulator does not answer {sim.url}/healthz")
        return 1

    config_file = gateway_config(args.sim_port, workdir)
    base = f"http://{HOST}:{args.port}/api/v1/dev/apirouter"
    say(f"demo: starting the gateway: python wsgi.py (config {config_file}, "
        f"gateway key {DEMO_KEY})")
    proc, pump = start_gateway(args.port, config_file)
    started.append(lambda: stop_gateway(proc, pump))
    if not wait_until_up(f"{base}/healthz", alive=lambda: proc.poll() is None):
        pump.join(timeout=2)
        fail(f"the gateway did not come up on {base}"
             + (f" (it exited with status {proc.returncode})" if proc.poll() is not None else ""))
        return 1
    say(f"demo: gateway ready at {base}")

    if not args.no_burst:
        say(f"\ndemo: sending a burst of {args.calls} calls ({BURST_CONCURRENCY} at a time, "
            f"max_tokens {args.max_tokens}) through {base}/lb ...")
        burst = traffic.run_burst(base, args.calls, BURST_CONCURRENCY, args.max_tokens)
        pump.wait_quiet()
        endpoints = traffic.endpoint_map(base) or {}
        say("\nBurst summary\n" + traffic.report(base, burst, endpoints))
        say("\n" + next_steps(base))
    root = f"http://{HOST}:{args.port}"
    pool = first_pool(config_file)
    say("\n" + curl_lines(base, root, pool))
    say("\n" + explore_lines(base, root, pool))
    say("\ndemo: following the gateway's log; Ctrl-C stops the gateway and the simulator.\n")
    while proc.poll() is None:
        time.sleep(0.2)
    pump.join(timeout=2)
    fail(f"the gateway exited on its own with status {proc.returncode}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python scripts/demo.py",
        description="Start the bundled Azure OpenAI simulator and the gateway in front of it, "
                    "send one burst that shows failover, then follow the gateway's log until "
                    "Ctrl-C or SIGTERM, which stops both.")
    parser.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    parser.add_argument("--sim-port", type=int, default=CONFIG_SIM_PORT,
                        help=f"simulator port (default {CONFIG_SIM_PORT}); another port makes "
                             "the gateway use a temporary copy of api-router-config.json")
    parser.add_argument("--no-burst", action="store_true", help="do not send the first burst")
    parser.add_argument("--calls", type=int, default=30, help="calls in the burst (default 30)")
    parser.add_argument("--max-tokens", type=int, default=50,
                        help="max_tokens of each call in the burst (default 50)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started: list[Callable[[], None]] = []
    workdir = Path(tempfile.mkdtemp(prefix="apirouter-demo-"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    # a shell starting us in the background (``cmd &``) leaves SIGINT ignored; Ctrl-C must work
    signal.signal(signal.SIGINT, signal.default_int_handler)
    status = 1
    try:
        status = run_demo(args, workdir, started)
    except (KeyboardInterrupt, Stop):
        say("\ndemo: stopping")
        status = 0
    finally:
        # a second Ctrl-C must not leave the gateway running; stopping is bounded anyway
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        for stop in reversed(started):
            with contextlib.suppress(Exception):
                stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if status == 0:
        say("demo: stopped the gateway and the simulator")
    return status


if __name__ == "__main__":
    sys.exit(main())
