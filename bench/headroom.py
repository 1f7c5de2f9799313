"""Headroom routing measured: ``python bench/headroom.py`` (``--quick`` for a short run).

Through the simulator, three deployments with small quotas, in priority order: bursts of mixed
small and large chat completions, several calls at once, at several sizes (the concurrency),
each run with a fresh simulator and a fresh gateway, headroom ``off`` then ``on`` at every size,
in the same run. Reported per run: the deployments' 429s (what the gateway was refused), the
client's 429s (what the gateway refused), calls served, latency of served calls, and tokens per
minute served.
Loopback only; every step is bounded in time. Results: ``bench/results/headroom/<date>.json``,
``bench/results/headroom/latest.md`` and the blocks of docs/headroom.md and README.md
(``--quick``: bench/results/tmp/headroom/ only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench.gateway import GatewayProcess, git_revision
from bench.system import machine_info, start_simulator, stop_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "headroom"
DOCS = (ROOT / "docs" / "headroom.md", ROOT / "README.md")
DOC_BEGIN = "<!-- bench:headroom:begin (written by python bench/headroom.py; do not edit) -->"
DOC_END = "<!-- bench:headroom:end -->"
LATEST_TITLE = "# Headroom routing: latest benchmark\n\n"
API_KEY = "bench-key"
PATH = "/openai/deployments/{}/chat/completions?api-version=2024-10-21"

# Small quotas over a 5 s window (Azure's is a minute): a run of 10 to 20 s sees the
# deployments fill, spill and refill several times. tpm and rpm are per window; rpm is 6 per
# 1000 tpm, as Azure grants.
WINDOW_SECONDS = 5
# Time is compressed 12 times (a 5 s window for Azure's minute), so the time a reading is
# trusted is too: the default 5 s of a minute becomes 0.4 s of 5 s.
HEADROOM_SECONDS = round(5.0 * WINDOW_SECONDS / 60, 1)
DEPLOYMENTS = (
    {"name": "primary", "tpm": 12000, "rpm": 72},
    {"name": "secondary", "tpm": 20000, "rpm": 120},
    {"name": "tertiary", "tpm": 32000, "rpm": 192},
)
LATENCY = {"rtt_ms": 20, "ttft_ms": 30, "ms_per_token": 5}  # small: 0.2 s, large: 1.5 s
# Bursts: every WAVE_SECONDS, N calls at once (N: the level). The three deployments take
# 12,800 tokens a second; a call costs 285 on average, so bursts of 4 ask about 36% of that,
# 8 about 71%, 16 about 140%.
WAVE_SECONDS = 0.25
# The mix: three small calls to one large; costs by the estimate (characters / 4 + max_tokens).
SMALL = {"chars": 200, "max_tokens": 30}  # 80 tokens
LARGE = {"chars": 2400, "max_tokens": 300}  # 900 tokens
LARGE_SHARE = 0.25


@dataclass
class RunResult:
    """One run of bursts through one gateway (headroom on or off) at one burst size."""

    headroom: str
    concurrency: int  # calls sent at once in each burst
    calls: int
    served: int
    unserved: int  # answered 429 by the gateway, or another error
    client_429: int  # answered 429 by the gateway: no deployment could take the call
    backend_429: int  # 429s the gateway was answered by the deployments
    skips: int  # deployments passed over by headroom routing
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    tokens_served: int
    tpm_served: float


def payloads(count: int, seed: int) -> list[bytes]:
    """``count`` chat completions, a quarter of them large, in a seeded order."""
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        shape = LARGE if rng.random() < LARGE_SHARE else SMALL
        text = f"call {i}: " + "lorem ipsum " * (shape["chars"] // 12)
        bodies.append(json.dumps({"messages": [{"role": "user", "content": text}],
                                  "max_tokens": shape["max_tokens"]}).encode())
    return bodies


class Simulator:
    """``python -m simulator`` serving DEPLOYMENTS on a free port, in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.config = workdir / "simulator.json"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> Simulator:
        self.config.write_text(json.dumps({"deployments": [
            {**d, "apikey": API_KEY, "window_seconds": WINDOW_SECONDS, **LATENCY}
            for d in DEPLOYMENTS]}))
        self.proc, self.url = start_simulator(
            [sys.executable, "-m", "simulator", "--config", str(self.config), "--port", "0",
             "--host", "127.0.0.1"], ROOT)
        return self

    def endpoints(self) -> list[str]:
        return [self.url + PATH.format(d["name"]) for d in DEPLOYMENTS]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def post(http: requests.Session, url: str, body: bytes) -> tuple[int, float, int]:
    """One call: (status, seconds, total tokens of a 200); status 0 for a transport error."""
    started = time.monotonic()
    try:
        answer = http.post(url, data=body, timeout=60,
                           headers={"content-type": "application/json"})
    except requests.RequestException:
        return 0, time.monotonic() - started, 0
    tokens = answer.json().get("usage", {}).get("total_tokens", 0) \
        if answer.status_code == 200 else 0
    return answer.status_code, time.monotonic() - started, tokens


