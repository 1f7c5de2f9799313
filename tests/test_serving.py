"""The real processes: ``python wsgi.py`` and ``waitress-serve wsgi:app``, and SIGTERM draining."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import base_env, write_config
from tests.fakes import DONE_EVENT, chunk, sse_event, stream, wait_until

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    full_env = {**os.environ, **env}
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_serving(url: str, proc: subprocess.Popen) -> None:
    def up() -> bool:
        assert proc.poll() is None, proc.stdout.read()
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.ConnectionError:
            return False
    wait_until(up, timeout=20, interval=0.1)


@contextmanager
def wsgi_process(tmp_path: Path, backends: list, **env: str
                 ) -> Iterator[tuple[subprocess.Popen, str, int]]:
    """``python wsgi.py`` in front of ``backends`` on a free port, serving; killed at the end
    if the test left it running. Yields the process, the route prefix and the port."""
    port = free_port()
    full_env = {**base_env(write_config(tmp_path / "c.json", backends)),
                "API_GATEWAY_PORT": str(port), "API_GATEWAY_HOST": "127.0.0.1", **env}
    proc = start([sys.executable, "wsgi.py"], full_env)
    try:
        prefix = f"http://127.0.0.1:{port}/api/v1/test/apirouter"
        wait_serving(f"{prefix}/healthz", proc)
        yield proc, prefix, port
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture
def process_env(tmp_path, fake):
    backend = fake()
    port = free_port()
    env = {**base_env(write_config(tmp_path / "c.json", [backend])),
           "API_GATEWAY_PORT": str(port), "API_GATEWAY_HOST": "127.0.0.1",
           "API_GATEWAY_LOG_LEVEL": "info"}
    return env, port, backend


@pytest.mark.parametrize("launcher", ["python", "waitress-serve"])
def test_both_launchers_serve_the_gateway(process_env, launcher):
    env, port, backend = process_env
    if launcher == "python":
        cmd = [sys.executable, "wsgi.py"]
    else:
        cmd = [sys.executable, "-m", "waitress", "--host", "127.0.0.1", "--port", str(port),
               "wsgi:app"]
    proc = start(cmd, env)
    try:
        prefix = f"http://127.0.0.1:{port}/api/v1/test/apirouter"
        wait_serving(f"{prefix}/healthz", proc)
        r = requests.post(f"{prefix}/lb", json={"messages": []}, timeout=10)
        assert r.status_code == 200 and backend.calls == 1
    finally:
        proc.terminate()
        proc.wait(15)


def test_sigterm_lets_a_slow_stream_finish_then_exits_0(tmp_path, fake):
    backend = fake().script(stream([*(sse_event(chunk(i, "x")) for i in range(6)), DONE_EVENT],
                                   gap=0.3))
    with wsgi_process(tmp_path, [backend], API_GATEWAY_SHUTDOWN_GRACE="20",
                      API_GATEWAY_LOG_LEVEL="info") as (proc, prefix, port):
        received: list[bytes] = []

        def client() -> None:
            r = requests.post(f"{prefix}/lb", json={"stream": True}, stream=True, timeout=30)
            received.extend(line for line in r.iter_lines() if line)

        t = threading.Thread(target=client)
        t.start()
        wait_until(lambda: backend.calls == 1, timeout=10)
        proc.send_signal(signal.SIGTERM)
        # no new connections once the signal is handled
        wait_until(lambda: _refused(port), timeout=5)
        t.join(20)
        assert received[-1] == b"data: [DONE]" and len(received) == 7
        assert proc.wait(15) == 0
        output = proc.stdout.read()
        assert "signal SIGTERM" in output and "stopped" in output


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def test_grace_period_bounds_the_wait(tmp_path, fake):
    backend = fake().script(stream([sse_event(chunk(i, "x")) for i in range(100)], gap=0.2))
    with wsgi_process(tmp_path, [backend], API_GATEWAY_SHUTDOWN_GRACE="0.5") as (proc, prefix,
                                                                                 _port):
        r = requests.post(f"{prefix}/lb", json={"stream": True}, stream=True, timeout=30)
        next(r.iter_lines())
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10


def test_graceful_stop_writes_the_open_interval_to_the_history_file(tmp_path, fake):
    backend = fake()
    history = tmp_path / "history.jsonl"
    with wsgi_process(tmp_path, [backend],
                      API_GATEWAY_METRICS_HISTORY_FILE=str(history)) as (proc, prefix, _port):
        assert requests.post(f"{prefix}/lb", json={}, timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    [line] = history.read_text().splitlines()
    entry = json.loads(line)
    assert entry["endpoint"] == backend.uri()
    assert entry["collectedMetrics"]["noOfApiCalls"] == 1


def test_env_file_fills_what_the_environment_does_not_set(tmp_path, fake):
    backend = fake()
    port = free_port()
    env = base_env(write_config(tmp_path / "c.json", [backend]))
    env_file = tmp_path / "gateway.env"
    env_file.write_text("\n".join([
        "# settings of the test gateway",
        f"API_GATEWAY_CONFIG_FILE={env.pop('API_GATEWAY_CONFIG_FILE')}",
        "API_GATEWAY_KEY",                      # taken from the environment
        "API_GATEWAY_NAME=from-file",           # the environment's value wins
        f"API_GATEWAY_ENV={env.pop('API_GATEWAY_ENV')}",
        "  API_GATEWAY_METRICS_CHISTORY=7",
        'IMAGE_ID="quoted"',                    # quotes are part of the value
        "API_GATEWAY_TREADS=8",                 # a typo: warned about, with the nearest name
        "API_GATEWAY_PORT=1",                   # the environment's free port wins
        "",
    ]))
    del env["API_GATEWAY_METRICS_CHISTORY"]
    env.update(API_GATEWAY_NAME="from-env", API_GATEWAY_PORT=str(port),
               API_GATEWAY_HOST="127.0.0.1")
    proc = start([sys.executable, "wsgi.py", "--env-file", str(env_file)], env)
    try:
        prefix = f"http://127.0.0.1:{port}/api/v1/test/apirouter"
        wait_serving(f"{prefix}/healthz", proc)
        info = requests.get(f"{prefix}/instanceinfo", timeout=10).json()
        assert info["serverName"] == "from-env"
        assert info["envVars"]["apiGatewayCollectHistoryCount"] == 7
        assert info["containerInfo"]["imageID"] == '"quoted"'
        key = env["API_GATEWAY_KEY"]
        assert requests.get(f"{prefix}/reconfig/{key}", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
    output = proc.stdout.read()
    assert ("environment variable API_GATEWAY_TREADS names no setting and is ignored; "
            "did you mean API_GATEWAY_THREADS?") in output
    assert key not in output


def test_a_missing_env_file_is_one_line_and_exit_1(tmp_path):
    env = base_env(tmp_path / "c.json")
    done = subprocess.run([sys.executable, "wsgi.py", "--env-file", str(tmp_path / "none.env")],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"apirouter: cannot start: cannot read env file {tmp_path / 'none.env'}: "
        "No such file or directory"]
