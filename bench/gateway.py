"""The gateway under test: ``python wsgi.py`` in a subprocess, configured by environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .system import free_port, status_fields, stop_process

ENV_NAME = "bench"
ROUTE = f"/api/v1/{ENV_NAME}/apirouter"


def git_revision(directory: Path) -> str:
    """Short commit of ``directory``, with ``+dirty`` when the tree has changes."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "gateway_app",
                    "wsgi.py")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


class GatewayProcess:
    """One gateway process serving ``backend_urls`` (in priority order) on 127.0.0.1.

    ``name`` and ``command`` (after the interpreter, run from ``source``) say what is served;
    a subclass serving something else with the same environment changes them.
    """

    name = "gateway"
    command: tuple[str, ...] = ("wsgi.py",)

    def __init__(self, source: Path, workdir: Path, backend_urls: list[str], threads: int,
                 taskset: list[str], log_level: str = "info",
                 extra_env: dict[str, str] | None = None) -> None:
        self.source = source
        self.dir = workdir
        self.backend_urls = backend_urls
        self.threads = threads
        self.taskset = taskset
        self.log_level = log_level
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{self.name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ROUTE}/lb"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def environment(self, config: Path) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith("API_GATEWAY_")}
        return {**keep,
                "API_GATEWAY_KEY": "bench-reload-key",
                "API_GATEWAY_CONFIG_FILE": str(config),
                "API_GATEWAY_NAME": "bench",
                "API_GATEWAY_ENV": ENV_NAME,
                "API_GATEWAY_METRICS_CINTERVAL": "1",
                "API_GATEWAY_METRICS_CHISTORY": "10",
                "API_GATEWAY_HOST": "127.0.0.1",
                "API_GATEWAY_PORT": str(self.port),
                "API_GATEWAY_THREADS": str(self.threads),
                "API_GATEWAY_LOG_LEVEL": self.log_level,
                "API_GATEWAY_SHUTDOWN_GRACE": "2",
                "PYTHONDONTWRITEBYTECODE": "1",
                **self.extra_env}

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / f"{self.name}-{self.port}.json"
        config.write_text(json.dumps({"endpoints": [
            {"uri": url, "apikey": "bench-key"} for url in self.backend_urls]}))
        with open(self.log_path, "wb") as log:  # a file: a pipe nobody reads would block
            self.proc = subprocess.Popen([*self.taskset, sys.executable, *self.command],
                                         cwd=self.source, env=self.environment(config),
                                         stdout=log, stderr=subprocess.STDOUT)
        probe = self.probe()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.name} exited with status {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(probe, timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the {self.name} did not answer {probe.full_url} in {timeout:.0f} s")

    def probe(self) -> urllib.request.Request:
        """The call that answers 200 once the process is ready."""
        return urllib.request.Request(f"http://127.0.0.1:{self.port}{ROUTE}/healthz")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def memory(self) -> dict[str, float]:
        """Peak and current resident memory (MB) and thread count, now."""
        fields = status_fields(self.pid)
        return {"peak_rss_mb": round(fields["VmHWM"] / 1024, 1),
                "rss_mb": round(fields["VmRSS"] / 1024, 1), "threads": fields["Threads"]}

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10)
            self.proc = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
