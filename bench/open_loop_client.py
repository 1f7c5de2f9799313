"""An open-loop HTTP load client: keep-alive POSTs at a fixed total rate; prints one JSON object.

wrk is a closed loop: each connection sends its next call as soon as the previous one is
answered, so at 16 connections it keeps 16 calls queued at the server and p50 is about
16 / throughput. Here the calls are sent on a fixed schedule instead, whatever the answers
do: ``--rate`` calls per second in total, spread evenly over ``--connections`` keep-alive
connections (one thread each; call k of connection i is due at ``(i + k * connections) /
rate`` seconds), as wrk2 does. Below the server's capacity a call rarely finds another one in
the server, so the latency is the server's own time per call.

The latency of a call runs from when it was due, or from when its connection became free if
the previous call on that connection was still in flight (that wait is the server's doing and
counts), to the last byte of the answer. The client's own lateness (the thread woke up or got
the GIL after the call was due while its connection was free) is reported apart as ``lag``
and not counted: it shows whether the client kept its schedule. Standard library only::

    python bench/open_loop_client.py --url URL --rate 400 --connections 16 --duration 10
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import resource
import socket
import sys
import threading
import time
from urllib.parse import urlsplit


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted ``values`` (None when empty)."""
    if not values:
        return None
    rank = max(1, min(len(values), math.ceil(pct / 100 * len(values))))
    return values[rank - 1]


class Connection(threading.Thread):
    """One keep-alive connection sending its share of the schedule."""

    def __init__(self, index: int, args: argparse.Namespace, target: tuple[str, int, str],
                 headers: dict[str, str], body: bytes, ready: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.index = index
        self.args = args
        self.host, self.port, self.path = target
        self.headers = headers
        self.body = body
        self.ready = ready
        self.start_at = 0.0  # set before the barrier opens
        # (due, latency, lag, status) for calls due in the measured window; status 0: error
        self.samples: list[tuple[float, float, float, int]] = []
        self.calls = 0
        self.errors: dict[str, int] = {}

    def connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.args.timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def run(self) -> None:
        args = self.args
        conn = self.connect()
        self.ready.wait()
        t0 = self.start_at
        measure_from = t0 + args.warmup
        end = measure_from + args.duration
        step = args.connections / args.rate
        due = t0 + self.index / args.rate
        free_at = 0.0  # when the previous call on this connection ended
        while due < end:
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            start = max(due, free_at)  # from here the call waits on the server, not on us
            sent = time.perf_counter()
            status = 0
            try:
                conn.request("POST", self.path, self.body, self.headers)
                answer = conn.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException) as exc:
                name = type(exc).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
                conn.close()
                try:
                    conn = self.connect()
                except OSError:
                    time.sleep(0.01)
            done = time.perf_counter()
            self.calls += 1
            if due >= measure_from:
                self.samples.append((due, done - start, max(0.0, sent - start), status))
            free_at = done
            due += step
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="calls per second in total")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--body", default='{"messages":[{"role":"user","content":"Hi"}]}')
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    target = (parts.hostname or "127.0.0.1", parts.port or 80,
              parts.path + (f"?{parts.query}" if parts.query else ""))
    body = args.body.encode()
    headers = {"Content-Type": "application/json", "api-key": "bench-key",
               **dict(h.split(":", 1) for h in args.header)}
    ready = threading.Barrier(args.connections + 1)
    conns = [Connection(i, args, target, headers, body, ready) for i in range(args.connections)]
    for c in conns:
        c.start()
    start_at = time.perf_counter() + 0.1
    for c in conns:
        c.start_at = start_at
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    ready.wait()
    for c in conns:
        c.join(args.warmup + args.duration + args.timeout + 30)
    wall = time.perf_counter() - start_at
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
    samples = [s for c in conns for s in c.samples]
    ok = sorted(s[1] * 1000 for s in samples if 200 <= s[3] <= 299)
    lags = sorted(s[2] * 1000 for s in samples)
    errors: dict[str, int] = {}
    for c in conns:
        for name, n in c.errors.items():
            errors[name] = errors.get(name, 0) + n
    out = {
        "rate": args.rate, "connections": args.connections, "duration": args.duration,
        "warmup": args.warmup, "calls": sum(c.calls for c in conns), "measured": len(samples),
        "achieved_rate": round(len(samples) / args.duration, 1),
        "ok": len(ok), "non2xx": sum(1 for s in samples if s[3] and not 200 <= s[3] <= 299),
        "errors": sum(errors.values()), "error_kinds": errors,
        "p50_ms": percentile(ok, 50), "p90_ms": percentile(ok, 90),
        "p99_ms": percentile(ok, 99), "max_ms": ok[-1] if ok else None,
        "lag_p50_ms": percentile(lags, 50), "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": lags[-1] if lags else None,
        "wall": round(wall, 3), "cpu": round(cpu, 3),
    }
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
