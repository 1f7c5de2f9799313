"""The LiteLLM proxy as a point of comparison: its own venv under /tmp, one worker, pointed at
the same nginx fake as an Azure deployment.

The version is pinned: litellm 1.82.7 and 1.82.8 were malicious uploads (March 2026), and a
benchmark should not pull whatever is newest into a root shell. The proxy gets a minimal
environment, no database, and the local model-cost map, so it has nothing to fetch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .system import free_port, stop_process

PACKAGE = "litellm[proxy]==1.82.6"
DEFAULT_VENV = Path("/tmp/bench-litellm-venv")
MODEL = "gpt-4o"


class Unavailable(RuntimeError):
    """LiteLLM cannot be installed or started here; the benchmark goes on without it."""


def ensure_installed(venv: Path, timeout: float = 600.0) -> Path:
    """The ``litellm`` executable in ``venv``, installing it first if needed."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"bench: installing {PACKAGE} into {venv} (once; a few minutes) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                       capture_output=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        "--only-binary", ":all:", PACKAGE],
                       check=True, timeout=timeout, capture_output=True)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        raise Unavailable(f"pip could not install {PACKAGE}: {' '.join(tail)}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"could not install {PACKAGE}: {exc}") from None
    if not exe.exists():
        raise Unavailable(f"{PACKAGE} installed no litellm command")
    return exe


def installed_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "from importlib.metadata import version; print(version('litellm'))"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or "unknown"


class LiteLLMProxy:
    """``litellm --config ... --num_workers 1`` on 127.0.0.1, Azure deployment = the fake."""

    def __init__(self, exe: Path, workdir: Path, fake_base: str, taskset: list[str]) -> None:
        self.exe = exe
        self.dir = workdir / "litellm"
        self.fake_base = fake_base
        self.taskset = taskset
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "litellm.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/chat/completions"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @staticmethod
    def body() -> str:
        return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
                           "max_tokens": 16})

    def start(self, timeout: float = 120.0) -> LiteLLMProxy:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "config.yaml"  # JSON is YAML
        config.write_text(json.dumps({
            "model_list": [{"model_name": MODEL, "litellm_params": {
                "model": "azure/bench", "api_base": self.fake_base, "api_key": "bench-key",
                "api_version": "2024-10-21"}}],
            "litellm_settings": {"telemetry": False, "set_verbose": False},
        }))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir),
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "LITELLM_TELEMETRY": "False", "NO_PROXY": "*"}
        cmd = [*self.taskset, str(self.exe), "--config", str(config), "--host", "127.0.0.1",
               "--port", str(self.port), "--num_workers", "1", "--telemetry", "False"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        health = f"http://127.0.0.1:{self.port}/health/liveliness"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"litellm exited with status {self.proc.returncode}: "
                                  f"{self._tail()}")
            try:
                with urllib.request.urlopen(health, timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise Unavailable(f"litellm did not answer {health} in {timeout:.0f} s")

    def check(self) -> None:
        """One real call through the proxy, so a misconfiguration is not benchmarked."""
        request = urllib.request.Request(self.url, data=self.body().encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                payload = json.loads(answer.read())
        except OSError as exc:
            raise Unavailable(f"a call through litellm failed: {exc}; {self._tail()}") from None
        if not payload.get("choices"):
            raise Unavailable(f"litellm answered without choices: {str(payload)[:200]}")

    def _tail(self, lines: int = 3) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10)
            self.proc = None

    def __enter__(self) -> LiteLLMProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
