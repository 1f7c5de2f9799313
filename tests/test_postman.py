"""The Postman collection: it covers every operation of the OpenAPI document, its variables are
in the environment file, and newman runs it green: against live gateways (waitress) in front
of the simulator, and, with the README's own command, against the demo.

newman is looked for where scripts/install-node-tools.sh installs it; the tests never run the
installer. Without newman the live tests are skipped with the command that installs it, unless
API_GATEWAY_REQUIRE_TOOLS=1 (as in CI): then they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts import demo
from simulator import SimulatorServer
from tests.conftest import GATEWAY_KEY, RunningGateway
from tests.test_demo import Output, free_port
from tests.test_openapi import (
    CLIENT_KEY,
    HTTP_METHODS,
    POOL,
    load_document,
    sim_endpoint,
    start_pooled,
)
from tests.test_openapi import simulator as simulator  # the fixture, shared
from tests.tools import NEWMAN, NODE_DIR, missing_tool, newman_stamp, stop_process

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = ROOT / "postman" / "apirouter.postman_collection.json"
ENVIRONMENT = ROOT / "postman" / "apirouter.postman_environment.json"
README = ROOT / "README.md"
INSTALL_NEWMAN = "bash scripts/install-node-tools.sh"
NEWMAN_TIMEOUT_S = 90
DEMO_START_S = 30
# the /lb requests that need gateways the demo does not run (completions, embeddings endpoints)
SKIPPED_AGAINST_THE_DEMO = {"Completion", "Embeddings"}
V21_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
# the collection's base URL variables, all standing for a gateway's root
BASE_VARIABLES = ("{{baseUrl}}", "{{completionsBaseUrl}}", "{{embeddingsBaseUrl}}")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def requests_of(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every request item of a collection, folders flattened."""
    for item in items:
        if "item" in item:
            yield from requests_of(item["item"])
        else:
            yield item


def request_path(raw: str) -> str:
    """A request's URL as a path with ``{{variables}}`` in it, query and base URL removed."""
    raw = raw.split("?")[0]
    for base in BASE_VARIABLES:
        raw = raw.removeprefix(base)
    return raw


def template_regex(template: str) -> re.Pattern[str]:
    """An OpenAPI path as a regex; ``{operation}`` and ``{key}`` may hold slashes, like Flask's
    ``path`` converter."""
    parts = re.split(r"({[^}]+})", template)
    out = ""
    for part in parts:
        if part in ("{operation}", "{key}"):
            out += r".+"
        elif part.startswith("{"):
            out += r"[^/]+"
        else:
            out += re.escape(part)
    return re.compile(f"^{out}$")


# --- the files ------------------------------------------------------------------------------

def test_collection_is_v2_1_and_every_request_has_tests() -> None:
    collection = load(COLLECTION)
    assert collection["info"]["schema"] == V21_SCHEMA
    items = list(requests_of(collection["item"]))
    assert items
    for item in items:
        scripts = [e for e in item.get("event", []) if e["listen"] == "test"]
        assert scripts and any("pm.test(" in line for line in scripts[0]["script"]["exec"]), \
            f"{item['name']}: no test"
        assert item["request"]["url"]["raw"].startswith(BASE_VARIABLES), item["name"]


def test_collection_covers_every_documented_operation() -> None:
    """Each (method, path) of gateway_app/web/openapi.yaml has a request in the collection."""
    sent = {(item["request"]["method"], request_path(item["request"]["url"]["raw"]))
            for item in requests_of(load(COLLECTION)["item"])}
    missing = []
    for path, operations in load_document()["paths"].items():
        pattern = template_regex(path)
        for method in HTTP_METHODS:
            if method in operations and not any(
                    m == method.upper() and pattern.match(p) for m, p in sent):
                missing.append(f"{method.upper()} {path}")
    assert not missing, f"documented but not in {COLLECTION.name}: {missing}"


