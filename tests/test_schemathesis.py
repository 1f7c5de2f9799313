"""Property-based robustness of the live gateway: schemathesis generates requests from the
OpenAPI document (its examples, boundary and wrong-type coverage cases, unexpected methods,
then random valid and invalid requests) and sends them to a gateway served by waitress in
front of the simulator, whose quota no test can spend, so the deployment always answers.

For every answer: no 5xx (the simulator is up, so a 5xx is the gateway's own), the status,
content type, headers and body are the documented ones, and every error is JSON in the shape
``{"error": {"code": str, "message": str}}``. Afterwards the gateway still serves.

Bounded: a fixed seed, 40 examples per operation, a request timeout; about 10 s here.
Checks left out, and why: ``negative_data_rejection`` and ``positive_data_acceptance`` judge
how OpenAI bodies are validated, which is the deployment's job (the gateway relays them);
``ignored_auth`` cannot apply to client keys, which are optional by design.

schemathesis runs in-process through its engine (what ``st run`` uses): its pytest plugin
does not work with pytest 9 (it sets ``Function._nodeid``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.engine import Status, events
from schemathesis.engine import from_schema as engine_for

from simulator import SimulatorServer
from tests.conftest import RunningGateway
from tests.fakes import FakeBackend
from tests.test_openapi import CHAT, CLIENT_KEY, is_error_shape, load_document, start_pooled
from tests.test_openapi import simulator as simulator  # the fixture, shared

# A fixed seed keeps CI repeatable; set APIROUTER_FUZZ_SEED (and APIROUTER_FUZZ_EXAMPLES) to
# explore further by hand.
SEED = int(os.environ.get("APIROUTER_FUZZ_SEED", "20240611"))
# per operation in the fuzzing phase; the coverage phase adds its own cases
MAX_EXAMPLES = int(os.environ.get("APIROUTER_FUZZ_EXAMPLES", "40"))
REQUEST_TIMEOUT_S = 10
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "unsupported_method",
          "json_error_shape")


@schemathesis.check
def json_error_shape(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                     case: schemathesis.Case) -> bool | None:
    """Every error answer is JSON in the documented shape."""
    if response.status_code < 400:
        return None
    media = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    assert media == "application/json", (
        f"error {response.status_code} answered as {media!r}, not JSON: {response.text[:200]!r}")
    assert is_error_shape(response.json()), (
        f"error {response.status_code} is not {{'error': {{'code', 'message'}}}}: "
        f"{response.text[:200]!r}")
    return True


def fuzz_config(gw: RunningGateway) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "base-url": gw.base,
        "seed": SEED,
        "headers": {"api-key": CLIENT_KEY},
        "parameters": {"path.env": gw.gateway.settings.env},
        "request-timeout": REQUEST_TIMEOUT_S,
        "suppress-health-check": ["all"],
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })


def run_schemathesis(gw: RunningGateway) -> tuple[list[str], dict[str, int]]:
    """Run every phase; the failures found (each with a curl line), and cases per operation."""
    schema = schemathesis.openapi.from_dict(load_document(), config=fuzz_config(gw))
    failures: list[str] = []
    cases: dict[str, int] = {}
    for event in engine_for(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            label = event.recorder.label
            cases[label] = cases.get(label, 0) + len(event.recorder.interactions)
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        failures.append(f"{label} [{node.name}] {failure.title}: "
                                        f"{failure.message}\n    {node.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: error: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            assert event.stop_reason.value in ("completed", "max_time"), event.stop_reason
    return sorted(set(failures)), cases


@pytest.fixture
def fuzzed_gateway(start_gateway: Callable[..., Any], simulator: SimulatorServer,
                   tmp_path: Path) -> RunningGateway:
    """A gateway that needs a client key, in front of the simulator (as /lb's endpoint and as
    the pool of the documented examples); its configuration file is valid, so /reconfig's
    success path (if a key were ever guessed) reloads the same thing."""
    return start_pooled(start_gateway, tmp_path, simulator,
                        env={"API_GATEWAY_CLIENT_KEYS": CLIENT_KEY})


def test_generated_requests_get_documented_answers(fuzzed_gateway: RunningGateway) -> None:
    failures, cases = run_schemathesis(fuzzed_gateway)
    documented = {f"{method.upper()} {path}" for path, item in load_document()["paths"].items()
                  for method in item if method != "parameters"}
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures)
    assert documented <= set(cases), f"operations never tried: {documented - set(cases)}"
    # still serving: the probes, and a real call through to the deployment
    key = {"api-key": CLIENT_KEY}
    assert requests.get(f"{fuzzed_gateway.url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{fuzzed_gateway.url}/readyz", timeout=10).status_code == 200
    answer = requests.post(f"{fuzzed_gateway.url}/lb", json=CHAT, headers=key, timeout=10)
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"


# --- hostile inputs the generator does not make -------------------------------------------

DEEP = 100_000  # nesting levels; Python's json module recurses once per level
HOSTILE_BODIES = {
    "deeply nested array": b"[" * DEEP + b"]" * DEEP,
    "deeply nested object value": b'{"messages": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "5000-digit integer": b'{"max_tokens": ' + b"9" * 5000 + b"}",
    "invalid UTF-8": b'{"messages": "\xff\xfe"}',
    "UTF-16 with BOM": '{"messages": []}'.encode("utf-16"),
    "lone surrogate": b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
}
# A bug found while writing these tests, reported: json.loads raises RecursionError (not a
# ValueError) on deep nesting, the handler lets it through and the client gets a 500.
@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_bodies_get_a_json_answer_not_a_5xx(name: str, fake: Callable[..., FakeBackend],
                                                     start_gateway: Callable[..., Any]) -> None:
    gw: RunningGateway = start_gateway([fake()])
    response = gw.lb(data=HOSTILE_BODIES[name], headers={"content-type": "application/json"})
    assert response.status_code < 500, (name, response.status_code, response.text[:200])
    if response.status_code >= 400:
        assert is_error_shape(response.json()), response.text[:200]
    assert gw.get("healthz").status_code == 200


@pytest.mark.parametrize("operation", ["..%2F..%2Fother-deployment%2Fchat%2Fcompletions",
                                       "chat%2F..%2F..%2F..%2F..%2Fadmin"])
def test_azure_path_stays_under_the_pools_deployment(operation: str, tmp_path: Path,
                                                     fake: Callable[..., FakeBackend],
                                                     start_gateway: Callable[..., Any]) -> None:
    """A client may choose the operation, not another deployment or another path of the
    backend's host: the gateway answers 4xx and sends nothing."""
    backend = fake()
    config = tmp_path / "pool.json"
    config.write_text(json.dumps({"deployments": {"pool": {"backends": [
        {"endpoint": f"http://127.0.0.1:{backend.port}", "deployment": "dep",
         "apikey": "pool-key"}]}}}))
    gw: RunningGateway = start_gateway([], env={"API_GATEWAY_CONFIG_FILE": str(config)})
    response = gw.http.post(f"{gw.base}/openai/deployments/pool/{operation}?api-version=1",
                            json=CHAT, timeout=10)
    escaped = [r.path for r in backend.received
               if not r.path.startswith("/openai/deployments/dep/")]
    assert not escaped, f"the backend was called at {escaped} with the pool's key"
    assert 400 <= response.status_code < 500 and is_error_shape(response.json())
