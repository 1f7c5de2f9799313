"""A client's tpm across two replicas: how far over its limit it gets in any minute.

``python bench/client_limits.py`` (``--help`` for the options) starts redis-server, a fake
deployment and two ``python wsgi.py`` replicas sharing it, and one client with a ``tpm``.
Threads on each replica send that client's calls as fast as they are admitted; on a 429
they wait as its ``retry-after-ms`` says (as the OpenAI SDKs do, capped at 0.2 s so that
every freed token is contended). Every call is estimated at 100 tokens and the deployment
reports 100, so the estimate and the settlement agree and only the replicas' race shows.

The figure is the most tokens the deployment received for the client in any 60 s window
(each call's arrival starts one), against the tpm: overshoot = that / tpm - 1. Without
shared usage it is about +100% with two replicas. Prints JSON; writes nothing.

Needs Debian's redis-server (``bash scripts/install-ci-tools.sh --redis``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.cluster_parts import RedisServer, Replica  # noqa: E402
from tests.fakes import FakeBackend, reply  # noqa: E402

KEY = "bench-client-key-1"
CALL = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 90}  # 100 tokens
ANSWER = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "finish_reason": "length",
                       "message": {"role": "assistant", "content": "ok"}}],
          "usage": {"prompt_tokens": 10, "completion_tokens": 90, "total_tokens": 100}}


def hammer(url: str, stop: threading.Event, counts: dict[str, int], lock: threading.Lock
           ) -> None:
    session = requests.Session()
    while not stop.is_set():
        answer = session.post(url, json=CALL, headers={"api-key": KEY}, timeout=30)
        with lock:
            counts[str(answer.status_code)] = counts.get(str(answer.status_code), 0) + 1
        if answer.status_code == 429:
            wait = int(answer.headers.get("retry-after-ms", "100")) / 1000
            stop.wait(min(wait, 0.2))


def max_in_window(times: list[float], tokens: int, window: float = 60.0) -> int:
    """The most calls (times sorted) in any ``window`` seconds, times ``tokens`` each."""
    best = 0
    for i, start in enumerate(times):
        best = max(best, bisect_left(times, start + window) - i)
    return best * tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tpm", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=125.0,
                        help="how long to send (over two minutes: the window slides)")
    parser.add_argument("--threads", type=int, default=8, help="client threads per replica")
    parser.add_argument("--no-redis", action="store_true",
                        help="replicas without shared state, for comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        redis_server = RedisServer(work)
        backend = FakeBackend(default=reply(200, ANSWER))
        sections = {"clientKeys": [{"name": "app", "key": KEY, "tpm": args.tpm}]}
        url = redis_server.url if not args.no_redis else ""
        replicas = [Replica(work, name, [backend], url, sections=sections)
                    for name in ("a", "b")]
        stop, lock = threading.Event(), threading.Lock()
        counts: dict[str, int] = {}
        threads = [threading.Thread(target=hammer, args=(f"{r.url}/lb", stop, counts, lock))
                   for r in replicas for _ in range(args.threads)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join(35)
        elapsed = time.monotonic() - started
        times = sorted(r.at for r in backend.received)
        for replica in replicas:
            replica.stop()
        backend.close()
        redis_server.stop()
    peak = max_in_window(times, 100)
    result = {"tpm": args.tpm, "replicas": 2, "threadsPerReplica": args.threads,
              "sharedUsage": not args.no_redis, "seconds": round(elapsed, 1),
              "answers": counts, "callsServed": len(times),
              "peakTokensIn60s": peak, "overshoot": round(peak / args.tpm - 1, 4)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
