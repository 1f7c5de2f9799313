"""The original's routes (``/lb``, info, metrics, probes, reconfig): thin handlers that turn
HTTP into gateway calls and back, and the client-key check every route of the app goes through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from flask import Response, current_app, g, jsonify, request

from ..cluster.link import ClusterUnavailable
from ..config import ConfigError
from ..errors import json_error
from ..gateway import Gateway
from ..json_depth import MAX_JSON_DEPTH, nests_deeper
from ..keys import same_secret
from ..logs import log_fields
from ..routing.cost import estimate_cost
from ..routing.headers import REQUEST_ID_KEY, forwarded_headers, request_id
from ..routing.metrics import iso_time
from ..routing.proxy import Call, ClientAnswer
from ..routing.registry import DEFAULT_POOL
from ..routing.retry_after import whole_seconds
from ..routing.telemetry import CONTENT_TYPE
from ..usage import NO_LIMITS, Refusal, Ticket
from .admin import admin_route, admit, is_admin
from .auth import is_open, open_route, presented_key
from .blueprint import api

log = logging.getLogger("apirouter")
CALL_LOG = logging.getLogger("apirouter.call")  # the proxy's one line per call

GATEWAY_KEY_HEADER = "x-api-gateway-key"


def gateway() -> Gateway:
    return current_app.extensions["apirouter"]


def check_request() -> Response | None:
    """Every request passes here once. When client keys are configured, every route but those
    marked open needs one; then every route but those marked admin is a call, counted against
    the bound on calls in progress (after the key check, so a 401 is never counted)."""
    view = current_app.view_functions.get(request.endpoint or "")
    gw = gateway()
    keys = gw.client_keys
    if keys.enabled and not is_open(view):
        name = keys.identify(presented_key(request.headers))
        if name is None:
            return json_error(401, "Unauthorized",
                              "A valid client key is required, sent as the api-key header or "
                              "as Authorization: Bearer <key>.",
                              [("WWW-Authenticate", 'Bearer realm="apirouter"')])
        g.client = name
    return None if is_admin(view) else admit(gw.admission, request.environ)


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
    except RecursionError:  # far deeper than the bound: json gave up on its own
        return _too_deep()
    if not isinstance(payload, dict):
        return json_error(400, "InvalidRequest", "The request body must be a JSON object.")
    if nests_deeper(payload):
        return _too_deep()
    return Call(body=body, payload=payload, headers=forwarded, request_id=rid,
                client=g.get("client"), cost=estimate_cost(payload))


def limit_client(call: Call, pool: str) -> Response | None:
    """Count ``call`` against its client's limits for ``pool`` (registry.DEFAULT_POOL for /lb):
    None when admitted (``call.ticket`` is then settled by the proxy), else the refusal. Calls
    without a client (no keys configured) pass at the cost of this one check."""
    name = call.client
    if name is None:
        return None
    gw = gateway()
    verdict = gw.usage.admit(name, gw.current.client_limits.get(name, NO_LIMITS), pool,
                             call.cost)
    if isinstance(verdict, Ticket):
        call.ticket = verdict
        return None
    if CALL_LOG.isEnabledFor(logging.INFO):
        log_fields(CALL_LOG, logging.INFO, "call refused by client limit",
                   {"request_id": call.request_id, "client": name, "pool": pool,
                    "limit": verdict.limit, "status": verdict.status,
                    "estimated_tokens": call.cost})
    return _refusal(verdict, call.request_id)


REFUSAL_CODES = {"tpm": "ClientRateLimited", "rpm": "ClientRateLimited",
                 "tokenQuota": "ClientQuotaExceeded", "deployments": "DeploymentNotAllowed"}


def _refusal(refusal: Refusal, rid: str) -> Response:
    """A client's limit refused a call: 429 (tpm, rpm) or 403 (quota, pool), never forwarded."""
    headers = [("x-client-limit", refusal.limit), ("x-request-id", rid)]
    if refusal.retry_after is not None:
        wait = max(refusal.retry_after, 0.001)
        headers += [("retry-after", str(whole_seconds(wait))),
                    ("retry-after-ms", str(max(1, round(wait * 1000))))]
    if refusal.period_end is not None:
        headers.append(("x-quota-period-end", iso_time(refusal.period_end)))
    code = REFUSAL_CODES[refusal.limit] if refusal.status != 400 else "ClientCallTooLarge"
    return json_error(refusal.status, code, refusal.message, headers)


def _too_deep() -> Response:
    return json_error(400, "InvalidRequest", "The request body is nested too deeply: arrays and "
                      f"objects more than {MAX_JSON_DEPTH} levels deep.")


def relay(answer: ClientAnswer) -> Response:
    return Response(answer.body, status=answer.status, headers=answer.headers,
                    direct_passthrough=True)


def client_gone() -> Callable[[], bool]:
    """Waitress's check for a client that hung up (when lookahead is on)."""
    return request.environ.get("waitress.client_disconnected") or (lambda: False)


@api.post("/lb")
def load_balance() -> Response:
    gw = gateway()
    entries = gw.current.lb
    if not entries:
        return _no_endpoints()
    call = read_call()
    if isinstance(call, Response):
        return call
    refused = limit_client(call, DEFAULT_POOL)
    if refused is not None:
        return refused
    return relay(gw.proxy.forward(call, entries, client_gone=client_gone()))


