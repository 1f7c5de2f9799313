"""The Flask blueprint: thin handlers that turn HTTP into gateway calls and back."""

from __future__ import annotations

import hmac
import json

from flask import Blueprint, Response, current_app, jsonify, request

from .config import ConfigError
from .errors import json_error
from .gateway import Gateway
from .headers import request_id
from .proxy import Call

bp = Blueprint("apirouter", __name__)


def gateway() -> Gateway:
    return current_app.extensions["apirouter"]


def _read_call() -> Call | Response:
    """The client's OpenAI request, or a 400 saying what is wrong with it."""
    body = request.get_data(cache=False)
    rid = request_id(request.headers.get("x-request-id"))
    if not body.strip():
        return json_error(400, "InvalidRequest",
                          "The request body is empty; send an OpenAI request as a JSON object.")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return json_error(400, "InvalidRequest", f"The request body is not valid JSON: {exc}")
    if not isinstance(payload, dict):
        return json_error(400, "InvalidRequest", "The request body must be a JSON object.")
    return Call(body=body, payload=payload, headers=request.headers, request_id=rid)


@bp.post("/lb")
def load_balance() -> Response:
    call = _read_call()
    if isinstance(call, Response):
        return call
    gone = request.environ.get("waitress.client_disconnected") or (lambda: False)
    answer = gateway().proxy.forward(call, client_gone=gone)
    return Response(answer.body, status=answer.status, headers=answer.headers,
                    direct_passthrough=True)


@bp.get("/instanceinfo")
def instance_info() -> Response:
    return jsonify(gateway().instance_info(request.path))


@bp.get("/metrics")
def metrics() -> Response:
    return jsonify(gateway().metrics(request.path))


@bp.get("/healthz")
def healthz() -> Response:
    gw = gateway()
    return jsonify({"status": "OK", "serverName": gw.settings.name})


@bp.get("/readyz")
def readyz() -> Response:
    ready, states = gateway().readiness()
    response = jsonify({"status": "OK" if ready else "Unavailable", "endpoints": states})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/reconfig/<path:key>")
def reconfig(key: str) -> Response:
    gw = gateway()
    if not hmac.compare_digest(key.encode(), gw.settings.gateway_key.encode()):
        return json_error(401, "Unauthorized", "Wrong gateway key; the configuration is unchanged.")
    try:
        count = gw.reload()
    except ConfigError as exc:
        return json_error(400, "InvalidConfiguration",
                          f"The configuration was not reloaded: {exc}")
    return jsonify({"status": "OK",
                    "message": f"Configuration reloaded: {count} endpoint(s).",
                    "oaiEndpoints": gw.endpoints(),
                    "endpointUri": f"{gw.settings.route_prefix}/reconfig/***"})
