"""``python bench/run.py``: every phase of the benchmark in one bounded run.

1. load: wrk at each connection count against nginx directly, through the gateway, through
   the floor (the least a proxy on the gateway's own stack costs, bench/floor.py) and (when
   available) through the LiteLLM proxy, all on 127.0.0.1, interleaved level by level; at one
   level (16 connections by default) also the floor's lower rungs, waitress alone and Flask
   alone (the stack ladder); then an open loop (16 connections at a fixed rate well below the
   gateway's capacity) against nginx directly and through the gateway;
2. streams: many concurrent ~2 s streamed calls, directly to the simulator and through one
   gateway process;
3. results: a JSON file under bench/results/, latest.md, and the block of docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import litellm, report, streams
from .floor import RUNGS, FloorProcess
from .gateway import GatewayProcess, git_revision
from .load import measure, measure_open
from .nginx import NginxFake
from .system import Pinning, ensure_tools, machine_info, machine_state, tool_version

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = (ROOT / "docs" / "performance.md", ROOT / "README.md")
# The open loop: its connections, and its rate as a share of the gateway's closed-loop
# throughput at the same connection count in the same run (OPEN_FALLBACK_RATE if unmeasured).
OPEN_CONNECTIONS = 16
OPEN_SHARE = 0.25
OPEN_FALLBACK_RATE = 400.0
# The one wrk connection count at which the floor's lower rungs are measured.
LADDER_CONNECTIONS = 16
# Seconds to start and stop one rung's process, for the budget.
LADDER_START_S = 2.0
GATEWAY_BODY = ('{"messages":[{"role":"system","content":"You are a helpful assistant."},'
                '{"role":"user","content":"Say hello."}],"max_tokens":16}')


def _levels(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("every level must be >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py", description=__doc__.split("\n")[0],
        epilog="A full run takes about 4-6 minutes (plus a one-off LiteLLM install); --quick "
               "under a minute. Only 127.0.0.1 is targeted. Quick runs write to "
               "bench/results/tmp/ and leave docs alone.")
    add = parser.add_argument
    add("--quick", action="store_true",
        help="smoke run: 2 s per level, 100 streams, no LiteLLM (unless --litellm)")
    add("--duration", type=float, help="seconds of wrk load per level (default 10; quick 2)")
    add("--warmup", type=float, help="seconds of wrk warm-up per level (default 2; quick 0.5)")
    add("--connections", type=_levels, default=[1, 16, 64, 256],
        help="wrk connection counts (default 1,16,64,256)")
    add("--open-rate", type=float,
        help="total calls/s of the open loop (default: 25%% of the gateway's closed-loop req/s "
             "at 16 connections in this run, or 400 if that level was not run); 0 skips it")
    add("--open-connections", type=int, default=OPEN_CONNECTIONS,
        help="connections of the open loop (default 16)")
    add("--streams", type=_levels,
        help="concurrent streamed calls (default 100,500,1000; quick 100)")
    add("--stream-ttft-ms", type=float, default=200.0, help="simulator time to first token")
    add("--stream-ms-per-token", type=float, default=200.0, help="simulator time per token")
    add("--stream-tokens", type=int, default=10, help="tokens per streamed answer")
    add("--litellm", action=argparse.BooleanOptionalAction, default=None,
        help="compare with the LiteLLM proxy (default: on for a full run, off for --quick)")
    add("--litellm-venv", type=Path, default=litellm.DEFAULT_VENV,
        help=f"venv for LiteLLM, created when missing (default {litellm.DEFAULT_VENV})")
    add("--phases", default="load,streams", help="which phases to run (default load,streams)")
    add("--gateway-dir", type=Path, default=ROOT,
        help="tree whose wsgi.py and gateway_app/ are measured (default: this repository)")
    add("--gateway-threads", type=int, default=512,
        help="API_GATEWAY_THREADS for the load phase (the streams phase uses calls + 64)")
    add("--gateway-log-level", default="info", help="API_GATEWAY_LOG_LEVEL (default info)")
    add("--no-floor", action="store_true",
        help="do not measure the floor (a bare proxy on the gateway's stack) in the load phase")
    add("--ladder-connections", type=int, default=LADDER_CONNECTIONS,
        help="wrk connection count at which the floor's lower rungs (waitress alone, Flask "
             "alone) are measured, after that level's targets (default 16; 0 skips them)")
    add("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    add("--out", type=Path, help="results directory (default bench/results; quick: .../tmp)")
    add("--label", default="", help="suffix for the result file name, e.g. a change's name")
    add("--no-docs", action="store_true",
        help="do not rewrite the results blocks of docs/performance.md and README.md")
    add("--budget", type=float, help="seconds after which remaining phases are skipped "
                                     "(default 600; quick 60)")
    return parser


def _versions(args: argparse.Namespace) -> dict[str, str]:
    found = {}
    for name in ("flask", "werkzeug", "waitress", "requests", "urllib3"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    found["nginx"] = tool_version(["nginx", "-v"]).replace("nginx version: ", "")
    found["wrk"] = " ".join(tool_version(["wrk", "-v"]).split()[:2])
    found["gateway"] = git_revision(args.gateway_dir)
    return found


class Run:
    """The state of one benchmark run: settings, processes, and what was measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.args = args
        self.duration = args.duration or (2.0 if quick else 10.0)
        self.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 2.0)
        self.stream_levels = args.streams or ([100] if quick else [100, 500, 1000])
        self.use_litellm = args.litellm if args.litellm is not None else not quick
        self.budget = args.budget or (60.0 if quick else 600.0)
        self.phases = {p.strip() for p in args.phases.split(",")}
        self.pinning = Pinning.choose(not args.no_pin)
        self.server_cpu = Pinning.prefix(self.pinning.server)
        self.load_cpu = Pinning.prefix(self.pinning.load)
        self.wrk_threads = 1 if self.pinning.load and "," not in self.pinning.load else 2
        self.started = time.monotonic()
        self.notes: list[str] = []
        self.result: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, text: str) -> None:
        print(f"bench: {text}", flush=True)
        self.notes.append(text)

    def room_for(self, seconds: float, what: str) -> bool:
        """Whether ``what`` fits in the budget; a note when it does not."""
        if self.elapsed() + seconds <= self.budget:
            return True
        self.note(f"skipped {what}: it would overrun the {self.budget:.0f} s budget")
        return False

    # --- phase 1 ---------------------------------------------------------------------------
    def load_phase(self, workdir: Path) -> None:
        args = self.args
        results: list[dict[str, Any]] = []
        self.result["load"] = results
        with contextlib.ExitStack() as stack:
            fake = stack.enter_context(NginxFake(workdir, self.load_cpu))
            gateway = stack.enter_context(GatewayProcess(
                args.gateway_dir, workdir, [fake.url], args.gateway_threads, self.server_cpu,
                args.gateway_log_level))
            targets: list[tuple[str, str, Any]] = [("direct", fake.url, None),
                                                   ("gateway", gateway.url, gateway)]
            if not args.no_floor:
                floor = stack.enter_context(FloorProcess(
                    args.gateway_dir, workdir, [fake.url], args.gateway_threads, self.server_cpu))
                targets.append(("floor", floor.url, floor))
            proxy = self._start_litellm(stack, workdir, fake.port) if self.use_litellm else None
            if proxy is not None:
                targets.append(("litellm", proxy.url, proxy))
            per_level = len(targets) * (self.duration + self.warmup + 1)
            for conns in args.connections:
                if not self.room_for(per_level, f"wrk at {conns} connections"):
                    break
                for name, url, server in targets:
                    if server is not None and not _alive(server):
                        self.note(f"{name} is no longer running; its remaining levels are skipped")
                        continue
                    self._closed_loop(name, url, server, conns)
                if conns == args.ladder_connections:
                    self._ladder(workdir, fake.url, conns)
            if args.ladder_connections > 0 and args.ladder_connections not in args.connections:
                self.note(f"stack ladder skipped: {args.ladder_connections} is not one of the "
                          "wrk connection counts")
            self.result["floor"] = report.floor_split(results)
            self.result["ladder"] = report.ladder(results, args.ladder_connections)
            self._open_loop(targets[:2], results)
            if _alive(gateway):
                self.result["gateway_memory"] = gateway.memory()
            else:
                self.note(f"the gateway died during the load phase: {gateway.log_tail(3)}")

    def _closed_loop(self, name: str, url: str, server: Any, conns: int) -> None:
        """One wrk run against ``name`` at ``conns``, printed and added to the load results."""
        body = litellm.LiteLLMProxy.body() if name == "litellm" else GATEWAY_BODY
        r = measure(name, url, body, conns, self.duration, self.warmup,
                    server and server.pid, self.load_cpu, self.wrk_threads)
        print(f"  load {name:8} c={conns:<4} {r.rps:>10,.0f} req/s  "
              f"p50 {r.p50_ms:8.3f} ms  p99 {r.p99_ms:8.3f} ms  "
              f"errors {r.errors + r.non2xx}", flush=True)
        self.result["load"].append(r.to_json())

    def _ladder(self, workdir: Path, backend: str, conns: int) -> None:
        """The floor's lower rungs at ``conns``: each served like the floor, on the server CPU,
        started, measured and stopped in turn."""
        if not self.room_for((len(RUNGS) + 1) * (self.duration + self.warmup + 1 + LADDER_START_S),
                             f"the stack ladder at {conns} connections"):
            return
        args = self.args
        rungs = [(kind, lambda kind=kind: FloorProcess(
                    args.gateway_dir, workdir, [backend], args.gateway_threads, self.server_cpu,
                    kind=kind)) for kind in RUNGS]
        if args.gateway_log_level == "info":  # the per-call line's cost, as its own step
            rungs.append(("gateway-warn", lambda: GatewayProcess(
                args.gateway_dir, workdir, [backend], args.gateway_threads, self.server_cpu,
                "warn")))
        for name, start in rungs:
            try:
                with start() as rung:
                    self._closed_loop(name, rung.url, rung, conns)
            except RuntimeError as exc:
                self.note(f"stack ladder: {name} failed: {exc}")

    def _open_rate(self, closed: list[dict[str, Any]]) -> tuple[float, str]:
        """The open loop's total rate, and how it was chosen."""
        conns = self.args.open_connections
        if self.args.open_rate is not None:
            return self.args.open_rate, "set with --open-rate"
        ref = next((r for r in closed if r["target"] == "gateway"
                    and r["connections"] == conns and r["rps"]), None)
        if ref is None:
            return OPEN_FALLBACK_RATE, (f"fixed: the gateway was not measured at {conns} "
                                        "connections in closed loop")
        rate = max(10.0, round(ref["rps"] * OPEN_SHARE / 10) * 10)
        return rate, (f"{OPEN_SHARE:.0%} of the gateway's closed-loop {ref['rps']:,.0f} req/s "
                      f"at {conns} connections")

    def _open_loop(self, targets: list[tuple[str, str, Any]],
                   closed: list[dict[str, Any]]) -> None:
        rate, why = self._open_rate(closed)
        if rate <= 0:
            return
        conns = self.args.open_connections
        runs: list[dict[str, Any]] = []
        self.result["open_loop"] = {"rate": rate, "rate_basis": why, "connections": conns,
                                    "results": runs}
        if not self.room_for(len(targets) * (self.duration + self.warmup + 1),
                             f"the open loop at {rate:g} req/s"):
            return
        for name, url, server in targets:
            if server is not None and not _alive(server):
                self.note(f"the {name} is no longer running; its open loop is skipped")
                continue
            r = measure_open(name, url, GATEWAY_BODY, conns, rate, self.duration,
                             max(self.warmup, 0.5), server and server.pid, self.load_cpu)
            print(f"  open {name:8} c={conns:<4} {r.achieved_rate:>10,.0f} req/s  "
                  f"p50 {r.p50_ms or 0:8.3f} ms  p99 {r.p99_ms or 0:8.3f} ms  "
                  f"errors {r.errors + r.non2xx}  client lag p99 {r.lag_p99_ms or 0:.3f} ms  "
                  f"client CPU {r.client_cpu_share:.0%}", flush=True)
            runs.append(r.to_json())

    def _start_litellm(self, stack: contextlib.ExitStack, workdir: Path,
                       fake_port: int) -> litellm.LiteLLMProxy | None:
        try:
            exe = litellm.ensure_installed(self.args.litellm_venv)
            self.result["versions"]["litellm"] = litellm.installed_version(self.args.litellm_venv)
            proxy = stack.enter_context(litellm.LiteLLMProxy(
                exe, workdir, f"http://127.0.0.1:{fake_port}", self.server_cpu))
            proxy.check()
            return proxy
        except litellm.Unavailable as exc:
            self.note(f"LiteLLM skipped: {exc}")
            return None

    # --- phase 2 ---------------------------------------------------------------------------
    def stream_phase(self, workdir: Path) -> None:
        args = self.args
        shape = streams.StreamShape(args.stream_ttft_ms, args.stream_ms_per_token,
                                    args.stream_tokens)
        threads = max(self.stream_levels) + 64
        results: list[dict[str, Any]] = []
        self.result["streams"] = {"shape": {**shape.__dict__,
                                            "expected_seconds": shape.expected_seconds},
                                  "gateway_threads": threads, "results": results}
        with streams.SimulatorProcess(ROOT, shape, self.load_cpu) as sim, \
                GatewayProcess(args.gateway_dir, workdir, [sim.url], threads, self.server_cpu,
                               args.gateway_log_level) as gateway:
            for calls in self.stream_levels:
                if not self.room_for(2 * shape.expected_seconds + 10, f"{calls} streams"):
                    break
                pair = [streams.direct(sim, calls, shape, self.load_cpu)]
                if _alive(gateway):
                    pair.append(streams.through(gateway.url, gateway.pid, calls, shape,
                                                self.load_cpu, pair[0].seconds_max))
                    if not _alive(gateway):
                        self.note(f"the gateway died during {calls} streams: "
                                  f"{gateway.log_tail(1)}")
                for r in pair:
                    print(f"  streams {r.target:8} n={calls:<5} errors {r.errors:<4} "
                          f"starved {r.starved:<4} ttfb p50 {r.ttfb_p50_ms} ms "
                          f"p99 {r.ttfb_p99_ms} ms  rss {r.peak_rss_mb} MB", flush=True)
                    results.append(r.to_json())


