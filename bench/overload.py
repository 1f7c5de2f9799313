"""The gateway beyond its capacity: ``python bench/overload.py`` (``--quick``, ``--help``).

One gateway process (``python wsgi.py``, ``API_GATEWAY_THREADS`` threads, the admin port on)
serves the simulator, whose deployment answers every call in a fixed time. Its capacity is the
admission bound (derived from the threads): that many calls at once. Closed-loop clients, each
with its own keep-alive connection, call it at 2x and 5x that capacity, first with admission
off (``API_GATEWAY_MAX_IN_PROGRESS`` above the threads: calls queue in waitress, as before
issue 17), then on (the default bound: calls beyond it get 503 at once). A client that is
refused waits for the ``retry-after`` it was given, as the OpenAI SDKs do, then calls again.
Meanwhile two probes ask ``/healthz`` every 100 ms, one on the admin port and one on the main
port.

Per run: calls served and refused, served per second, p50 / p99 / max latency of the served
calls, how fast refusals came, and the probes' latency. Everything is on 127.0.0.1 and bounded
in time (each run lasts ``--seconds``; a call waits at most 30 s). Results go to
``bench/results/overload-<date>.json`` and ``overload-latest.md`` (``--quick``: under
``bench/results/tmp/``); a full run also rewrites its block of docs/performance.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gateway import ROUTE, GatewayProcess, git_revision
from bench.streams import SimulatorProcess, StreamShape
from bench.system import Pinning, cpu_seconds, free_port, machine_info, machine_state

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CALL_TIMEOUT = 30.0  # seconds a client waits for one answer
PROBE_EVERY = 0.1
PROBE_TIMEOUT = 5.0
# the Node original's p99 in the past run (256 connections, one core): 0.5-1.2 s
NODE_P99_MS = (500.0, 1200.0)
ADMIN_PROBE_TARGET_MS = 100.0
DOC = ROOT / "docs" / "performance.md"
DOC_BEGIN = "<!-- bench:overload:begin (written by python bench/overload.py; do not edit) -->"
DOC_END = "<!-- bench:overload:end -->"


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


@dataclass
class Tally:
    """What the clients saw during one run, for calls started inside the measured window."""

    served: list[float] = field(default_factory=list)  # latency of each 2xx answer
    refused: list[float] = field(default_factory=list)  # latency of each 503 Overloaded
    other: int = 0  # any other status
    errors: int = 0  # connection errors and timeouts
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class ProbeTally:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0  # no 200 within PROBE_TIMEOUT


@dataclass
class RunResult:
    """One (admission, load) run."""

    admission: str
    load: float
    clients: int
    capacity: int
    seconds: float
    served: int
    refused: int
    other: int
    errors: int
    served_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    refused_p99_ms: float | None
    admin_probe_p50_ms: float | None
    admin_probe_p99_ms: float | None
    admin_probe_max_ms: float | None
    admin_probe_failures: int
    main_probe_p50_ms: float | None
    main_probe_p99_ms: float | None
    main_probe_max_ms: float | None
    main_probe_failures: int
    server_cpu_share: float


class Load:
    """``clients`` closed-loop clients and two probes against one gateway, for one window."""

    def __init__(self, port: int, admin_port: int, clients: int, body: bytes,
                 warmup: float, seconds: float, backoff: float | None) -> None:
        self.port = port
        self.admin_port = admin_port
        self.clients = clients
        self.body = body
        self.backoff = backoff
        self.start = time.monotonic() + 0.2
        self.window = (self.start + warmup, self.start + warmup + seconds)
        self.tally = Tally()
        self.probes = {"admin": ProbeTally(), "main": ProbeTally()}

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, daemon=True)
                   for _ in range(self.clients)]
        threads += [threading.Thread(target=self._probe, args=(name, port), daemon=True)
                    for name, port in (("admin", self.admin_port), ("main", self.port))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.window[1] - time.monotonic() + CALL_TIMEOUT + 5)

    def _in_window(self, started: float) -> bool:
        return self.window[0] <= started < self.window[1]

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < self.start:
            time.sleep(0.01)
        while (started := time.monotonic()) < self.window[1]:
            wait, refused = 0.0, False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=CALL_TIMEOUT)
                conn.request("POST", f"{ROUTE}/lb", self.body, headers)
                answer = conn.getresponse()
                data = answer.read()
                refused = answer.status == 503 and b'"Overloaded"' in data
                took = time.monotonic() - started
                status = answer.status
                if refused:
                    wait = (float(answer.getheader("retry-after") or 1)
                            if self.backoff is None else self.backoff)
                if answer.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                took, status = time.monotonic() - started, 0
                if conn is not None:
                    conn.close()
                    conn = None
                wait = 0.1
            if self._in_window(started):
                with self.tally.lock:
                    if 200 <= status < 300:
                        self.tally.served.append(took)
                    elif status == 503 and refused:
                        self.tally.refused.append(took)
                    elif status == 0:
                        self.tally.errors += 1
                    else:
                        self.tally.other += 1
            if wait:
                time.sleep(min(wait, max(0.0, self.window[1] - time.monotonic())))
        if conn is not None:
            conn.close()

    def _probe(self, name: str, port: int) -> None:
        tally = self.probes[name]
        while (started := time.monotonic()) < self.window[1]:
            if started >= self.window[0]:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
                    conn.request("GET", f"{ROUTE}/healthz")
                    ok = conn.getresponse().status == 200
                    conn.close()
                except (OSError, http.client.HTTPException):
                    ok = False
                took = time.monotonic() - started
                if ok:
                    tally.latencies.append(took)
                else:
                    tally.failures += 1
            time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - started)))


def measure(gateway: GatewayProcess, admin_port: int, admission: str, load: float,
            capacity: int, args: argparse.Namespace, body: bytes) -> RunResult:
    clients = round(load * capacity)
    run = Load(gateway.port, admin_port, clients, body, args.warmup, args.seconds,
               None if args.backoff_ms is None else args.backoff_ms / 1000)
    cpu_before, wall_before = cpu_seconds(gateway.pid), time.monotonic()
    run.run()
    cpu_share = (cpu_seconds(gateway.pid) - cpu_before) / (time.monotonic() - wall_before)
    t, admin, main = run.tally, run.probes["admin"], run.probes["main"]
    return RunResult(
        admission=admission, load=load, clients=clients, capacity=capacity,
        seconds=args.seconds, served=len(t.served), refused=len(t.refused), other=t.other,
        errors=t.errors, served_per_s=round(len(t.served) / args.seconds, 1),
        p50_ms=ms(percentile(t.served, 0.5)), p99_ms=ms(percentile(t.served, 0.99)),
        max_ms=ms(max(t.served, default=None)), refused_p99_ms=ms(percentile(t.refused, 0.99)),
        admin_probe_p50_ms=ms(percentile(admin.latencies, 0.5)),
        admin_probe_p99_ms=ms(percentile(admin.latencies, 0.99)),
        admin_probe_max_ms=ms(max(admin.latencies, default=None)),
        admin_probe_failures=admin.failures,
        main_probe_p50_ms=ms(percentile(main.latencies, 0.5)),
        main_probe_p99_ms=ms(percentile(main.latencies, 0.99)),
        main_probe_max_ms=ms(max(main.latencies, default=None)),
        main_probe_failures=main.failures, server_cpu_share=round(cpu_share, 2))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The runs as one table, and the issue's targets judged."""
    s = result["settings"]
    backoff = ("the retry-after they got" if s["backoff_ms"] is None
               else f"{s['backoff_ms']:g} ms")
    lines = [
        f"Overload run of {result['started']} ({'quick' if s['quick'] else 'full'}, "
        f"{result['duration_s']:.0f} s) at commit `{result['gateway_revision']}`: "
        f"{s['threads']} threads, admission bound {result['capacity']}, a deployment answering "
        f"in {s['latency_ms']:.0f} ms, {s['seconds']:.0f} s per run after {s['warmup']:.0f} s "
        f"of warm-up; refused clients wait {backoff}. Pinning: {result['pinning']}.",
        "",
        "| admission | load | clients | served | served/s | p50 ms | p99 ms | max ms | refused "
        "| refusal p99 ms | errors | admin probe p50 / p99 / max ms | main probe p50 / max ms "
        "(failed) | server CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['admission']} | {r['load']:g}x | {r['clients']} | {r['served']:,} "
            f"| {_cell(r['served_per_s'])} | {_cell(r['p50_ms'])} | {_cell(r['p99_ms'])} "
            f"| {_cell(r['max_ms'])} | {r['refused']:,} | {_cell(r['refused_p99_ms'])} "
            f"| {r['errors'] + r['other']} "
            f"| {_cell(r['admin_probe_p50_ms'])} / {_cell(r['admin_probe_p99_ms'])} "
            f"/ {_cell(r['admin_probe_max_ms'])} "
            f"| {_cell(r['main_probe_p50_ms'])} / {_cell(r['main_probe_max_ms'])} "
            f"({r['main_probe_failures']}) | {r['server_cpu_share']:.0%} |")
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for target, measured, verdict in targets(result):
        lines.append(f"| {target} | {measured} | {verdict} |")
    return "\n".join(lines) + "\n"


def targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The issue's two numbers, judged on this run."""
    out = []
    top = max((r for r in result["runs"] if r["admission"] == "on"),
              key=lambda r: r["load"], default=None)
    if top and top["p99_ms"] is not None:
        low, high = NODE_P99_MS
        verdict = ("met" if top["p99_ms"] <= low else
                   "within the original's range" if top["p99_ms"] <= high else "missed")
        out.append((f"p99 of calls served at {top['load']:g}x, admission on <= the Node "
                    f"original's {low / 1000:g}-{high / 1000:g} s",
                    f"{top['p99_ms']:,.1f} ms", verdict))
    worst = max((r["admin_probe_max_ms"] or PROBE_TIMEOUT * 1000) for r in result["runs"])
    failed = sum(r["admin_probe_failures"] for r in result["runs"])
    out.append((f"admin-port probe within {ADMIN_PROBE_TARGET_MS:.0f} ms in every run",
                f"slowest {worst:,.1f} ms, {failed} failed",
                "met" if worst <= ADMIN_PROBE_TARGET_MS and not failed else "missed"))
    return out


def write_doc_block(table: str) -> None:
    """Replace the overload block of docs/performance.md with ``table``."""
    text = DOC.read_text()
    begin = text.index(DOC_BEGIN) + len(DOC_BEGIN) + 1
    DOC.write_text(text[:begin] + table + text[text.index(DOC_END):])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/overload.py",
                                     description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="short runs (4 s each), written to bench/results/tmp/")
    add("--threads", type=int, default=16, help="API_GATEWAY_THREADS (default 16)")
    add("--latency-ms", type=float, default=200.0,
        help="the deployment's answer time, fixed (default 200)")
    add("--loads", default="2,5", help="multiples of the capacity to offer (default 2,5)")
    add("--seconds", type=float, help="measured seconds per run (default 10; quick 4)")
    add("--warmup", type=float, default=1.0, help="seconds before measuring (default 1)")
    add("--backoff-ms", type=float,
        help="pause of a refused client (default: the retry-after it got, as SDKs do)")
    add("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    add("--gateway-dir", type=Path, default=ROOT, help="tree whose wsgi.py is measured")
    add("--out", type=Path, help="results directory (default bench/results; quick: .../tmp)")
    add("--no-docs", action="store_true",
        help="do not rewrite the overload block of docs/performance.md (quick never does)")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (4.0 if args.quick else 10.0)
    args.load_list = [float(x) for x in args.loads.split(",") if x.strip()]
    args.out = args.out or (RESULTS / "tmp" if args.quick else RESULTS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from gateway_app.admission import admission_limit

    capacity = admission_limit(args.threads, 0)
    pinning = Pinning.choose(not args.no_pin)
    if pinning.load is not None:  # this process runs the clients
        os.sched_setaffinity(0, {int(c) for c in pinning.load.split(",")})
    began, started = time.monotonic(), datetime.now(UTC)
    body = json.dumps({"messages": [{"role": "user", "content": "Say hello."}],
                       "max_tokens": 1}).encode()
    result: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine_info(),
        "machine_before": machine_state(0.5), "pinning": pinning.describe(),
        "gateway_revision": git_revision(args.gateway_dir), "capacity": capacity,
        "settings": {"quick": args.quick, "threads": args.threads,
                     "latency_ms": args.latency_ms, "loads": args.load_list,
                     "seconds": args.seconds, "warmup": args.warmup,
                     "backoff_ms": args.backoff_ms},
        "runs": []}
    shape = StreamShape(ttft_ms=args.latency_ms, ms_per_token=0.0, tokens=1)
    with tempfile.TemporaryDirectory(prefix="apirouter-overload-") as tmp, \
            SimulatorProcess(ROOT, shape, Pinning.prefix(pinning.load)) as simulator:
        for admission in ("off", "on"):
            admin_port = free_port()
            env = {"API_GATEWAY_ADMIN_PORT": str(admin_port)}
            if admission == "off":  # a bound above the threads: nothing is ever refused
                env["API_GATEWAY_MAX_IN_PROGRESS"] = str(100 * args.threads)
            gateway = GatewayProcess(args.gateway_dir, Path(tmp), [simulator.url],
                                     args.threads, Pinning.prefix(pinning.server),
                                     extra_env=env)
            with gateway:
                for load in args.load_list:
                    run = measure(gateway, admin_port, admission, load, capacity, args, body)
                    result["runs"].append(asdict(run))
                    print(f"admission {admission}, {load:g}x ({run.clients} clients): "
                          f"{run.served} served ({run.served_per_s}/s), p99 {run.p99_ms} ms, "
                          f"{run.refused} refused, {run.errors + run.other} errors; admin "
                          f"probe max {run.admin_probe_max_ms} ms, main probe max "
                          f"{run.main_probe_max_ms} ms ({run.main_probe_failures} failed)",
                          flush=True)
    result["duration_s"] = round(time.monotonic() - began, 1)
    table = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y-%m-%dT%H%M%S")
    (args.out / f"overload-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "overload-latest.md").write_text(f"# Overload benchmark\n\n{table}")
    if not (args.quick or args.no_docs):
        write_doc_block(table)
    print(f"\n{table}\nwritten to {args.out / f'overload-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
