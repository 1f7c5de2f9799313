"""Build the image and run it for real with podman.

scripts/build-container.sh builds the image (no registry is reachable here: the base image
is a stand-in that scripts/install-ci-tools.sh builds from Debian's packages), then
scripts/start-container.sh runs it on the host's network, with the configuration mounted
read-only, the keys handed over from the environment and a data directory for the metrics
history file. The test asks /healthz and /readyz, sends one call through /lb (with a client
key) to a fake deployment on 127.0.0.1, waits for the history file, runs the image's
HEALTHCHECK, and stops the container while a slow call is in flight: the call must
complete, and SIGTERM must end the container promptly with exit code 0.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, ContainerTools

pytestmark = pytest.mark.container

IMAGE = "localhost/apirouter:ci-test"
# Obviously fake secrets; the test checks that none of them leaks.
GATEWAY_KEY = "fake-gateway-key-0000"
BACKEND_KEY = "fake-backend-key-1111"
CLIENT_KEY = "fake-client-key-5555"
SECRETS = (GATEWAY_KEY, BACKEND_KEY, CLIENT_KEY)
ENV_SEGMENT = "citest"
# Limits of each step, in seconds.
BUILD_TIMEOUT = 480
START_TIMEOUT = 60
STOP_LIMIT = 10
SLOW_CALL_S = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeDeployment(BaseHTTPRequestHandler):
    """A chat-completions deployment that answers at once and remembers what it saw."""

    seen: list[dict] = []  # each server gets a subclass with a list of its own

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append(
            {"path": self.path, "key": self.headers.get("api-key"), "body": body},
        )
        if body.get("user") == "slow":  # a call still running when SIGTERM arrives
            time.sleep(SLOW_CALL_S)
        answer = {
            "id": "chatcmpl-fake-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the fake."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def fake_deployment() -> Iterator[tuple[int, list[dict]]]:
    seen: list[dict] = []
    handler = type("Handler", (FakeDeployment,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def podman(
    tools: ContainerTools, *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [tools.podman, *args],
        capture_output=True,
        text=True,
        env=tools.env,
        timeout=timeout,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr.strip()}"
    return done


def http(
    method: str, url: str, body: dict | None = None, timeout: float = 10, key: str | None = None
):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("api-key", key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a key appears in {where}"


def wait_for_health(tools: ContainerTools, name: str, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        state = podman(tools, "inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state not in ("running", "created", "configured"):
            logs = podman(tools, "logs", name, check=False)
            pytest.fail(f"the container stopped ({state}):\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)
    logs = podman(tools, "logs", name, check=False)
    pytest.fail(f"no 200 from {url} within {START_TIMEOUT} s:\n{logs.stdout}{logs.stderr}")


@pytest.fixture(scope="module")
def image(container_tools: ContainerTools) -> str:
    for needed in ("wsgi.py", "requirements.txt", "gateway_app"):
        if not (REPO_ROOT / needed).exists():
            pytest.fail(f"{needed} is missing: the image has nothing to run", pytrace=False)
    done = subprocess.run(
        [
            str(REPO_ROOT / "scripts" / "build-container.sh"),
            "--engine",
            "podman",
            "--tag",
            IMAGE,
            "--",
            "--pull=never",
            "--network",
            "host",
        ],
        capture_output=True,
        text=True,
        env=container_tools.env,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"the build failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return IMAGE


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_image_is_built_as_specified(container_tools: ContainerTools, image: str) -> None:
    info = json.loads(podman(container_tools, "image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert "8000/tcp" in config["ExposedPorts"]
    assert config["Cmd"] == ["python", "wsgi.py"]
    assert config["WorkingDir"] == "/app"
    assert config.get("StopSignal") == "SIGTERM"
    env = dict(item.split("=", 1) for item in config["Env"])
    # Only where it listens; every other setting keeps the gateway's default or is required.
    gateway_env = {k: v for k, v in env.items() if k.startswith("API_GATEWAY_")}
    assert gateway_env == {"API_GATEWAY_HOST": "0.0.0.0", "API_GATEWAY_PORT": "8000"}
    # Podman keeps the HEALTHCHECK in the docker format the build script asks for.
    healthcheck = info.get("Healthcheck") or config.get("Healthcheck") or {}
    assert "healthz" in " ".join(healthcheck.get("Test", [])), info.keys()
    # Only what .dockerignore lets in.
    listing = podman(
        container_tools, "run", "--rm", "--network", "none", image, "ls", "-A", "/app"
    ).stdout.split()
    assert "gateway_app" in listing
    assert "wsgi.py" in listing
    for absent in ("tests", "k8s-chart", "scripts", ".git", "Dockerfile"):
        assert absent not in listing
    history = podman(container_tools, "history", "--no-trunc", image).stdout
    assert_no_secret(history + json.dumps(info), "the image")


@pytest.mark.timeout(BUILD_TIMEOUT + START_TIMEOUT + 120)
def test_container_serves_and_stops_on_sigterm(
    container_tools: ContainerTools,
    image: str,
    fake_deployment: tuple[int, list[dict]],
    tmp_path: Path,
) -> None:
    backend_port, seen = fake_deployment
    port = free_port()
    name = f"apirouter-ci-{os.getpid()}"
    config = tmp_path / "api-router-config.json"
    uri = (
        f"http://127.0.0.1:{backend_port}/openai/deployments/fake/chat/completions"
        "?api-version=2024-10-21"
    )
    document = {
        "endpoints": [{"uri": uri, "apikeyEnv": "AOAI_KEY_0"}],
        "clientKeys": [{"name": "ci-client", "keyEnv": "CI_CLIENT_KEY"}],
    }
    config.write_text(json.dumps(document))
    config.chmod(0o644)
    data_dir = tmp_path / "data"  # the metrics history file, written by uid 10001
    data_dir.mkdir()
    data_dir.chmod(0o777)
    env = dict(
        container_tools.env,
        API_GATEWAY_KEY=GATEWAY_KEY,
        AOAI_KEY_0=BACKEND_KEY,
        CI_CLIENT_KEY=CLIENT_KEY,
        API_GATEWAY_NAME="ci-gateway",
        API_GATEWAY_ENV=ENV_SEGMENT,
        # 3-second intervals, so one closes (and reaches the history file) during the test.
        API_GATEWAY_METRICS_CINTERVAL="0.05",
        API_GATEWAY_METRICS_CHISTORY="10",
        API_GATEWAY_SHUTDOWN_GRACE="5",
    )
    start = [
        str(REPO_ROOT / "scripts" / "start-container.sh"),
        "--engine",
        "podman",
        "--image",
        image,
        "--name",
        name,
        "--config",
        str(config),
        "--host-network",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--replace",
    ]
    try:
        started = subprocess.run(
            start, capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert_no_secret(started.stdout + started.stderr, "start-container.sh's output")
        assert started.returncode == 0, started.stderr
        base = f"http://127.0.0.1:{port}/api/v1/{ENV_SEGMENT}/apirouter"
        wait_for_health(container_tools, name, f"{base}/healthz")

        status, body = http("GET", f"{base}/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "OK"
        assert http("GET", f"{base}/readyz")[0] == 200

        call = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 5}
        # Client keys are on (from the file's clientKeys, handed over by keyEnv).
        assert http("POST", f"{base}/lb", call)[0] == 401
        status, body = http("POST", f"{base}/lb", call, key=CLIENT_KEY)
        assert status == 200, body
        answer = json.loads(body)
        assert answer["id"] == "chatcmpl-fake-1"
        assert answer["usage"]["total_tokens"] == 17
        assert len(seen) == 1
        assert seen[0]["key"] == BACKEND_KEY  # the key reached the backend
        assert seen[0]["path"].startswith("/openai/deployments/fake/chat/completions")
        assert seen[0]["body"]["max_tokens"] == 5

        status, body = http("GET", f"{base}/instanceinfo", key=CLIENT_KEY)
        assert status == 200
        assert_no_secret(body, "/instanceinfo")
        assert json.loads(body)["containerInfo"]["imageID"] == image

        # The image's own HEALTHCHECK, as docker or podman would run it.
        check = podman(container_tools, "healthcheck", "run", name, check=False, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr

        # Runs as the unprivileged user, on a read-only root filesystem.
        assert podman(container_tools, "exec", name, "id", "-u").stdout.strip() == "10001"
        touch = podman(container_tools, "exec", name, "touch", "/app/x", check=False)
        assert touch.returncode != 0

        # A closed interval reaches the history file on the mounted data directory.
        history = data_dir / "history.jsonl"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (history.exists() and history.stat().st_size):
            time.sleep(0.5)
        assert history.exists(), "no metrics history file was written"
        first = json.loads(history.read_text().splitlines()[0])
        assert first["instanceName"] == "ci-gateway"
        assert_no_secret(history.read_text(), "the history file")

        # A call in flight when SIGTERM arrives is let finish.
        slow: dict[str, object] = {}

        def slow_call() -> None:
            slow["result"] = http(
                "POST", f"{base}/lb", {"messages": [], "user": "slow"}, 30, key=CLIENT_KEY
            )

        caller = threading.Thread(target=slow_call, daemon=True)
        caller.start()
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(seen) == 2, "the slow call did not reach the fake deployment"

        # podman stop sends SIGTERM (the image's STOPSIGNAL) and waits.
        began = time.monotonic()
        podman(container_tools, "stop", "--time", "30", name, timeout=60)
        took = time.monotonic() - began
        caller.join(timeout=30)
        assert slow.get("result", (None,))[0] == 200, slow
        state = json.loads(podman(container_tools, "inspect", name).stdout)[0]["State"]
        logs = podman(container_tools, "logs", name, check=False)
        assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}:\n{logs.stderr}"
        assert took < STOP_LIMIT, f"SIGTERM took {took:.1f} s"
        assert_no_secret(logs.stdout + logs.stderr, "the container's logs")
    finally:
        podman(container_tools, "rm", "--force", "--time", "0", name, check=False)
