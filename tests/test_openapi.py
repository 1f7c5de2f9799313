"""The OpenAPI document: valid 3.1, in step with the routes the app serves, served by the
gateway under its prefix, and true to the gateway's real answers (status, content type,
required headers, JSON bodies), errors included."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import gateway_app
from simulator import SimulatorServer
from tests.conftest import GATEWAY_KEY, RunningGateway
from tests.fakes import FakeBackend, refused_uri, throttle

DOCUMENT_PATH = Path(gateway_app.__file__).parent / "web" / "openapi.yaml"
PREFIX = "/api/v1/{env}/apirouter"
# HEAD and OPTIONS come with every rule.
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SIM_KEY = "sim-key-openapi"
CLIENT_KEY = "client-key-openapi-1"
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 5}
POOL = "gpt-4o"  # the pool's name in the document's examples


def load_document() -> dict[str, Any]:
    """The document as shipped in the package."""
    return yaml.safe_load(DOCUMENT_PATH.read_text(encoding="utf-8"))


def rule_path(rule: str, prefix: str) -> str:
    """A Flask rule as an OpenAPI path: the prefix back to its template, ``<x:y>`` to ``{y}``."""
    if rule == prefix or rule.startswith(prefix + "/"):
        rule = PREFIX + rule[len(prefix):]
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def app_operations(app: Flask, prefix: str) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the app serves."""
    return {(method, rule_path(rule.rule, prefix))
            for rule in app.url_map.iter_rules()
            for method in (rule.methods or set()) - IGNORED_METHODS}


def document_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method in HTTP_METHODS if method in item}


def template_of(route: str) -> str:
    """The document's path for a route as a test calls it (``lb``, ``/v1/models`` ...)."""
    path = route.split("?")[0]
    if not path.startswith("/"):
        path = f"{PREFIX}/{path}"
    for pattern, template in ((r"/reconfig/.+$", "/reconfig/{key}"),
                              (r"/dashboard/.+$", "/dashboard/{name}"),
                              (r"^/openai/deployments/[^/]+/.+$",
                               "/openai/deployments/{name}/{operation}"),
                              (r"^/v1/(?!models$).+$", "/v1/{operation}")):
        path = re.sub(pattern, template, path)
    return path


def media_type(response: requests.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


class Document:
    """The OpenAPI document, able to say whether a real answer is the documented one."""

    URI = "urn:apirouter:openapi"

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """Follow local ``$ref``s to the object they name."""
        while "$ref" in node:
            target: Any = self.data
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        """A validator of ``schema`` whose ``#/components/...`` refs resolve in the document."""
        contents = {**self.data, "x-checked": schema}
        registry = Registry().with_resource(
            self.URI, Resource(contents=contents, specification=DRAFT202012))
        return Draft202012Validator({"$ref": f"{self.URI}#/x-checked"}, registry=registry)

    def operation(self, method: str, path: str) -> dict[str, Any]:
        return self.data["paths"][path][method.lower()]

    def response(self, method: str, path: str, status: int) -> dict[str, Any]:
        """The documented response for ``status``: exact, else its range (``4XX``), else default."""
        responses = self.operation(method, path)["responses"]
        for key in (str(status), f"{status // 100}XX", "default"):
            if key in responses:
                return self.resolve(responses[key])
        raise AssertionError(f"{method} {path}: status {status} is not documented "
                             f"(documented: {sorted(responses)})")

    def check(self, method: str, path: str, response: requests.Response) -> None:
        """Assert that ``response`` is one the document describes for this operation."""
        where = f"{method} {path} -> {response.status_code}"
        spec = self.response(method, path, response.status_code)
        content = spec.get("content", {})
        media = media_type(response)
        assert media in content, f"{where}: content type {media!r} not in {sorted(content)}"
        schema = content[media].get("schema")
        if schema is not None and media == "application/json":
            errors = sorted(self.validator(schema).iter_errors(response.json()), key=str)
            assert not errors, f"{where}: {errors[0].message} at {list(errors[0].path)}"
        for name, header in spec.get("headers", {}).items():
            header = self.resolve(header)
            value = response.headers.get(name)
            if value is None:
                assert not header.get("required"), f"{where}: required header {name} missing"
                continue
            errors = list(self.validator(header.get("schema", {})).iter_errors(value))
            assert not errors, f"{where}: header {name}={value!r}: {errors[0].message}"


def is_error_shape(body: Any) -> bool:
    """``{"error": {"code": str, "message": str}}``, more fields allowed."""
    return (isinstance(body, dict) and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("code"), str)
            and isinstance(body["error"].get("message"), str))