def _no_endpoints() -> Response:
    """/lb with a configuration that lists deployment pools only: say where to go instead."""
    pools = ", ".join(sorted(gateway().current.pools))
    return json_error(404, "NoEndpointsConfigured",
                      "/lb has no endpoints: the configuration lists none under \"endpoints\". "
                      f"Its deployment pools ({pools}) are served at "
                      "/openai/deployments/{pool}/... and /v1/... (model = pool).")


@api.get("/instanceinfo")
@admin_route
def instance_info() -> Response:
    return jsonify(gateway().instance_info(request.path))


@api.get("/metrics")
@admin_route
def metrics() -> Response:
    """This instance's figures; ``?scope=cluster``: summed over every replica (Redis)."""
    scope = request.args.get("scope", "instance")
    if scope not in ("instance", "cluster"):
        return json_error(400, "InvalidRequest", "scope must be instance or cluster.")
    try:
        return jsonify(gateway().metrics(request.path, scope))
    except ClusterUnavailable as exc:
        return json_error(503, "ClusterUnavailable",
                          f"The cluster's metrics cannot be read now: {exc}. Without scope, "
                          "/metrics gives this instance's.")


@api.get("/healthz")
@admin_route
@open_route  # Kubernetes probes send no key
def healthz() -> Response:
    gw = gateway()
    return jsonify({"status": "OK", "serverName": gw.settings.name})


@api.get("/readyz")
@admin_route
@open_route
def readyz() -> Response:
    ready, states = gateway().readiness()
    response = jsonify({"status": "OK" if ready else "Unavailable", "endpoints": states})
    response.status_code = 200 if ready else 503
    return response


@api.get("/prometheus")
@admin_route
def prometheus() -> Response:
    return Response(gateway().telemetry.render(), content_type=CONTENT_TYPE)


@api.get("/reconfig/<path:key>")
@admin_route
def reconfig_in_path(key: str) -> Response:
    """The original's form; the key in the path never reaches our logs."""
    return _reconfigure(key)


@api.post("/reconfig")
@admin_route
def reconfig() -> Response:
    """The safer form: the key in a header, out of URLs and proxies' access logs."""
    return _reconfigure(request.headers.get(GATEWAY_KEY_HEADER))


def _reconfigure(key: str | None) -> Response:
    """Reload with the right key, whatever came before from the same address; a wrong key gets
    401, or 429 once its address is past API_GATEWAY_RECONFIG_MAX_FAILURES in a minute."""
    gw = gateway()
    if key and same_secret(key, gw.settings.gateway_key):
        return _reload(gw)
    address = request.remote_addr or "-"
    verdict = gw.reconfig_throttle.failed(address)
    fields = {"fields": {"client_address": address}}
    if not verdict.wait:
        log.warning("reconfiguration refused: wrong gateway key", extra=fields)
        return json_error(401, "Unauthorized", "Wrong gateway key; the configuration is unchanged.")
    wait = whole_seconds(verdict.wait)
    if verdict.announce:
        log.warning("reconfiguration refused: too many wrong gateway keys from one address; "
                    "the next ones within %d s get 429 and no log line", wait, extra=fields)
    return json_error(429, "TooManyAttempts",
                      "Wrong gateway key, and too many from this address; the configuration is "
                      f"unchanged. Retry after {wait} s.", [("retry-after", str(wait))])


def _reload(gw: Gateway) -> Response:
    """Re-read the file here, and ask the other replicas to re-read theirs (with Redis): 200
    with the new list, or 400 naming the problem (nothing changed here)."""
    outcome, others = gw.reload_everywhere()
    replicas = {} if others is None else {"replicas": _replicas_summary(others,
                                          not isinstance(outcome, ConfigError))}
    if isinstance(outcome, ConfigError):
        response = json_error(400, "InvalidConfiguration",
                              f"The configuration was not reloaded: {outcome}"
                              + (f" {replicas['replicas']['message']}" if replicas else ""))
        if replicas:  # the error shape, plus what the other replicas did
            response.set_data(json.dumps({**json.loads(response.get_data()), **replicas}))
        return response
    return jsonify({"status": "OK",
                    "message": f"Configuration reloaded: {outcome} endpoint(s)."
                               + (f" {replicas['replicas']['message']}" if replicas else ""),
                    "oaiEndpoints": gw.endpoints(),
                    **replicas,
                    "endpointUri": f"{gw.settings.route_prefix}/reconfig/***"})


def _replicas_summary(others: dict, local_ok: bool) -> dict:
    """How many replicas (this one included) applied a reload, with a sentence for people."""
    if not others["connected"]:
        return {"total": 1, "applied": int(local_ok), "asked": 0, "failed": [],
                "message": "Redis is not reachable: the other replicas were not asked to "
                           "reload."}
    total, applied = others["asked"] + 1, others["applied"] + int(local_ok)
    text = f"Applied by {applied} of {total} replica(s), this one included"
    if others["failed"]:
        names = ", ".join(f["replica"] for f in others["failed"])
        text += f"; {names} kept the old configuration (invalid file)"
    silent = others["asked"] - len(others["answers"])
    if silent > 0:
        text += f"; {silent} did not answer within 2 s"
    return {"total": total, "applied": applied, "asked": others["asked"],
            "failed": others["failed"], "answers": others["answers"], "message": text + "."}