def test_every_variable_of_the_collection_is_in_the_environment() -> None:
    used = set(re.findall(r"{{([^{}]+)}}", COLLECTION.read_text(encoding="utf-8")))
    environment = load(ENVIRONMENT)
    defined = {v["key"] for v in environment["values"]}
    assert used <= defined, f"variables without a value in {ENVIRONMENT.name}: {used - defined}"
    assert environment["_postman_variable_scope"] == "environment"
    secrets = {v["key"]: v["value"] for v in environment["values"] if v["type"] == "secret"}
    assert secrets == {"gatewayKey": "", "clientKey": ""}, "no secret is shipped"


def test_template_regex_matches_like_flask() -> None:
    assert template_regex("/v1/{operation}").match("/v1/chat/completions")
    assert template_regex("/api/v1/{env}/apirouter/dashboard/{name}").match(
        "/api/v1/{{env}}/apirouter/dashboard/dashboard.js")
    assert not template_regex("/api/v1/{env}/apirouter/dashboard/{name}").match(
        "/api/v1/{{env}}/apirouter/dashboard/a/b")
    assert not template_regex("/v1/models").match("/v1/chat/completions")


# --- newman ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def newman() -> str:
    """The pinned newman, where scripts/install-node-tools.sh installs it."""
    if shutil.which("node") is None:
        missing_tool("node is not on PATH", f"Node.js >= 16 and npm, then {INSTALL_NEWMAN}")
    if not os.access(NEWMAN, os.X_OK):
        missing_tool(f"newman is not installed at {NEWMAN}", INSTALL_NEWMAN)
    stamp = NODE_DIR / ".stamp"
    if not stamp.is_file() or stamp.read_text().strip() != newman_stamp():
        missing_tool(f"the newman in {NODE_DIR} was not installed from the current "
                     "postman/newman/package-lock.json", INSTALL_NEWMAN)
    return str(NEWMAN)


def start_with_config(start_gateway: Callable[..., Any], path: Path, document: dict[str, Any],
                      env: dict[str, str]) -> RunningGateway:
    path.write_text(json.dumps(document))
    return start_gateway([], env={**env, "API_GATEWAY_CONFIG_FILE": str(path)})


def test_newman_runs_the_collection_green(newman: str, simulator: SimulatorServer,
                                          start_gateway: Callable[..., Any],
                                          tmp_path: Path) -> None:
    """Every request of the collection against gateways with client keys: the main one (chat
    endpoints for /lb, and a pool), and one each for /lb completions and embeddings."""
    keys = {"API_GATEWAY_CLIENT_KEYS": CLIENT_KEY}
    main = start_pooled(start_gateway, tmp_path, simulator, env=keys)
    completions = start_with_config(start_gateway, tmp_path / "completions.json",
                                    {"endpoints": [sim_endpoint(simulator, "completions")]}, keys)
    embeddings = start_with_config(start_gateway, tmp_path / "embeddings.json",
                                   {"endpoints": [sim_endpoint(simulator, "embeddings")]}, keys)
    report = tmp_path / "newman.json"
    overrides = {"baseUrl": main.base, "completionsBaseUrl": completions.base,
                 "embeddingsBaseUrl": embeddings.base, "env": main.gateway.settings.env,
                 "gatewayKey": GATEWAY_KEY, "clientKey": CLIENT_KEY, "deployment": POOL}
    command = [newman, "run", str(COLLECTION), "--environment", str(ENVIRONMENT),
               "--reporters", "cli,json", "--reporter-json-export", str(report),
               "--timeout-request", "20000", "--color", "off", "--disable-unicode"]
    for name, value in overrides.items():
        command += ["--env-var", f"{name}={value}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=NEWMAN_TIMEOUT_S,
                          check=False)
    output = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"newman failed:\n{output}"
    run = json.loads(report.read_text())["run"]
    expected = len(list(requests_of(load(COLLECTION)["item"])))
    assert run["stats"]["requests"]["total"] == expected, output
    assert run["stats"]["requests"]["failed"] == 0, output
    assert run["stats"]["assertions"]["failed"] == 0, output
    assert run["stats"]["assertions"]["total"] >= 2 * expected, output
    assert not run["failures"], output