@pytest.fixture(scope="module")
def document() -> Document:
    return Document(load_document())


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """One fast simulated deployment with a quota that a test cannot spend."""
    config = {"deployments": [{"name": "gpt", "apikey": SIM_KEY, "tpm": 100_000_000,
                               "rpm": 1_000_000, "ttft_ms": 0, "ms_per_token": 0, "seed": 1}]}
    with SimulatorServer(config, host="127.0.0.1", port=0) as server:
        yield server


def sim_endpoint(server: SimulatorServer, operation: str = "chat/completions",
                 apikey: str = SIM_KEY) -> dict[str, str]:
    uri = f"{server.url}/openai/deployments/gpt/{operation}?api-version=2024-10-21"
    return {"uri": uri, "apikey": apikey}


def start_pooled(start_gateway: Callable[..., Any], folder: Path, server: SimulatorServer,
                 env: dict[str, str] | None = None) -> RunningGateway:
    """A gateway whose configuration has the simulator both as an /lb endpoint and as the pool
    ``POOL`` of the Azure-style and /v1 routes."""
    config = folder / "pooled-config.json"
    config.write_text(json.dumps({
        "endpoints": [sim_endpoint(server)],
        "deployments": {POOL: {"backends": [{"endpoint": server.url, "deployment": "gpt",
                                             "apikey": SIM_KEY}]}}}))
    return start_gateway([], env={**(env or {}), "API_GATEWAY_CONFIG_FILE": str(config)})


# --- the document itself ------------------------------------------------------------------

def test_document_is_valid_openapi_3_1() -> None:
    doc = load_document()
    assert doc["openapi"].startswith("3.1.")
    validate_openapi(doc)


def test_document_version_is_the_gateways() -> None:
    from gateway_app.gateway import VERSION

    assert load_document()["info"]["version"] == VERSION


def test_every_error_response_is_json_in_the_error_shape(document: Document) -> None:
    """Each documented 4xx/5xx answers application/json with the Error schema (or, for a
    probe, its own JSON body)."""
    error_ref = "#/components/schemas/Error"
    for path, item in document.data["paths"].items():
        for method in HTTP_METHODS:
            if method not in item:
                continue
            for status, response in item[method]["responses"].items():
                if status[0] not in "45":
                    continue
                content = document.resolve(response).get("content", {})
                where = f"{method.upper()} {path} {status}"
                assert list(content) == ["application/json"], where
                ref = content["application/json"]["schema"].get("$ref")
                if path.endswith("/readyz"):
                    continue  # 503 carries the readiness body, not an error
                assert ref == error_ref, f"{where}: schema {ref}, not {error_ref}"


