"""The original's routes (``/lb``, info, metrics, probes, reconfig): thin handlers that turn
HTTP into gateway calls and back, and the client-key check every route of the app goes through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from flask import Response, current_app, g, jsonify, request

from ..config import ConfigError
from ..errors import json_error
from ..gateway import Gateway
from ..keys import same_secret
from ..routing.cost import estimate_cost
from ..routing.headers import REQUEST_ID_KEY, forwarded_headers, request_id
from ..routing.proxy import Call, ClientAnswer
from ..routing.retry_after import whole_seconds
from ..routing.telemetry import CONTENT_TYPE
from .auth import is_open, open_route, presented_key
from .blueprint import api, bp

log = logging.getLogger("apirouter")

GATEWAY_KEY_HEADER = "x-api-gateway-key"


def gateway() -> Gateway:
    return current_app.extensions["apirouter"]


@bp.before_request
def authenticate() -> Response | None:
    """When client keys are configured, every route but those marked open needs one."""
    keys = gateway().client_keys
    if not keys.enabled or is_open(current_app.view_functions.get(request.endpoint or "")):
        return None
    name = keys.identify(presented_key(request.headers))
    if name is None:
        return json_error(401, "Unauthorized",
                          "A valid client key is required, sent as the api-key header or "
                          "as Authorization: Bearer <key>.",
                          [("WWW-Authenticate", 'Bearer realm="apirouter"')])
    g.client = name
    return None


def read_call(json_only: bool = True) -> Call | Response:
    """The client's OpenAI request, or a 400 saying what is wrong with it.

    With ``json_only`` false, a body that is not JSON (a multipart upload, say) is passed on
    as it is, with its content type, and costs 0 tokens (only its request counts). A JSON call
    is given Azure's admission estimate here, once (routing/cost.py).
    """
    body = request.get_data(cache=False)
    environ = request.environ
    rid = request_id(environ.get(REQUEST_ID_KEY))
    forwarded = forwarded_headers(environ)
    if not json_only and not request.is_json:
        return Call(body=body, payload={}, headers=forwarded, request_id=rid,
                    client=g.get("client"), content_type=request.content_type)
    if not body or body.isspace():  # isspace: no copy of a large body
        return json_error(400, "InvalidRequest",
                          "The request body is empty; send an OpenAI request as a JSON object.")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return json_error(400, "InvalidRequest", f"The request body is not valid JSON: {exc}")
    except RecursionError:
        return json_error(400, "InvalidRequest", "The request body is nested too deeply.")
    if not isinstance(payload, dict):
        return json_error(400, "InvalidRequest", "The request body must be a JSON object.")
    return Call(body=body, payload=payload, headers=forwarded, request_id=rid,
                client=g.get("client"), cost=estimate_cost(payload))


def relay(answer: ClientAnswer) -> Response:
    return Response(answer.body, status=answer.status, headers=answer.headers,
                    direct_passthrough=True)


def client_gone() -> Callable[[], bool]:
    """Waitress's check for a client that hung up (when lookahead is on)."""
    return request.environ.get("waitress.client_disconnected") or (lambda: False)


@api.post("/lb")
def load_balance() -> Response:
    entries = gateway().current.lb
    if not entries:
        return _no_endpoints()
    call = read_call()
    if isinstance(call, Response):
        return call
    return relay(gateway().proxy.forward(call, entries, client_gone=client_gone()))


def _no_endpoints() -> Response:
    """/lb with a configuration that lists deployment pools only: say where to go instead."""
    pools = ", ".join(sorted(gateway().current.pools))
    return json_error(404, "NoEndpointsConfigured",
                      "/lb has no endpoints: the configuration lists none under \"endpoints\". "
                      f"Its deployment pools ({pools}) are served at "
                      "/openai/deployments/{pool}/... and /v1/... (model = pool).")


@api.get("/instanceinfo")
def instance_info() -> Response:
    return jsonify(gateway().instance_info(request.path))


@api.get("/metrics")
def metrics() -> Response:
    return jsonify(gateway().metrics(request.path))


@api.get("/healthz")
@open_route  # Kubernetes probes send no key
def healthz() -> Response:
    gw = gateway()
    return jsonify({"status": "OK", "serverName": gw.settings.name})


@api.get("/readyz")
@open_route
def readyz() -> Response:
    ready, states = gateway().readiness()
    response = jsonify({"status": "OK" if ready else "Unavailable", "endpoints": states})
    response.status_code = 200 if ready else 503
    return response


@api.get("/prometheus")
def prometheus() -> Response:
    return Response(gateway().telemetry.render(), content_type=CONTENT_TYPE)


@api.get("/reconfig/<path:key>")
def reconfig_in_path(key: str) -> Response:
    """The original's form; the key in the path never reaches our logs."""
    return _reconfigure(key)


@api.post("/reconfig")
def reconfig() -> Response:
    """The safer form: the key in a header, out of URLs and proxies' access logs."""
    return _reconfigure(request.headers.get(GATEWAY_KEY_HEADER))


def _reconfigure(key: str | None) -> Response:
    gw = gateway()
    address = request.remote_addr or "-"
    wait = gw.reconfig_lockout.remaining(address)
    if wait:
        return json_error(429, "TooManyAttempts",
                          f"Too many wrong gateway keys; retry after {whole_seconds(wait)} s.",
                          [("retry-after", str(whole_seconds(wait)))])
    if not key or not same_secret(key, gw.settings.gateway_key):
        gw.reconfig_lockout.failed(address)
        log.warning("reconfiguration refused: wrong gateway key",
                    extra={"fields": {"client_address": address}})
        return json_error(401, "Unauthorized", "Wrong gateway key; the configuration is unchanged.")
    gw.reconfig_lockout.succeeded(address)
    try:
        count = gw.reload()
    except ConfigError as exc:
        return json_error(400, "InvalidConfiguration",
                          f"The configuration was not reloaded: {exc}")
    return jsonify({"status": "OK",
                    "message": f"Configuration reloaded: {count} endpoint(s).",
                    "oaiEndpoints": gw.endpoints(),
                    "endpointUri": f"{gw.settings.route_prefix}/reconfig/***"})
