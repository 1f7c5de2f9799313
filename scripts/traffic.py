"""Send a burst of chat completions through the gateway and show who served them.

    python scripts/traffic.py [--url URL] [--calls 30] [--concurrency 4] [--max-tokens 50]
                              [--stream]

Each call goes to ``POST {url}/lb``. The gateway names the endpoint that answered in the
``x-apirouter-endpoint`` header (its priority index); ``GET {url}/instanceinfo`` maps that
index to the deployment. After the burst the script prints what the client saw, then the
gateway's own view from ``GET {url}/metrics`` and, when the gateway has it, which endpoints
are cooling down (``GET {url}/readyz``). Exit status 0, or 1 when the gateway is unreachable.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

DEFAULT_URL = "http://127.0.0.1:8000/api/v1/dev/apirouter"
_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")


@dataclass(frozen=True)
class CallResult:
    """What the client saw for one call."""

    status: int | None  # None when no HTTP answer came back
    endpoint: str | None = None  # x-apirouter-endpoint: priority of the endpoint that answered
    attempts: int = 0  # x-apirouter-attempts: endpoints tried for this call
    retry_after: str | None = None  # on a 429 from the gateway itself
    error: str | None = None  # connection error, or the error code of a non-2xx answer

    @property
    def served(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Burst:
    """The results of one burst, in the order the calls were sent."""

    results: list[CallResult]
    seconds: float
    concurrency: int
    max_tokens: int
    stream: bool


def _error_code(response: requests.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def send_call(url: str, index: int, max_tokens: int, stream: bool,
              timeout: float = 60.0) -> CallResult:
    """One chat completion through ``{url}/lb``; a streamed answer is read to its end."""
    payload: dict[str, Any] = {
        "messages": [{"role": "user", "content": f"Say something about call {index}."}],
        "max_tokens": max_tokens,
    }
    if stream:
        payload["stream"] = True
    try:
        with requests.post(f"{url}/lb", json=payload, timeout=timeout, stream=stream) as response:
            if stream and response.ok:
                for _ in response.iter_content(chunk_size=None):
                    pass
            else:
                response.content  # noqa: B018 - read the whole answer
    except requests.RequestException as exc:
        return CallResult(status=None, error=type(exc).__name__)
    headers = response.headers
    return CallResult(
        status=response.status_code,
        endpoint=headers.get("x-apirouter-endpoint"),
        attempts=int(headers.get("x-apirouter-attempts", "0") or 0),
        retry_after=headers.get("retry-after") if response.status_code == 429 else None,
        error=None if response.ok else _error_code(response),
    )


def run_burst(url: str, calls: int = 30, concurrency: int = 4, max_tokens: int = 50,
              stream: bool = False, timeout: float = 60.0) -> Burst:
    """Send ``calls`` chat completions, ``concurrency`` at a time; results in sending order."""
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="traffic")
    try:
        futures = [pool.submit(send_call, url, i, max_tokens, stream, timeout)
                   for i in range(calls)]
        results = [f.result() for f in futures]
    finally:
        # on an interruption, drop the calls not sent yet instead of waiting for them
        pool.shutdown(wait=False, cancel_futures=True)
    return Burst(results, time.monotonic() - started, concurrency, max_tokens, stream)


def get_json(url: str, route: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """``GET {url}/{route}`` as JSON, or None when the gateway does not answer it."""
    try:
        response = requests.get(f"{url}/{route}", timeout=timeout)
        return response.json() if response.status_code in (200, 503) else None
    except (requests.RequestException, ValueError):
        return None


def deployment_label(uri: str) -> str:
    """A short name for an endpoint URI: host:port and the Azure deployment name."""
    parts = urlsplit(uri)
    match = _DEPLOYMENT.search(parts.path)
    return f"{parts.netloc} {match.group(1)}" if match else f"{parts.netloc}{parts.path}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    return [line.format(*header).rstrip(), *(line.format(*row).rstrip() for row in rows)]


def format_burst(burst: Burst, endpoints: dict[str, str]) -> str:
    """The client's view: per endpoint, calls served; then 429s and errors from the gateway."""
    results = burst.results
    served = Counter(r.endpoint for r in results if r.served)
    moved = Counter(r.endpoint for r in results if r.served and r.attempts > 1)
    relayed = Counter(r.endpoint for r in results if r.endpoint is not None and not r.served)
    names = sorted(set(endpoints) | {r.endpoint for r in results if r.endpoint is not None},
                   key=lambda p: (len(p), p))
    rows = [[p, deployment_label(endpoints[p]) if p in endpoints else "?",
             str(served[p]), str(moved[p]), str(relayed[p])] for p in names]
    mode = "streamed " if burst.stream else ""
    lines = [f"{len(results)} {mode}calls in {burst.seconds:.1f} s "
             f"(concurrency {burst.concurrency}, max_tokens {burst.max_tokens}): "
             f"{sum(served.values())} served",
             *_table(["endpoint", "deployment", "served", "after failover", "errors"], rows)]
    throttled = [r for r in results if r.status == 429 and r.endpoint is None]
    waits = sorted({int(r.retry_after) for r in throttled if (r.retry_after or "").isdigit()})
    span = f"{waits[0]}-{waits[-1]}" if len(waits) > 1 else "".join(map(str, waits))
    told = f", told retry-after {span} s" if waits else ""
    lines.append(f"429 from the gateway (every endpoint busy): {len(throttled)}{told}")
    others = Counter(r.error for r in results
                     if not r.served and r.endpoint is None and r.status != 429)
    detail = ", ".join(f"{code} x{n}" for code, n in others.most_common())
    lines.append(f"other errors: {sum(others.values())}" + (f" ({detail})" if detail else ""))
    return "\n".join(lines)


