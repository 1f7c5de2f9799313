"""Shared state's cost and speed: ``python bench/cluster.py`` (``--help`` for the options).

1. CPU per call of a gateway with API_GATEWAY_REDIS_URL set, against one without, in the
   same run: the same fake deployment, the same load, rounds alternating between the two so
   that the machine's noise falls on both. Each gateway is pinned to the first CPU, the load
   generator, the fake and redis-server to the others. The ratio is the median round's.
2. Cooldown propagation between two replicas: a deployment that answers every call with 429
   and a short retry-after-ms; calls through replica A enter one cooldown each, and replica B
   reports (in /instanceinfo) how long each took from A's registry to B's, on this host's one
   wall clock.

Needs Debian's redis-server (``bash scripts/install-ci-tools.sh --redis``). Writes
``bench/results/cluster/TIMESTAMP.json`` and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import the bench package from the checkout
    sys.path.insert(0, str(ROOT))

from bench.gateway import ROUTE, GatewayProcess, git_revision  # noqa: E402
from bench.system import cpu_split, free_port, machine_info, stop_process  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cluster"
ANSWER = json.dumps({"id": "c", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
BODY = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()


class _Fake(BaseHTTPRequestHandler):
    """A deployment that answers at once: 200, or 429 with retry-after-ms for ``throttle``."""

    protocol_version = "HTTP/1.1"
    throttle_ms: str | None = None

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.throttle_ms:
            body = b'{"error": {"code": "429", "message": "Rate limit is exceeded."}}'
            self.send_response(429)
            self.send_header("retry-after-ms", self.throttle_ms)
        else:
            body = ANSWER
            self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def fake(throttle_ms: str | None = None) -> tuple[ThreadingHTTPServer, str]:
    handler = type("Handler", (_Fake,), {"throttle_ms": throttle_ms})
    # a gateway that stops resets its pooled connections: not worth a traceback
    quiet = type("Server", (ThreadingHTTPServer,), {"handle_error": lambda *args: None})
    server = quiet(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = server.server_address[1]
    return server, (f"http://127.0.0.1:{port}/openai/deployments/d/chat/completions"
                    "?api-version=2024-10-21")


def post_calls(port: int, calls: int, connections: int) -> int:
    """``calls`` POSTs to /lb over ``connections`` keep-alive connections; the non-200s."""
    failures = [0]
    share = [calls // connections + (i < calls % connections) for i in range(connections)]

    def run(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(count):
            conn.request("POST", f"{ROUTE}/lb", BODY, {"content-type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                failures[0] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures[0]


def cpu_per_call(gateways: dict[str, GatewayProcess], rounds: int, calls: int,
                 connections: int) -> dict[str, object]:
    per_call: dict[str, list[float]] = {name: [] for name in gateways}
    failures = 0
    for gw in gateways.values():  # warm up both
        failures += post_calls(gw.port, calls // 4, connections)
    for _ in range(rounds):
        for name, gw in gateways.items():
            before = sum(cpu_split(gw.pid))
            failures += post_calls(gw.port, calls, connections)
            per_call[name].append((sum(cpu_split(gw.pid)) - before) * 1000 / calls)
    ratios = [r / p for r, p in zip(per_call["redis"], per_call["plain"], strict=True)]
    return {"calls_per_round": calls, "connections": connections, "rounds": rounds,
            "cpu_ms_per_call": {n: [round(v, 4) for v in vs] for n, vs in per_call.items()},
            "median_cpu_ms_per_call": {n: round(statistics.median(vs), 4)
                                       for n, vs in per_call.items()},
            "ratio_per_round": [round(r, 4) for r in ratios],
            "ratio_median": round(statistics.median(ratios), 4),
            "non_200": failures}


def propagation(a: GatewayProcess, b: GatewayProcess, events: int, gap: float
                ) -> dict[str, object]:
    for _ in range(events):
        post_calls(a.port, 1, 1)
        time.sleep(gap)  # past the cooldown, so the next call enters a new one
    url = f"http://127.0.0.1:{b.port}{ROUTE}/instanceinfo"
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(url, timeout=5) as answer:
            lags = json.load(answer)["cluster"]["cooldownPropagation"]
        if lags["count"] >= events or time.monotonic() > deadline:
            return {"events_sent": events, **lags}
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/cluster.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per gateway (5)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (2000)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (8)")
    parser.add_argument("--events", type=int, default=200, help="cooldowns to propagate (200)")
    args = parser.parse_args(argv)
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("redis-server is missing: bash scripts/install-ci-tools.sh --redis", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpus = (cpus[0], cpus[1:]) if len(cpus) > 1 else (None, cpus)
    taskset = ["taskset", "-c", str(server_cpu)] if server_cpu is not None \
        and shutil.which("taskset") else []
    os.sched_setaffinity(0, load_cpus)  # this process: the load generator and the fakes
    workdir = RESULTS / "work"
    port = free_port()
    redis = subprocess.Popen([redis_server, "--save", "", "--appendonly", "no", "--port",
                              str(port), "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    redis_env = {"API_GATEWAY_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    ok, ok_url = fake()
    throttled, throttled_url = fake(throttle_ms="20")
    started = time.time()
    gateways: dict[str, GatewayProcess] = {}
    try:
        time.sleep(0.3)
        for name, env in (("plain", {}), ("redis", redis_env)):
            gw = GatewayProcess(ROOT, workdir, [ok_url], threads=64, taskset=taskset,
                                log_level="warn", extra_env=env)
            gateways[name] = gw.start()
        cost = cpu_per_call(gateways, args.rounds, args.calls, args.connections)
        for gw in gateways.values():
            gw.stop()
        a = GatewayProcess(ROOT, workdir, [throttled_url, ok_url], threads=16, taskset=taskset,
                           log_level="warn", extra_env=redis_env).start()
        b = GatewayProcess(ROOT, workdir, [throttled_url, ok_url], threads=16, taskset=taskset,
                           log_level="warn", extra_env=redis_env).start()
        gateways = {"a": a, "b": b}
        lag = propagation(a, b, args.events, gap=0.03)
    finally:
        for gw in gateways.values():
            gw.stop()
        stop_process(redis)
        ok.shutdown()
        throttled.shutdown()
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H%M%S")
    result = {"started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
              "seconds": round(time.time() - started, 1), "commit": git_revision(ROOT),
              "machine": machine_info(),
              "pinning": {"gateway": server_cpu, "load": load_cpus},
              "cpu_per_call": cost, "cooldown_propagation": lag}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"Run of {result['started']} ({result['seconds']} s), commit {result['commit']}\n")
    print("| gateway | CPU ms per call (median of rounds) |\n|---|---:|")
    for name, value in cost["median_cpu_ms_per_call"].items():
        print(f"| {name} | {value} |")
    print(f"\nwith Redis / without: {cost['ratio_median']} (median of the rounds' ratios "
          f"{cost['ratio_per_round']}); non-200 answers: {cost['non_200']}\n")
    print(f"cooldown propagation A -> B over {lag.get('count')} cooldowns: "
          f"p50 {lag.get('p50Ms')} ms, p99 {lag.get('p99Ms')} ms, max {lag.get('maxMs')} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
