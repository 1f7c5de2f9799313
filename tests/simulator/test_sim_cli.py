"""``python -m simulator``: help, configuration errors, and a real process serving calls."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from simulator.config import DEPLOYMENT_FIELDS

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_help_documents_flags_and_fields():
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--config", "--deployment", "--host", "--port", "--verbose", "--check"):
        assert flag in result.stdout
    for field in DEPLOYMENT_FIELDS:
        assert f"  {field.name} " in result.stdout


def test_invalid_configuration_exits_1_naming_the_place(tmp_path):
    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"deployments": [{"name": "a", "apikey": "k"},
                                                {"name": "b", "apikey": "k", "rpm": 0}]}))
    result = run("--config", str(path))
    assert result.returncode == 1
    assert 'deployments[1] ("b").rpm: must be >= 1' in result.stderr
    assert result.stdout == ""


def test_check_validates_the_bundled_demo():
    result = run("--check")
    assert result.returncode == 0
    assert "primary (tpm 600, rpm 3" in result.stdout


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def test_a_process_serves_calls_and_stops_on_sigterm(tmp_path):
    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"port": 1, "deployments": [
        {"name": "from-file", "apikey": "k1", "ttft_ms": 0, "ms_per_token": 0}]}))
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--config", str(path), "--port", "0",
         "--deployment", "name=from-flag,apikey=k2,tpm=600,ttft_ms=0,ms_per_token=0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = _first_line(process, timeout=15)
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        url = match.group(1)
        deadline = time.monotonic() + 10
        while True:  # the line comes after the bind; still, poll /healthz, bounded
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the simulator did not answer /healthz"
            time.sleep(0.05)

        for name, key in (("from-file", "k1"), ("from-flag", "k2")):
            r = requests.post(
                f"{url}/openai/deployments/{name}/chat/completions?api-version=2024-10-21",
                headers={"api-key": key}, timeout=5,
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 2

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stderr is not None
        assert process.stderr.read() == ""  # quiet: no per-request log lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