# --- the README's command, against the demo -------------------------------------------------

README_INSTALL_LINE = "NEWMAN=$(bash scripts/install-node-tools.sh --print-path)"
DEMO_PORT: int = demo.build_parser().get_default("port")


def readme_newman_command() -> str:
    """The newman command of README.md's "Routes" section: its sh block that sets NEWMAN, less
    that first line (the installer, which tests never run; the ``newman`` fixture stands in)."""
    text = README.read_text(encoding="utf-8")
    routes = text.split("\n## Routes\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"^```sh\n(.*?)^```$", routes, re.MULTILINE | re.DOTALL)
              if b.startswith("NEWMAN=")]
    assert len(blocks) == 1, "README.md's Routes section has no single sh block running newman"
    first, command = blocks[0].split("\n", 1)
    assert first == README_INSTALL_LINE
    assert command.startswith("$NEWMAN run "), command
    return command.strip()


def test_newman_is_looked_for_where_the_installer_puts_it() -> None:
    script = (ROOT / "scripts" / "install-node-tools.sh").read_text(encoding="utf-8")
    assert 'CI_DIR="${APIROUTER_CI_DIR:-/var/cache/apirouter-ci}"' in script
    assert 'NODE_DIR="${APIROUTER_NODE_DIR:-$CI_DIR/node}"' in script
    assert 'NEWMAN="$NODE_DIR/node_modules/.bin/newman"' in script
    assert "((print_path)) && printf '%s\\n' \"$NEWMAN\"" in script
    assert NEWMAN.parts[-3:] == ("node_modules", ".bin", "newman")


@pytest.fixture
def demo_port() -> Iterator[int]:
    """``python scripts/demo.py --no-burst`` on free ports; its gateway's port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--no-burst", "--port", str(port),
         "--sim-port", str(free_port())],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    output = Output(proc)
    try:
        up = demo.wait_until_up(f"http://127.0.0.1:{port}/api/v1/dev/apirouter/healthz",
                                alive=lambda: proc.poll() is None, timeout=DEMO_START_S)
        assert up, f"the demo did not come up:\n{output.text[-3000:]}"
        yield port
    finally:
        stop_process(proc)
        output.join()


def test_readme_newman_command_passes_against_the_demo(newman: str, demo_port: int,
                                                       tmp_path: Path) -> None:
    """README.md's newman command, as written there, against the demo it describes.

    One change: the README's port (the demo's default, 8000) becomes the free port this demo
    listens on, so that a demo or gateway someone runs on 8000 neither breaks the test nor gets
    its traffic. Options for a JSON report and plain output are appended; they change what
    newman prints, not what it sends or checks."""
    command = readme_newman_command()
    written = f"baseUrl=http://127.0.0.1:{DEMO_PORT}"
    assert command.count(written) == 1, f"the README's command does not target the demo:\n{command}"
    command = command.replace(written, f"baseUrl=http://127.0.0.1:{demo_port}")
    report = tmp_path / "newman.json"
    command += (f" --reporters cli,json --reporter-json-export {shlex.quote(str(report))}"
                " --color off")

    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env={**os.environ, "NEWMAN": newman},
                          capture_output=True, text=True, timeout=NEWMAN_TIMEOUT_S, check=False)
    output = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"newman failed:\n{output}"
    run = json.loads(report.read_text())["run"]
    assert not run["failures"], output
    assert run["stats"]["assertions"]["failed"] == 0, output
    # every request ran but the two the demo cannot serve, which skip themselves
    every = {item["name"] for item in requests_of(load(COLLECTION)["item"])}
    executed = {e["item"]["name"] for e in run["executions"]}
    assert every - executed == SKIPPED_AGAINST_THE_DEMO, output
    assert run["stats"]["assertions"]["total"] >= 2 * len(executed), output