def test_operation_ids_are_unique_and_path_parameters_declared(document: Document) -> None:
    ids = [item[m]["operationId"] for item in document.data["paths"].values()
           for m in HTTP_METHODS if m in item]
    assert len(ids) == len(set(ids))
    for path, item in document.data["paths"].items():
        declared = {document.resolve(p)["name"] for p in item.get("parameters", [])
                    if document.resolve(p)["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), path


# --- the document and the app -------------------------------------------------------------

def test_document_lists_exactly_the_routes_the_app_serves(fake: Callable[..., FakeBackend],
                                                          start_gateway: Callable[..., Any]
                                                          ) -> None:
    """A route added to the app (any blueprint or none) must be documented, and the other way
    round; methods count."""
    gw: RunningGateway = start_gateway([fake()])
    served = app_operations(gw.app, gw.gateway.settings.route_prefix)
    documented = document_operations(load_document())
    missing = sorted(served - documented)
    stale = sorted(documented - served)
    assert not missing, (f"routes served but not in gateway_app/web/openapi.yaml: {missing}; "
                         "describe them there (and add them to postman/)")
    assert not stale, ("operations in gateway_app/web/openapi.yaml that the app does not "
                       f"serve: {stale}")


def test_documented_security_is_the_gateways(fake: Callable[..., FakeBackend],
                                            start_gateway: Callable[..., Any],
                                            document: Document) -> None:
    """Routes open without a client key (marked with web.auth.open_route) say ``security: []`` and
    document no 401 of their own; every other route documents its 401."""
    from gateway_app.web.auth import is_open

    gw: RunningGateway = start_gateway([fake()])
    prefix = gw.gateway.settings.route_prefix
    for rule in gw.app.url_map.iter_rules():
        path = rule_path(rule.rule, prefix)
        for method in (rule.methods or set()) - IGNORED_METHODS:
            operation = document.operation(method, path)
            where = f"{method} {path} ({rule.endpoint})"
            if is_open(gw.app.view_functions[rule.endpoint]):
                assert operation.get("security") == [], f"{where} is open: security: []"
                assert "401" not in operation["responses"], f"{where} never answers 401"
            else:
                assert operation.get("security") is None, f"{where} needs a key when set"
                assert "401" in operation["responses"], f"{where}: document its 401"


def test_rule_paths_map_to_document_paths() -> None:
    prefix = "/api/v1/prod/apirouter"
    assert rule_path(f"{prefix}/reconfig/<path:key>", prefix) == f"{PREFIX}/reconfig/{{key}}"
    assert rule_path(f"{prefix}/dashboard/<name>", prefix) == f"{PREFIX}/dashboard/{{name}}"
    assert rule_path("/openai/deployments/<dep>/chat/completions", prefix) == \
        "/openai/deployments/{dep}/chat/completions"
    assert rule_path("/api/v1/prodx/apirouter/lb", prefix) == "/api/v1/prodx/apirouter/lb"


def test_the_gateway_serves_the_document_under_its_prefix(fake: Callable[..., FakeBackend],
                                                          start_gateway: Callable[..., Any]
                                                          ) -> None:
    gw: RunningGateway = start_gateway([fake()])
    as_yaml = gw.get("openapi.yaml")
    assert as_yaml.status_code == 200
    assert media_type(as_yaml) == "application/yaml"
    assert as_yaml.content == DOCUMENT_PATH.read_bytes()
    as_json = gw.get("openapi.json")
    assert as_json.status_code == 200
    assert media_type(as_json) == "application/json"
    assert as_json.json() == load_document()
    assert gw.http.head(f"{gw.url}/openapi.json", timeout=10).status_code == 200
    wrong_env = gw.http.get(f"{gw.base}/api/v1/other/apirouter/openapi.json", timeout=10)
    assert wrong_env.status_code == 404 and is_error_shape(wrong_env.json())


# --- the document and real answers --------------------------------------------------------

def test_real_answers_are_the_documented_ones(document: Document, simulator: SimulatorServer,
                                              start_gateway: Callable[..., Any],
                                              tmp_path: Path) -> None:
    """Every operation, its success and its errors, against a gateway with client keys in
    front of the simulator."""
    gw = start_pooled(start_gateway, tmp_path, simulator, env={
        "API_GATEWAY_CLIENT_KEYS": CLIENT_KEY, "API_GATEWAY_RECONFIG_MAX_FAILURES": "2",
        "API_GATEWAY_MAX_BODY_BYTES": "4096"})
    keyed = requests.Session()
    keyed.headers["api-key"] = CLIENT_KEY
    anonymous = requests.Session()

    def call(method: str, route: str, session: requests.Session = keyed,
             **kwargs: Any) -> requests.Response:
        """Call ``route`` (under the prefix, or from the root when it starts with /)."""
        url = f"{gw.base}{route}" if route.startswith("/") else f"{gw.url}/{route}"
        response = session.request(method, url, timeout=30, **kwargs)
        document.check(method, template_of(route), response)
        if response.status_code >= 400:
            assert is_error_shape(response.json()), (route, response.text)
        return response

    chat = call("POST", "lb", json=CHAT)
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    streamed = call("POST", "lb", json={**CHAT, "stream": True})
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    assert call("POST", "lb", data=b"").status_code == 400
    assert call("POST", "lb", data=b"{not json").status_code == 400
    assert call("POST", "lb", json=[CHAT]).status_code == 400
    assert call("POST", "lb", json={"prompt": "no messages"}).status_code == 400  # relayed
    assert call("POST", "lb", data=b" " * 5000).status_code == 413
    assert call("POST", "lb", json=CHAT, session=anonymous).status_code == 401
    for route in ("instanceinfo", "metrics", "prometheus", "capacity", "healthz", "readyz",
                  "openapi.yaml", "openapi.json", "/v1/models"):
        assert call("GET", route).status_code == 200, route
    for route in ("instanceinfo", "metrics", "prometheus", "capacity", "openapi.json",
                  "/v1/models"):
        assert call("GET", route, session=anonymous).status_code == 401, route
    for route in ("healthz", "readyz", "dashboard", "dashboard/dashboard.js"):
        assert call("GET", route, session=anonymous).status_code == 200, route
    assert call("GET", "dashboard").status_code == 200
    for asset in ("dashboard.js", "dashboard.css"):
        assert call("GET", f"dashboard/{asset}").status_code == 200, asset
    assert call("GET", "dashboard/no-such-file.js").status_code == 404
    assert call("GET", "dashboard/..%2Fopenapi.yaml").status_code == 404

    azure = f"/openai/deployments/{POOL}/chat/completions?api-version=2024-10-21"
    r = call("POST", azure, json=CHAT)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    r = call("POST", azure, json={**CHAT, "stream": True})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    r = call("POST", f"/openai/deployments/{POOL}/embeddings?api-version=2024-10-21",
             json={"input": "hello", "dimensions": 4})
    assert r.status_code == 200 and r.json()["object"] == "list"
    assert call("POST", "/openai/deployments/no-such-pool/chat/completions"
                        "?api-version=2024-10-21", json=CHAT).status_code == 404
    assert call("POST", azure, json=CHAT, session=anonymous).status_code == 401
    r = call("POST", "/v1/chat/completions", json={**CHAT, "model": POOL})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    r = call("POST", "/v1/embeddings", json={"model": POOL, "input": ["a", "b"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    assert call("POST", "/v1/chat/completions", json=CHAT).status_code == 400  # no model
    assert call("POST", "/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
    assert call("POST", "/v1/images/generations", json={"model": POOL}).status_code == 404
    models = call("GET", "/v1/models").json()
    assert [m["id"] for m in models["data"]] == [POOL]

    assert call("GET", f"reconfig/{GATEWAY_KEY}").status_code == 200
    assert call("POST", "reconfig", headers={"x-api-gateway-key": GATEWAY_KEY}).status_code == 200
    gw.config_file.write_text(json.dumps({"endpoints": [{"uri": "not a url", "apikey": "k"}]}))
    assert call("GET", f"reconfig/{GATEWAY_KEY}").status_code == 400
    assert call("POST", "reconfig").status_code == 401
    assert call("GET", "reconfig/wrong-key").status_code == 401
    assert call("GET", "reconfig/wrong-key").status_code == 429


def test_busy_and_unavailable_answers_are_the_documented_ones(
        document: Document, fake: Callable[..., FakeBackend],
        start_gateway: Callable[..., Any]) -> None:
    lb = f"{PREFIX}/lb"
    busy = start_gateway([fake(throttle("30"))])
    r = busy.lb(CHAT)
    assert r.status_code == 429
    document.check("POST", lb, r)
    assert r.json()["error"]["code"] == "AllEndpointsBusy"
    down = start_gateway([refused_uri()])
    r = down.lb(CHAT)
    assert r.status_code == 503
    document.check("POST", lb, r)
    assert r.json()["error"]["code"] == "NoEndpointAvailable"
    r = down.get("readyz")
    assert r.status_code == 503
    document.check("GET", f"{PREFIX}/readyz", r)


def test_relayed_deployment_errors_are_the_documented_ones(
        document: Document, simulator: SimulatorServer,
        start_gateway: Callable[..., Any]) -> None:
    gw: RunningGateway = start_gateway([sim_endpoint(simulator, apikey="wrong-sim-key")])
    r = gw.lb(CHAT)
    assert r.status_code == 401  # the deployment's, relayed
    document.check("POST", f"{PREFIX}/lb", r)
    gw = start_gateway([{"uri": f"{simulator.url}/openai/deployments/nope/chat/completions"
                                "?api-version=2024-10-21", "apikey": SIM_KEY}])
    r = gw.lb(CHAT)
    assert r.status_code == 404 and r.json()["error"]["code"] == "DeploymentNotFound"
    document.check("POST", f"{PREFIX}/lb", r)


def test_completions_and_embeddings_answers_are_documented(
        document: Document, simulator: SimulatorServer,
        start_gateway: Callable[..., Any]) -> None:
    lb = f"{PREFIX}/lb"
    completions = start_gateway([sim_endpoint(simulator, "completions")])
    r = completions.lb({"prompt": "Once upon a time", "max_tokens": 5})
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
    document.check("POST", lb, r)
    embeddings = start_gateway([sim_endpoint(simulator, "embeddings")])
    for body in ({"input": ["a", "b"], "dimensions": 8},
                 {"input": "a", "dimensions": 8, "encoding_format": "base64"}):
        r = embeddings.lb(body)
        assert r.status_code == 200 and r.json()["object"] == "list"
        document.check("POST", lb, r)