def send_waves(url: str, bodies: list[bytes], concurrency: int, period: float,
               seconds: float) -> list[tuple[int, float, int]]:
    """Every ``period`` seconds for ``seconds``, ``concurrency`` calls at once (the bodies in
    order), whether or not the calls of earlier waves have been answered; no retries."""
    sessions = threading.local()  # keep-alive: one Session per client thread

    def call(body: bytes) -> tuple[int, float, int]:
        http = getattr(sessions, "http", None)
        if http is None:
            http = sessions.http = requests.Session()
        return post(http, url, body)

    started = time.monotonic()
    futures = []
    # enough threads for a wave every period while the slowest calls of earlier ones run
    with ThreadPoolExecutor(max_workers=concurrency * 8) as pool:
        for wave in range(int(seconds / period)):
            time.sleep(max(0.0, started + wave * period - time.monotonic()))
            first = wave * concurrency
            futures += [pool.submit(call, body) for body in bodies[first:first + concurrency]]
        return [f.result() for f in futures]


def counter(prometheus: str, name: str, label: str = "") -> int:
    """The sum of the samples of counter ``name`` whose labels hold ``label``."""
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in prometheus.splitlines()
                   if line.startswith(name + "{") and label in line))


def backend_counts(gateway: GatewayProcess) -> tuple[int, int]:
    """(backend 429s, backends passed over) so far, from the gateway's /prometheus."""
    url = gateway.url.removesuffix("/lb") + "/prometheus"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return (counter(text, "apirouter_backend_calls_total", 'status_class="429"'),
            counter(text, "apirouter_skips_total"))


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_one(headroom: str, concurrency: int, bodies: list[bytes], warmup: int,
            workdir: Path, seconds: float) -> RunResult:
    """A fresh simulator and gateway; ``warmup`` calls one at a time, then the bursts."""
    simulator = Simulator(workdir).start()
    gateway = GatewayProcess(ROOT, workdir, simulator.endpoints(), threads=max(64, concurrency * 2),
                             taskset=[], log_level="warn",
                             extra_env={"API_GATEWAY_HEADROOM": headroom,
                                        "API_GATEWAY_HEADROOM_SECONDS": str(HEADROOM_SECONDS)})
    try:
        gateway.start()
        # the gateway has been serving before the burst: a few calls, one at a time
        with requests.Session() as http:
            for body in bodies[:warmup]:
                post(http, gateway.url, body)
        before = backend_counts(gateway)
        started = time.monotonic()
        results = send_waves(gateway.url, bodies[warmup:], concurrency, WAVE_SECONDS, seconds)
        elapsed = time.monotonic() - started
        after = backend_counts(gateway)
    finally:
        gateway.stop()
        simulator.stop()
    served = [r for r in results if r[0] == 200]
    latencies = [r[1] * 1000 for r in served]
    tokens = sum(r[2] for r in served)
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return RunResult(
        headroom=headroom, concurrency=concurrency, calls=len(results), served=len(served),
        unserved=len(results) - len(served),
        client_429=sum(1 for r in results if r[0] == 429),
        backend_429=after[0] - before[0], skips=after[1] - before[1],
        seconds=round(elapsed, 2),
        p50_ms=None if p50 is None else round(p50, 1),
        p99_ms=None if p99 is None else round(p99, 1),
        tokens_served=tokens, tpm_served=round(tokens / elapsed * 60) if elapsed else 0.0)