def format_metrics(metrics: dict[str, Any]) -> str:
    """The gateway's view from /metrics: current interval per endpoint, instance totals."""
    rows, history = [], 0
    for entry in metrics.get("endpointMetrics", []):
        m = entry.get("metrics", {})
        history = max(history, len(m.get("history", {})))
        rows.append([str(entry.get("priority")), deployment_label(entry.get("endpoint", "")),
                     str(m.get("apiCalls")), str(m.get("failedCalls")),
                     f"{m.get('kInferenceTokens', 0):.3f}"])
    interval = metrics.get("collectionInterval")
    lines = [f"gateway /metrics, current interval ({interval} min; "
             f"{history} closed interval(s) in history):",
             *_table(["endpoint", "deployment", "apiCalls", "failedCalls", "kInferenceTokens"],
                     rows),
             f"instance: successApiCalls {metrics.get('successApiCalls')}, "
             f"failedApiCalls {metrics.get('failedApiCalls')}, "
             f"totalApiCalls {metrics.get('totalApiCalls')}"]
    return "\n".join(lines)


def format_cooldowns(readiness: dict[str, Any]) -> str:
    """Endpoints cooling down, from /readyz; empty when none is."""
    lines = [f"  endpoint {e.get('priority')} ({deployment_label(e.get('endpoint', ''))}): "
             f"{e.get('cooldownSeconds', 0):.1f} s more ({e.get('reason') or 'cooling down'})"
             for e in readiness.get("endpoints", []) if not e.get("available", True)]
    return "\n".join(["cooling down, no call goes there until then:", *lines]) if lines else ""


def report(url: str, burst: Burst, endpoints: dict[str, str]) -> str:
    """The whole summary printed after a burst."""
    parts = [format_burst(burst, endpoints)]
    metrics = get_json(url, "metrics")
    if metrics is not None:
        parts.append(format_metrics(metrics))
    readiness = get_json(url, "readyz")
    if readiness is not None and format_cooldowns(readiness):
        parts.append(format_cooldowns(readiness))
    return "\n\n".join(parts)


def endpoint_map(url: str) -> dict[str, str] | None:
    """Priority index -> deployment URI from /instanceinfo; None when the gateway is down."""
    info = get_json(url, "instanceinfo")
    if info is None:
        return None
    return {str(k): str(v) for k, v in info.get("oaiEndpoints", {}).items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python scripts/traffic.py",
        description="Send a burst of chat completions to the gateway's /lb route and show "
                    "which endpoint served each call, the 429s the client got, and the "
                    "gateway's metrics.")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the gateway's route prefix (default {DEFAULT_URL})")
    parser.add_argument("--calls", type=int, default=30, help="calls to send (default 30)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="calls in flight at once (default 4)")
    parser.add_argument("--max-tokens", type=int, default=50,
                        help="max_tokens of each call (default 50)")
    parser.add_argument("--stream", action="store_true", help="ask for streamed answers")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = args.url.rstrip("/")
    endpoints = endpoint_map(url)
    if endpoints is None:
        print(f"traffic: the gateway does not answer GET {url}/instanceinfo; is it running?",
              file=sys.stderr)
        return 1
    burst = run_burst(url, args.calls, args.concurrency, args.max_tokens, args.stream)
    print(report(url, burst, endpoints), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
