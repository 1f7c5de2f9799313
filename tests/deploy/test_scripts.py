"""The container scripts' arguments, checked against a fake engine (no tool needed).

A stand-in `podman` on PATH records the arguments it gets and the secrets it could read from
its environment, so these tests see exactly what the scripts would run, quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from gateway_app.envfile import read_env_file

from .conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(30)

BUILD = REPO_ROOT / "scripts" / "build-container.sh"
START = REPO_ROOT / "scripts" / "start-container.sh"
GATEWAY_KEY = "fake-gateway-key-2222"
BACKEND_KEY = "fake-backend-key-3333"
CLIENT_KEY = "fake-client-key-4444"

FAKE_ENGINE = """#!/usr/bin/env python3
import json, os, sys
watched = ("API_GATEWAY_", "AOAI_", "CHAT_")
record = {
    "argv": sys.argv[1:],
    "env": {k: v for k, v in os.environ.items() if k.startswith(watched)},
}
with open(os.environ["FAKE_ENGINE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
sys.exit(1 if sys.argv[1:3] == ["container", "inspect"] else 0)
"""


@pytest.fixture
def fake_engine(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    engine = bin_dir / "podman"
    engine.write_text(FAKE_ENGINE)
    engine.chmod(0o755)
    log = tmp_path / "engine.log"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_ENGINE_LOG": str(log),
    }
    return env, log


def calls(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def run(cmd: list[str | Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=20, check=False
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "api-router-config.json"
    path.parent.mkdir()
    uri = "https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21"
    document = {
        "endpoints": [{"uri": uri, "apikeyEnv": "AOAI_KEY_0"}],
        "clientKeys": [{"name": "chat-app", "keyEnv": "CHAT_APP_KEY"}],
    }
    path.write_text(json.dumps(document))
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("script", [BUILD, START], ids=["build", "start"])
def test_help(script: Path) -> None:
    done = run([script, "--help"], dict(os.environ))
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: scripts/")
    assert run([script, "--no-such-option"], dict(os.environ)).returncode == 2


def test_build_passes_the_right_arguments(fake_engine: tuple[dict[str, str], Path]) -> None:
    env, log = fake_engine
    done = run([BUILD, "--engine", "podman", "--tag", "gw:1", "--", "--pull=never"], env)
    assert done.returncode == 0, done.stderr
    (call,) = calls(log)
    argv = call["argv"]
    assert argv[0] == "build"
    assert argv[argv.index("--file") + 1] == str(REPO_ROOT / "Dockerfile")
    assert argv[argv.index("--tag") + 1] == "gw:1"
    assert argv[argv.index("--format") + 1] == "docker"  # keeps the HEALTHCHECK
    assert "--pull=never" in argv
    assert argv[-1] == str(REPO_ROOT)


def test_start_needs_the_gateway_key(
    fake_engine: tuple[dict[str, str], Path], config: Path
) -> None:
    env, log = fake_engine
    done = run([START, "--engine", "podman", "--config", config], env)
    assert done.returncode == 1
    assert "API_GATEWAY_KEY is not set" in done.stderr
    assert calls(log) == []


def test_start_needs_the_keys_the_config_names(
    fake_engine: tuple[dict[str, str], Path], config: Path
) -> None:
    env, log = fake_engine
    env["API_GATEWAY_KEY"] = GATEWAY_KEY
    done = run([START, "--engine", "podman", "--config", config], env)
    assert done.returncode == 1
    assert "AOAI_KEY_0 is not set" in done.stderr
    assert GATEWAY_KEY not in done.stdout + done.stderr
    assert calls(log) == []


def test_start_needs_the_client_keys_the_config_names(
    fake_engine: tuple[dict[str, str], Path], config: Path
) -> None:
    env, log = fake_engine
    env.update(API_GATEWAY_KEY=GATEWAY_KEY, AOAI_KEY_0=BACKEND_KEY)
    done = run([START, "--engine", "podman", "--config", config], env)
    assert done.returncode == 1
    assert "CHAT_APP_KEY is not set" in done.stderr
    assert calls(log) == []


def test_start_needs_the_pool_keys_the_config_names(
    fake_engine: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = fake_engine
    env["API_GATEWAY_KEY"] = GATEWAY_KEY
    backend = {"endpoint": "https://e.openai.azure.com", "deployment": "d", "apikeyEnv": "POOL_K"}
    path = tmp_path / "pools.json"
    path.write_text(json.dumps({"deployments": {"d": {"backends": [backend]}}}))
    path.chmod(0o644)
    done = run([START, "--engine", "podman", "--config", path], env)
    assert done.returncode == 1
    assert "POOL_K is not set" in done.stderr
    assert calls(log) == []


def test_start_hands_secrets_over_by_name_only(
    fake_engine: tuple[dict[str, str], Path], config: Path
) -> None:
    env, log = fake_engine
    env.update(API_GATEWAY_KEY=GATEWAY_KEY, AOAI_KEY_0=BACKEND_KEY, API_GATEWAY_ENV="prod")
    env.update(CHAT_APP_KEY=CLIENT_KEY, API_GATEWAY_CLIENT_KEYS=CLIENT_KEY)
    env.update(API_GATEWAY_THREADS="64")
    cmd = [START, "--engine", "podman", "--config", config, "--port", "9000", "--name", "gw"]
    done = run([*cmd, "--replace"], env)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    for secret in (GATEWAY_KEY, BACKEND_KEY, CLIENT_KEY):
        assert secret not in output
    assert "http://127.0.0.1:9000/api/v1/prod/apirouter/healthz" in output
    inspect, call = calls(log)
    assert inspect["argv"][:2] == ["container", "inspect"]
    argv = call["argv"]
    assert argv[0] == "run"
    assert argv[-1] == "apirouter:latest"
    joined = " ".join(argv)
    # Secrets: named, never valued, on the command line; the engine gets them by environment.
    for secret in (GATEWAY_KEY, BACKEND_KEY, CLIENT_KEY):
        assert secret not in joined
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    by_name = ["API_GATEWAY_KEY", "AOAI_KEY_0", "CHAT_APP_KEY", "API_GATEWAY_CLIENT_KEYS"]
    for name in [*by_name, "API_GATEWAY_THREADS"]:
        assert name in envs
        assert call["env"][name] == env[name]
    settings = dict(e.split("=", 1) for e in envs if "=" in e)
    assert settings["API_GATEWAY_CONFIG_FILE"] == "/etc/apirouter/api-router-config.json"
    assert settings["API_GATEWAY_NAME"] == "gw"
    assert settings["API_GATEWAY_ENV"] == "prod"
    assert settings["API_GATEWAY_METRICS_CINTERVAL"] == "60"
    assert settings["API_GATEWAY_METRICS_CHISTORY"] == "168"
    assert settings["API_GATEWAY_PORT"] == "8000"
    assert settings["IMAGE_ID"] == "apirouter:latest"
    # The file is mounted read-only; the container is locked down and detached.
    volume = argv[argv.index("--volume") + 1]
    assert volume.startswith(f"{config}:/etc/apirouter/api-router-config.json:ro")
    assert argv[argv.index("--publish") + 1] == "0.0.0.0:9000:8000"
    assert "--read-only" in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges"
    assert argv[argv.index("--stop-timeout") + 1] == "35"  # the gateway's 25 s grace + 10
    assert argv[argv.index("--restart") + 1] == "unless-stopped"
    assert "--detach" in argv


def test_start_on_the_host_network(fake_engine: tuple[dict[str, str], Path], config: Path) -> None:
    env, log = fake_engine
    env.update(API_GATEWAY_KEY=GATEWAY_KEY, AOAI_KEY_0=BACKEND_KEY, CHAT_APP_KEY=CLIENT_KEY)
    done = run(
        [START, "--engine", "podman", "--config", config, "--host-network", "--port", "9100"],
        env,
    )
    assert done.returncode == 0, done.stderr
    (call,) = calls(log)
    argv = call["argv"]
    assert argv[argv.index("--network") + 1] == "host"
    assert "--publish" not in argv
    assert "API_GATEWAY_PORT=9100" in argv


def test_start_with_a_data_dir(
    fake_engine: tuple[dict[str, str], Path], config: Path, tmp_path: Path
) -> None:
    env, log = fake_engine
    env.update(API_GATEWAY_KEY=GATEWAY_KEY, AOAI_KEY_0=BACKEND_KEY, CHAT_APP_KEY=CLIENT_KEY)
    env["API_GATEWAY_METRICS_HISTORY_FILE"] = "/elsewhere.jsonl"  # the script's own wins
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)
    done = run([START, "--engine", "podman", "--config", config, "--data-dir", data], env)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    (call,) = calls(log)
    argv = call["argv"]
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert f"{data}:/var/lib/apirouter:rw" in volumes
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert "API_GATEWAY_METRICS_HISTORY_FILE=/var/lib/apirouter/history.jsonl" in envs
    assert "API_GATEWAY_METRICS_HISTORY_FILE" not in envs


def effective_env(call: dict) -> dict[str, str]:
    """The container's variables as docker and podman build them from ``call``'s arguments:
    the env files first, in order, then each --env over them; a bare --env NAME comes from the
    engine's environment."""
    argv, engine_env = call["argv"], call["env"]
    env: dict[str, str] = {}
    for i, arg in enumerate(argv[:-1]):
        if arg == "--env-file":
            env.update(read_env_file(argv[i + 1], engine_env))
    for i, arg in enumerate(argv[:-1]):
        if arg == "--env":
            name, has_value, value = argv[i + 1].partition("=")
            if has_value:
                env[name] = value
            elif name in engine_env:
                env[name] = engine_env[name]
    return env


def test_start_with_an_env_file_this_shell_wins(
    fake_engine: tuple[dict[str, str], Path], config: Path, tmp_path: Path
) -> None:
    env, log = fake_engine
    env_file = tmp_path / "gateway.env"
    env_file.write_text("\n".join([
        "# the gateway of this VM",
        f"API_GATEWAY_KEY={GATEWAY_KEY}",     # only here: the engine reads it from the file
        "AOAI_KEY_0=stale-key-in-the-file",   # this shell's wins
        "CHAT_APP_KEY",                       # taken from this shell
        "API_GATEWAY_ENV=staging",            # wins over the script's default
        "  API_GATEWAY_METRICS_CHISTORY=24",
        "API_GATEWAY_THREADS=32",             # this shell's 64 wins
        "API_GATEWAY_LOG_LEVEL=debug",        # this shell's is empty: the file's holds
        "API_GATEWAY_SHUTDOWN_GRACE=40",
        "API_GATEWAY_PORT=1234",              # the script's own settings win over the file
        "API_GATEWAY_CONFIG_FILE=/elsewhere.json",
        "",
    ]))
    env.update(AOAI_KEY_0=BACKEND_KEY, CHAT_APP_KEY=CLIENT_KEY, API_GATEWAY_THREADS="64",
               API_GATEWAY_LOG_LEVEL="")
    done = run([START, "--engine", "podman", "--config", config, "--name", "gw",
                "--env-file", env_file], env)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "http://127.0.0.1:8000/api/v1/staging/apirouter/healthz" in output
    (call,) = calls(log)
    argv = call["argv"]
    joined = " ".join(argv)
    for secret in (GATEWAY_KEY, BACKEND_KEY, CLIENT_KEY):
        assert secret not in output and secret not in joined
    assert argv[argv.index("--env-file") + 1] == str(env_file)
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert "API_GATEWAY_KEY" not in envs  # a bare --env of an unset name would unset it
    assert not [e for e in envs if e.startswith(("API_GATEWAY_ENV", "API_GATEWAY_METRICS_CH",
                                                 "API_GATEWAY_LOG_LEVEL"))]
    assert argv[argv.index("--stop-timeout") + 1] == "50"  # the file's 40 s grace + 10
    container = effective_env(call)
    assert {name: container[name] for name in (
        "API_GATEWAY_KEY", "AOAI_KEY_0", "CHAT_APP_KEY", "API_GATEWAY_NAME", "API_GATEWAY_ENV",
        "API_GATEWAY_METRICS_CINTERVAL", "API_GATEWAY_METRICS_CHISTORY", "API_GATEWAY_THREADS",
        "API_GATEWAY_LOG_LEVEL", "API_GATEWAY_PORT", "API_GATEWAY_CONFIG_FILE")} == {
        "API_GATEWAY_KEY": GATEWAY_KEY,
        "AOAI_KEY_0": BACKEND_KEY,
        "CHAT_APP_KEY": CLIENT_KEY,
        "API_GATEWAY_NAME": "gw",
        "API_GATEWAY_ENV": "staging",
        "API_GATEWAY_METRICS_CINTERVAL": "60",
        "API_GATEWAY_METRICS_CHISTORY": "24",
        "API_GATEWAY_THREADS": "64",
        "API_GATEWAY_LOG_LEVEL": "debug",
        "API_GATEWAY_PORT": "8000",
        "API_GATEWAY_CONFIG_FILE": "/etc/apirouter/api-router-config.json",
    }


@pytest.mark.parametrize("content, message", [
    (None, "cannot read env file"),
    (f"API_GATEWAY_KEY={GATEWAY_KEY}\n{BACKEND_KEY} pasted alone\n",
     "line 2: a variable name must not contain spaces or tabs"),
    (f"={BACKEND_KEY}\n", "line 1: no variable name before '='"),
    (b"API_GATEWAY_KEY=caf\xe9\n", "is not UTF-8"),
    (f"API_GATEWAY_KEY={GATEWAY_KEY}\nAOAI_KEY_0=\n",
     "AOAI_KEY_0 is not set in this environment or the env file"),
], ids=["missing", "space-in-name", "no-name", "not-utf8", "key-missing"])
def test_start_refuses_a_bad_env_file_without_showing_values(
    fake_engine: tuple[dict[str, str], Path], config: Path, tmp_path: Path,
    content: str | bytes | None, message: str,
) -> None:
    env, log = fake_engine
    env["CHAT_APP_KEY"] = CLIENT_KEY
    env_file = tmp_path / "gateway.env"
    if isinstance(content, bytes):
        env_file.write_bytes(content)
    elif content is not None:
        env_file.write_text(content)
    done = run([START, "--engine", "podman", "--config", config, "--env-file", env_file], env)
    assert done.returncode == 1
    assert message in done.stderr
    for secret in (GATEWAY_KEY, BACKEND_KEY, CLIENT_KEY):
        assert secret not in done.stdout + done.stderr
    assert calls(log) == []
