"""Keep-alive load: wrk at a fixed connection count (closed loop), and the open-loop client at
a fixed rate; both with the server's CPU and the machine's idle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .system import cpu_seconds, cpu_split, cpu_times, idle_shares, loadavg, status_fields

LUA = Path(__file__).with_name("post.lua")
OPEN_CLIENT = Path(__file__).with_name("open_loop_client.py")


@dataclass
class LoadResult:
    """One wrk run against one target at one connection count."""

    target: str
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors: connect, read, write, timeouts
    non2xx: int
    cpu_ms_per_1k: float | None  # the server's CPU per 1,000 calls
    sys_ms_per_1k: float | None  # its system (kernel) part; the rest is user time
    server_cpu_share: float | None  # the server's CPU seconds per wall second
    rss_mb: float | None  # the server's resident memory after the run
    idle: dict[str, float]  # idle share of each CPU during the run
    loadavg: list[float]  # at the end of the run

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def run_wrk(url: str, connections: int, seconds: float, body: str, taskset: list[str],
            threads: int) -> dict[str, float]:
    """Run wrk once; the totals printed by post.lua."""
    threads = max(1, min(threads, connections))
    cmd = [*taskset, "wrk", "-t", str(threads), "-c", str(connections),
           "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "--latency",
           "-s", str(LUA), url]
    env = {**os.environ, "BENCH_BODY": body}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[len("BENCH "):])
    raise RuntimeError(f"wrk printed no result (exit {out.returncode}): "
                       f"{(out.stderr or out.stdout).strip()[-500:]}")


def measure(target: str, url: str, body: str, connections: int, seconds: float,
            warmup: float, server_pid: int | None, taskset: list[str],
            wrk_threads: int) -> LoadResult:
    """Warm up, then one measured wrk run, sampling the server's CPU and the machine's idle."""
    if warmup > 0:
        run_wrk(url, connections, warmup, body, taskset, wrk_threads)
    cpu0 = cpu_split(server_pid) if server_pid else (0.0, 0.0)
    times0 = cpu_times()
    started = time.monotonic()
    totals = run_wrk(url, connections, seconds, body, taskset, wrk_threads)
    wall = time.monotonic() - started
    idle = idle_shares(times0, cpu_times())
    requests = int(totals["requests"])
    duration = totals["duration_us"] / 1e6 or wall
    cpu_ms = sys_ms = share = rss = None
    if server_pid:
        user1, system1 = cpu_split(server_pid)
        spent, system = user1 + system1 - sum(cpu0), system1 - cpu0[1]
        if requests:
            cpu_ms, sys_ms = (round(s * 1000 / (requests / 1000), 3) for s in (spent, system))
        share = round(spent / wall, 3)
        rss = round(status_fields(server_pid)["VmRSS"] / 1024, 1)
    return LoadResult(
        target=target, connections=connections, seconds=round(duration, 2), requests=requests,
        rps=round(requests / duration, 1),
        p50_ms=totals["p50_us"] / 1000, p90_ms=totals["p90_us"] / 1000,
        p99_ms=totals["p99_us"] / 1000, max_ms=totals["max_us"] / 1000,
        errors=int(totals["connect_errors"] + totals["read_errors"] + totals["write_errors"]
                   + totals["timeouts"]),
        non2xx=int(totals["non2xx"]), cpu_ms_per_1k=cpu_ms, sys_ms_per_1k=sys_ms,
        server_cpu_share=share, rss_mb=rss, idle=idle, loadavg=loadavg())


@dataclass
class OpenLoopResult:
    """One open-loop run (``open_loop_client.py``) against one target at a fixed total rate."""

    target: str
    connections: int
    rate: float  # calls per second asked for, in total
    achieved_rate: float  # calls due in the measured window per second
    seconds: float
    requests: int  # calls in the measured window
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: int
    non2xx: int
    lag_p50_ms: float | None  # the client's own lateness, not counted in the latency
    lag_p99_ms: float | None
    client_cpu_share: float  # the client's CPU seconds per wall second
    cpu_ms_per_1k: float | None  # the server's CPU per 1,000 calls
    server_cpu_share: float | None
    idle: dict[str, float]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def measure_open(target: str, url: str, body: str, connections: int, rate: float,
                 seconds: float, warmup: float, server_pid: int | None,
                 taskset: list[str]) -> OpenLoopResult:
    """One open-loop run (warm-up included), sampling the server's CPU and the machine's idle."""
    cmd = [*taskset, sys.executable, str(OPEN_CLIENT), "--url", url, "--rate", f"{rate:g}",
           "--connections", str(connections), "--duration", f"{seconds:g}",
           "--warmup", f"{warmup:g}", "--body", body, "--timeout", "10"]
    cpu0 = cpu_seconds(server_pid) if server_pid else None
    times0 = cpu_times()
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=warmup + seconds + 60)
    wall = time.monotonic() - started
    idle = idle_shares(times0, cpu_times())
    try:
        got = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"the open-loop client printed no result (exit {out.returncode}): "
                           f"{(out.stderr or out.stdout).strip()[-500:]}") from None
    cpu_ms = share = None
    if server_pid:
        spent = cpu_seconds(server_pid) - (cpu0 or 0.0)
        cpu_ms = round(spent * 1000 / (got["calls"] / 1000), 3) if got["calls"] else None
        share = round(spent / wall, 3)
    return OpenLoopResult(
        target=target, connections=connections, rate=rate, achieved_rate=got["achieved_rate"],
        seconds=seconds, requests=got["measured"], p50_ms=got["p50_ms"], p90_ms=got["p90_ms"],
        p99_ms=got["p99_ms"], max_ms=got["max_ms"], errors=got["errors"],
        non2xx=got["non2xx"], lag_p50_ms=got["lag_p50_ms"], lag_p99_ms=got["lag_p99_ms"],
        client_cpu_share=round(got["cpu"] / got["wall"], 3) if got["wall"] else 0.0,
        cpu_ms_per_1k=cpu_ms, server_cpu_share=share, idle=idle)
