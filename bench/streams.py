"""Long calls: hundreds of concurrent ~2 s streamed calls, direct to the simulator and through
one gateway process, with the gateway's memory and threads."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .system import cpu_seconds, start_simulator, status_fields, stop_process

CLIENT = Path(__file__).with_name("stream_client.py")
DEPLOYMENT = "bench"
API_KEY = "bench-key"
PATH = f"/openai/deployments/{DEPLOYMENT}/chat/completions?api-version=2024-10-21"


@dataclass(frozen=True)
class StreamShape:
    """How long each call takes: ttft, then one token every ms_per_token.

    Ten events of ~200 ms keep the simulator and the client (sharing one core) on time at
    1,000 calls; the gateway's per-event cost shows in its CPU per call.
    """

    ttft_ms: float = 200.0
    ms_per_token: float = 200.0
    tokens: int = 10

    @property
    def expected_seconds(self) -> float:
        return (self.ttft_ms + (self.tokens - 1) * self.ms_per_token) / 1000

    def body(self) -> str:
        return json.dumps({"messages": [{"role": "user", "content": "Tell me a short story."}],
                           "max_tokens": self.tokens, "stream": True})


class SimulatorProcess:
    """``python -m simulator`` with one deployment whose quota never binds."""

    def __init__(self, repo: Path, shape: StreamShape, taskset: list[str]) -> None:
        self.repo = repo
        self.shape = shape
        self.taskset = taskset
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> SimulatorProcess:
        spec = (f"name={DEPLOYMENT},apikey={API_KEY},tpm=1000000000,rpm=1000000000,"
                f"ttft_ms={self.shape.ttft_ms},ms_per_token={self.shape.ms_per_token}")
        cmd = [*self.taskset, sys.executable, "-m", "simulator", "--host", "127.0.0.1",
               "--port", "0", "--idle-timeout", "60", "--deployment", spec]
        self.proc, base = start_simulator(cmd, self.repo)
        self.url = base + PATH
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Sampler:
    """Polls a process's resident memory and thread count while a run goes on."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid = pid
        self.every = every
        self.max_threads = 0
        self.max_rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            fields = status_fields(self.pid)
            self.max_threads = max(self.max_threads, fields["Threads"])
            self.max_rss_kb = max(self.max_rss_kb, fields["VmRSS"])
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class StreamResult:
    """One level of concurrency against one target."""

    target: str
    calls: int
    ok: int
    errors: int  # no answer, not 200, or no [DONE]
    starved: int  # finished more than 1 s after the slowest direct call (or the stream's
    # own length, for direct calls), or never
    ttfb_p50_ms: float | None
    ttfb_p99_ms: float | None
    ttfb_max_ms: float | None
    seconds_p50: float | None
    seconds_max: float | None
    wall_s: float
    client_cpu_share: float  # client CPU seconds per wall second (1.0 = a whole core)
    server_cpu_ms_per_call: float | None = None
    peak_rss_mb: float | None = None  # the gateway's VmHWM after this level
    max_threads: int | None = None
    error_kinds: dict[str, int] | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def run_client(url: str, calls: int, shape: StreamShape, headers: list[str],
               taskset: list[str]) -> dict:
    cmd = [*taskset, sys.executable, str(CLIENT), "--url", url, "--calls", str(calls),
           "--body", shape.body(), "--timeout", str(shape.expected_seconds * 5 + 30)]
    for header in headers:
        cmd += ["--header", header]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=shape.expected_seconds * 5 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"stream client failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def summarise(target: str, shape: StreamShape, report: dict,
              baseline: float | None = None) -> StreamResult:
    calls = report["calls"]
    good = [c for c in calls if c["status"] == 200 and c["done"]]
    kinds: dict[str, int] = {}
    for c in calls:
        if not (c["status"] == 200 and c["done"]):
            kind = c["error"] or (f"status {c['status']}" if c["status"] != 200 else "no [DONE]")
            kinds[kind] = kinds.get(kind, 0) + 1
    late = max(shape.expected_seconds, baseline or 0.0) + 1.0
    starved = sum(1 for c in calls if c["seconds"] is None or c["seconds"] > late)
    ttfb = [c["ttfb"] for c in good]
    seconds = [c["seconds"] for c in good]
    return StreamResult(
        target=target, calls=len(calls), ok=len(good), errors=len(calls) - len(good),
        starved=starved, ttfb_p50_ms=_ms(_percentile(ttfb, 0.5)),
        ttfb_p99_ms=_ms(_percentile(ttfb, 0.99)), ttfb_max_ms=_ms(max(ttfb, default=None)),
        seconds_p50=_round(_percentile(seconds, 0.5)),
        seconds_max=_round(max(seconds, default=None)), wall_s=round(report["wall"], 2),
        client_cpu_share=round(report["cpu"] / report["wall"], 3),
        error_kinds=kinds or None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def direct(simulator: SimulatorProcess, calls: int, shape: StreamShape,
           taskset: list[str]) -> StreamResult:
    """Calls straight to the simulator: the baseline for time to first byte."""
    report = run_client(simulator.url, calls, shape, [f"api-key:{API_KEY}"], taskset)
    return summarise("direct", shape, report)


def through(gateway_url: str, gateway_pid: int, calls: int, shape: StreamShape,
            taskset: list[str], baseline: float | None) -> StreamResult:
    """The same calls through the gateway, with its CPU, memory and threads; ``baseline`` is
    the slowest direct call at this level."""
    cpu0 = cpu_seconds(gateway_pid)
    with Sampler(gateway_pid) as sampler:
        report = run_client(gateway_url, calls, shape, [], taskset)
    result = summarise("gateway", shape, report, baseline)
    result.server_cpu_ms_per_call = round((cpu_seconds(gateway_pid) - cpu0) * 1000 / calls, 2)
    peak_kb = max(status_fields(gateway_pid)["VmHWM"], sampler.max_rss_kb)
    result.peak_rss_mb = round(peak_kb / 1024, 1) if peak_kb else None  # None: it died
    result.max_threads = sampler.max_threads or None
    time.sleep(0.5)  # let the gateway close the finished connections before the next level
    return result
