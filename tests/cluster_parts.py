"""Real parts for the shared-state tests: Debian's redis-server and ``python wsgi.py`` replicas.

redis-server is started by the tests themselves on a free loopback port, without persistence,
and stopped after; when it is missing the tests skip (or fail in CI) through
tests/tools.missing_tool. Each replica is an ordinary gateway process with its own
configuration file and its own log file (a pipe could fill and stall it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import GATEWAY_KEY, base_env, write_config
from tests.fakes import wait_until
from tests.tools import REPO_ROOT, missing_tool

INSTALL_REDIS = "bash scripts/install-ci-tools.sh --redis (as root)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server on 127.0.0.1, no persistence; can be killed and started again on the
    same port."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing_tool("redis-server is not installed", INSTALL_REDIS)
        self.binary = str(binary)
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--save", "", "--appendonly", "no", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=10, interval=0.02)

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=2)

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, everything it held is lost."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Replica:
    """``python wsgi.py`` with Redis, in front of ``endpoints``, on a free port."""

    def __init__(self, workdir: Path, name: str, endpoints: list[Any], redis_url: str,
                 sections: dict[str, Any] | None = None, port: int | None = None,
                 **env: str) -> None:
        self.name = name
        self.port = port or free_port()
        self.config_file = write_config(workdir / f"{name}.json", endpoints, sections)
        self.log_file = workdir / f"{name}.log"
        full_env = {**os.environ, **base_env(self.config_file),
                    "API_GATEWAY_NAME": name, "API_GATEWAY_PORT": str(self.port),
                    "API_GATEWAY_HOST": "127.0.0.1", "API_GATEWAY_THREADS": "32",
                    "API_GATEWAY_REDIS_URL": redis_url,
                    "API_GATEWAY_REDIS_SYNC_SECONDS": "0.2", **env}
        self._log = self.log_file.open("w")
        self.proc = subprocess.Popen([sys.executable, "wsgi.py"], cwd=REPO_ROOT, env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/api/v1/test/apirouter"
        self.http = requests.Session()
        wait_until(self._serving, timeout=30, interval=0.05)

    def _serving(self) -> bool:
        assert self.proc.poll() is None, f"{self.name} exited:\n{self.output()}"
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def output(self) -> str:
        return self.log_file.read_text()

    def get(self, route: str, **kwargs: Any) -> requests.Response:
        return self.http.get(f"{self.url}/{route}", timeout=10, **kwargs)

    def lb(self, **kwargs: Any) -> requests.Response:
        return self.http.post(f"{self.url}/lb",
                              json={"messages": [{"role": "user", "content": "hi"}]},
                              timeout=30, **kwargs)

    def reconfig(self, headers: dict[str, str] | None = None) -> requests.Response:
        return self.http.post(f"{self.url}/reconfig",
                              headers={"x-api-gateway-key": GATEWAY_KEY, **(headers or {})},
                              timeout=10)

    def cluster(self) -> dict[str, Any]:
        return self.get("instanceinfo").json()["cluster"]

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """/readyz's state of each endpoint of /lb, by URL."""
        return {e["endpoint"]: e for e in self.get("readyz").json()["endpoints"]
                if e["pool"] == "/lb"}

    def rewrite(self, endpoints: list[Any], sections: dict[str, Any] | None = None) -> None:
        write_config(self.config_file, endpoints, sections)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.http.close()
        self._log.close()


def redis_dump(client) -> dict[str, Any]:
    """Every key of a Redis and its whole value, whatever its type (SCAN, then read)."""
    dump: dict[str, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            dump[key] = client.get(key)
        elif kind == "hash":
            dump[key] = client.hgetall(key)
        elif kind == "zset":
            dump[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            dump[key] = sorted(client.smembers(key))
        elif kind == "list":
            dump[key] = client.lrange(key, 0, -1)
        else:
            dump[key] = f"<{kind}>"
    return dump


def as_text(value: Any) -> str:
    return json.dumps(value, default=str)


def elapsed(since: float) -> float:
    return time.monotonic() - since