def _alive(server: Any) -> bool:
    return server is not None and server.proc is not None and server.proc.poll() is None


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ensure_tools(["nginx", "wrk"], ["nginx", "wrk"])
    _raise_file_limit()
    run = Run(args)
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"bench: {'quick' if args.quick else 'full'} run; pinning: {run.pinning.describe()}",
          flush=True)
    run.result.update({
        "date": date, "kind": "quick" if args.quick else "full", "label": args.label,
        "settings": {"duration": run.duration, "warmup": run.warmup,
                     "connections": args.connections, "streams": run.stream_levels,
                     "open_connections": args.open_connections,
                     "gateway_threads": args.gateway_threads,
                     "gateway_log_level": args.gateway_log_level, "floor": not args.no_floor,
                     "ladder_connections": args.ladder_connections,
                     "gateway_dir": str(args.gateway_dir)},
        "machine": machine_info(), "versions": _versions(args),
        "pinning": run.pinning.describe(), "machine_before": machine_state(),
    })
    workdir = Path(tempfile.mkdtemp(prefix="apirouter-bench-"))
    try:
        for phase, step in (("load", run.load_phase), ("streams", run.stream_phase)):
            if phase not in run.phases:
                continue
            try:
                step(workdir)
            except Exception as exc:  # one broken phase must not lose the others' numbers
                traceback.print_exc()
                run.note(f"{phase} phase failed: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.result["elapsed_s"] = round(run.elapsed(), 1)
    run.result["notes"] = run.notes
    return _publish(run)


def _publish(run: Run) -> int:
    args = run.args
    out = args.out or (RESULTS / "tmp" if args.quick else RESULTS)
    path = report.write_json(run.result, out)
    table = report.markdown(run.result)
    (out / "latest.md").write_text(f"# Latest benchmark\n\n{table}")
    print(f"\n{table}\nbench: wrote {path} and {out / 'latest.md'}", flush=True)
    official = not args.quick and out.resolve() == RESULTS.resolve()
    if official and not args.no_docs:
        for doc in DOCS:
            if report.update_doc(doc, table):
                print(f"bench: updated the results block of {doc}")
            else:
                print(f"bench: {doc} has no results block; left alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