def _capacity() -> float:
    """Tokens a second the three deployments admit, all windows full."""
    return sum(d["tpm"] for d in DEPLOYMENTS) / WINDOW_SECONDS


def _demand(calls: int) -> float:
    """Tokens a second that bursts of ``calls`` calls ask, by the estimate."""
    small = SMALL["chars"] // 4 + SMALL["max_tokens"]
    large = LARGE["chars"] // 4 + LARGE["max_tokens"]
    average = (1 - LARGE_SHARE) * small + LARGE_SHARE * large
    return calls * average / WAVE_SECONDS


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _change(off: float, on: float) -> str:
    if off == 0:
        return "-" if on == 0 else f"+{on:g}"
    return f"{(on - off) / off * 100:+.0f}%"


def report(run: dict[str, Any]) -> str:
    """The Markdown tables of one run."""
    s = run["settings"]
    deployments = ", ".join(f"{d['name']} {d['tpm']:,} tokens / {d['rpm']} requests"
                            for d in DEPLOYMENTS)
    lines = [
        f"Run of {run['date']} ({'quick' if s['quick'] else 'full'}, {run['seconds']:.0f} s), "
        f"gateway at commit `{run['commit']}`; {run['machine']}; load average before the "
        f"run {' / '.join(f'{x:.2f}' for x in run['loadavg'])}.",
        "",
        f"Simulator: {deployments} per {WINDOW_SECONDS} s window (Azure's minute, 12 times "
        "faster), in that priority order; every answer after a network round trip of "
        f"{LATENCY['rtt_ms']} ms (429s too), then time to first token {LATENCY['ttft_ms']} ms "
        f"and {LATENCY['ms_per_token']} ms per token. API_GATEWAY_HEADROOM_SECONDS="
        f"{HEADROOM_SECONDS:g} (the default 5 s of a minute, at the same speed-up).",
        "",
        f"Load: for {s['seconds']:g} s, every {WAVE_SECONDS:g} s a burst of N chat completions "
        f"at once (N: the level), {100 - LARGE_SHARE * 100:.0f}% small ({SMALL['chars']} "
        f"characters, max_tokens {SMALL['max_tokens']}: about 80 tokens by the estimate) and "
        f"{LARGE_SHARE * 100:.0f}% large ({LARGE['chars']} characters, max_tokens "
        f"{LARGE['max_tokens']}: about 900), in the same seeded order in every run; keep-alive, no "
        f"retries. The deployments take {_capacity():,.0f} tokens a second; the bursts ask "
        + ", ".join(f"{_demand(n) / _capacity():.0%} of that at {n}" for n in s["bursts"])
        + f". Before the load, {s['warmup']} calls one at a time (a gateway that has been "
        "serving). A fresh simulator and gateway per run. Latency: of served calls, seen by "
        "the client.",
        "",
        "| calls a burst | headroom | calls served | not served | client 429s | backend 429s "
        "| passed over | p50 ms | p99 ms | tokens/min served (bench time) | seconds |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["results"]:
        lines.append(
            f"| {r['concurrency']} | {r['headroom']} | {r['served']} | {r['unserved']} "
            f"| {r['client_429']} | {r['backend_429']} | {r['skips']} "
            f"| {_num(r['p50_ms'], 1)} | {_num(r['p99_ms'], 1)} | {_num(r['tpm_served'])} "
            f"| {r['seconds']:.1f} |")
    lines += ["", "Headroom on compared with off:", "",
              "| calls a burst | backend 429s | calls served | client 429s | p50 | p99 "
              "| tokens/min served |", "|---:|---:|---:|---:|---:|---:|---:|"]
    pairs = {}
    for r in run["results"]:
        pairs.setdefault(r["concurrency"], {})[r["headroom"]] = r
    totals = {"off": 0, "on": 0}
    for size, pair in pairs.items():
        off, on = pair.get("off"), pair.get("on")
        if off is None or on is None:
            continue
        totals["off"] += off["backend_429"]
        totals["on"] += on["backend_429"]
        cells = [_change(off[k], on[k]) if off[k] is not None and on[k] is not None else "-"
                 for k in ("backend_429", "served", "client_429", "p50_ms", "p99_ms",
                           "tpm_served")]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    if totals["off"]:
        lines += ["", f"Backend 429s over all levels: {totals['off']} with headroom off, "
                      f"{totals['on']} with it on ({_change(totals['off'], totals['on'])})."]
    return "\n".join(lines)


def write(run: dict[str, Any], directory: Path, docs: bool) -> Path:
    """``<directory>/<date>.json`` and ``latest.md``; with ``docs``, the blocks of DOCS."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (run["date"].replace(":", "")[:17] + ".json")
    path.write_text(json.dumps(run, indent=1) + "\n")
    text = report(run)
    (directory / "latest.md").write_text(LATEST_TITLE + text + "\n")
    for doc in DOCS if docs else ():
        content = doc.read_text()
        if DOC_BEGIN in content and DOC_END in content:
            head, rest = content.split(DOC_BEGIN, 1)
            doc.write_text(head + DOC_BEGIN + "\n" + text + "\n" + DOC_END
                           + rest.split(DOC_END, 1)[1])
    return path


def _levels(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("every level must be >= 1")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/headroom.py",
        description="Headroom routing on vs off: bursts of mixed calls through the gateway in "
                    "front of the simulator's three small deployments, at several sizes.")
    parser.add_argument("--quick", action="store_true",
                        help="two levels, 10 s each, written to bench/results/tmp/headroom/ "
                             "(docs left alone)")
    parser.add_argument("--bursts", type=_levels, default=None,
                        help="calls a burst at each level, e.g. 4,8,16 "
                             "(default 4,8,16; --quick: 8,16)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of bursts per run (default 20; --quick: 10)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="calls sent one at a time before the bursts (default 3)")
    parser.add_argument("--seed", type=int, default=19, help="seed of the mix (default 19)")
    args = parser.parse_args(argv)
    levels = args.bursts or ([8, 16] if args.quick else [4, 8, 16])
    seconds = args.seconds or (10.0 if args.quick else 20.0)
    bodies = payloads(args.warmup + 20_000, args.seed)  # more than any run can send
    loadavg = list(os.getloadavg())
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-headroom-") as tmp:
        for size in levels:
            for mode in ("off", "on"):
                result = run_one(mode, size, bodies, args.warmup, Path(tmp), seconds)
                print(f"bursts of {size:3}, headroom {mode:3}: served {result.served}, not "
                      f"{result.unserved}, client 429s {result.client_429}, backend 429s "
                      f"{result.backend_429}, passed over {result.skips}, p50 "
                      f"{_num(result.p50_ms, 1)} ms, p99 {_num(result.p99_ms, 1)} ms, "
                      f"{_num(result.tpm_served)} tokens/min", flush=True)
                results.append(asdict(result))
    info = machine_info()
    run = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "seconds": round(time.monotonic() - started, 1), "commit": git_revision(ROOT),
           "machine": f"{info.get('cpu', '?')}, {info.get('cpus', '?')} CPUs",
           "loadavg": loadavg,
           "settings": {"quick": args.quick, "bursts": levels, "seconds": seconds,
                        "warmup": args.warmup, "seed": args.seed,
                        "deployments": DEPLOYMENTS, "window_seconds": WINDOW_SECONDS,
                        "latency": LATENCY, "wave_seconds": WAVE_SECONDS,
                        "headroom_seconds": HEADROOM_SECONDS, "small": SMALL, "large": LARGE,
                        "large_share": LARGE_SHARE},
           "results": results}
    path = write(run, RESULTS.parent / "tmp" / "headroom" if args.quick else RESULTS,
                 docs=not args.quick)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
