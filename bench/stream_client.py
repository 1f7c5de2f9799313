"""Many concurrent streamed calls from one asyncio process; prints one JSON object.

Each call opens its own connection (``Connection: close``), sends one POST, and reads the
answer to the end. Per call it records the status, time to first byte, total time and whether
``data: [DONE]`` arrived. Standard library only, so it runs with any Python::

    python bench/stream_client.py --url URL --calls 1000 --body '{"stream": true, ...}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit


async def one_call(host: str, port: int, request: bytes, timeout: float) -> dict[str, object]:
    """One call; times are seconds from just before connecting."""
    started = time.monotonic()
    result: dict[str, object] = {"status": 0, "ttfb": None, "seconds": None, "done": False,
                                 "error": None}
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
            writer.write(request)
            first = await reader.read(65536)
            result["ttfb"] = time.monotonic() - started
            chunks = [first]
            while chunk := await reader.read(65536):
                chunks.append(chunk)
            writer.close()
        answer = b"".join(chunks)
        result["seconds"] = time.monotonic() - started
        status_line = answer.split(b"\r\n", 1)[0].split()
        result["status"] = int(status_line[1]) if len(status_line) > 1 else 0
        result["done"] = b"data: [DONE]" in answer
    except (OSError, TimeoutError, ValueError) as exc:
        result["error"] = type(exc).__name__
    return result


async def run(url: str, calls: int, body: bytes, headers: dict[str, str],
              timeout: float) -> list[dict[str, object]]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return await asyncio.gather(*(one_call(host, port, request, timeout) for _ in range(calls)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    started = time.monotonic()
    results = asyncio.run(run(args.url, args.calls, args.body.encode(), headers, args.timeout))
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "calls": results},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
