"""The command line: ``python -m simulator [--config FILE] [--deployment SPEC] ...``."""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
import threading
from collections.abc import Sequence
from dataclasses import replace

from simulator.config import (
    DEPLOYMENT_FIELDS,
    ConfigError,
    SimulatorConfig,
    bundled_config_path,
    deployment_from_spec,
    load_config,
    parse_deployment,
    unique_names,
)
from simulator.server import DEFAULT_IDLE_TIMEOUT, SimulatorServer

_DESCRIPTION = """\
Simulate Azure OpenAI deployments on one HTTP port, for tests, demos and benchmarks.

Serves POST /openai/deployments/{name}/chat/completions, /completions and /embeddings
(?api-version= required, header api-key checked), and GET /healthz. Each deployment has a
token and a request budget over a sliding window (429 with retry-after and retry-after-ms
when spent), a latency model (time to first token + time per token), streaming with
server-sent events, and injected faults (500s, slow answers, dropped connections).

Deployments come from --config FILE, from --deployment flags, or both; with neither, the
bundled demo configuration is served (%s)."""

_EPILOG_HEAD = """\
configuration file:
  {"host": "127.0.0.1", "port": 8080,          (optional; flags override them)
   "deployments": [{"name": "gpt-4o-east", "apikey": "sim-key-1", "tpm": 1000}, ...]}

deployment fields (file objects and --deployment key=value pairs):"""

_EPILOG_TAIL = """\
examples:
  python -m simulator --config simulator/deployments.json --port 8080
  python -m simulator --port 0 --deployment name=gpt4,apikey=k1,tpm=600,ms_per_token=5
  curl -s -H 'api-key: k1' -H 'content-type: application/json' \\
    'http://127.0.0.1:8080/openai/deployments/gpt4/chat/completions?api-version=2024-10-21' \\
    -d '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}'

One line "simulator: listening on http://HOST:PORT ..." is printed to stdout once the port is
bound (useful with --port 0). SIGTERM or Ctrl-C stops the simulator at once (exit 0).
Exit status 1: invalid configuration, or the port cannot be bound."""


def _epilog() -> str:
    lines = [_EPILOG_HEAD]
    for field in DEPLOYMENT_FIELDS:
        default = "required" if field.required else f"default {_show(field.default)}"
        lines.append(textwrap.fill(
            f"{field.help} ({default})", width=92,
            initial_indent=f"  {field.name:<21} ", subsequent_indent=" " * 24,
        ))
    return "\n".join(lines) + "\n\n" + _EPILOG_TAIL


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; its help documents every flag and configuration field."""
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description=_DESCRIPTION % bundled_config_path(),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="JSON configuration file listing the deployments")
    parser.add_argument("-d", "--deployment", metavar="SPEC", action="append", default=[],
                        help="add a deployment given as key=value pairs separated by commas, "
                             "e.g. name=d1,apikey=k1,tpm=600 (repeatable; same fields as "
                             "the file)")
    parser.add_argument("--host", help="listen address (default: the file's, else 127.0.0.1; "
                                       "0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int,
                        help="listen port, 0 for any free port (default: the file's, else 8080)")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT,
                        metavar="SECONDS",
                        help="close a connection idle for this long (default %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, print the deployments and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log every request and every server error to stderr")
    return parser


def load(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration the flags describe (file, --deployment flags, or the demo)."""
    if args.config:
        config = load_config(args.config)
    elif args.deployment:
        config = SimulatorConfig(deployments=())
    else:
        config = load_config(bundled_config_path())
    extra = tuple(
        parse_deployment(deployment_from_spec(spec), f"--deployment {spec!r}")
        for spec in args.deployment
    )
    return replace(config, deployments=unique_names(config.deployments + extra))


def _describe(config: SimulatorConfig) -> str:
    return ", ".join(
        f"{d.name} (tpm {d.tpm}, rpm {d.effective_rpm}, window {d.window_seconds:g}s)"
        for d in config.deployments
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGTERM or Ctrl-C; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"simulator: invalid configuration: {exc}", file=sys.stderr)
        return 1
    if args.check:
        print(f"simulator: configuration OK: {_describe(config)}")
        return 0

    server = SimulatorServer(config, host=args.host, port=args.port,
                             idle_timeout=args.idle_timeout, verbose=args.verbose)
    try:
        server.start()
    except OSError as exc:
        port = config.port if args.port is None else args.port
        address = f"{args.host or config.host}:{port}"
        print(f"simulator: cannot listen on {address}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"simulator: listening on {server.url} with deployments: {_describe(config)}",
          flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
    return 0
