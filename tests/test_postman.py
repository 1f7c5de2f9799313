"""The Postman collection: it covers every operation of the OpenAPI document, its variables are
in the environment file, and newman runs it green against live gateways (waitress) in front
of the simulator.

newman is looked for where scripts/install-node-tools.sh installs it; the tests never run the
installer. Without newman the live tests are skipped with the command that installs it, unless
API_GATEWAY_REQUIRE_TOOLS=1 (as in CI): then they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator import SimulatorServer
from tests.conftest import GATEWAY_KEY, RunningGateway
from tests.test_openapi import (
    CLIENT_KEY,
    HTTP_METHODS,
    POOL,
    load_document,
    sim_endpoint,
    start_pooled,
)
from tests.test_openapi import simulator as simulator  # the fixture, shared
from tests.tools import NEWMAN, NODE_DIR, missing_tool, newman_stamp

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = ROOT / "postman" / "apirouter.postman_collection.json"
ENVIRONMENT = ROOT / "postman" / "apirouter.postman_environment.json"
INSTALL_NEWMAN = "bash scripts/install-node-tools.sh"
NEWMAN_TIMEOUT_S = 90
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
    """Each (method, path) of gateway_app/openapi.yaml has a request in the collection."""
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
