"""Azure OpenAI and OpenAI data-plane paths, so an SDK needs only the gateway's URL.

``/openai/deployments/{name}/...`` sends the call to the pool called ``name``, keeping the
operation and the query string (``api-version``); ``/v1/...`` does the same with the pool named
by the body's ``model``, with the pool's api-version.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import Response, g, jsonify, request

from ..errors import json_error
from ..routing.proxy import Call
from ..routing.registry import PoolEntry, Registry
from ..usage import NO_LIMITS
from .blueprint import sdk
from .routes import client_gone, gateway, limit_client, read_call, relay

V1_OPERATIONS = {"chat/completions", "completions", "embeddings"}


def _unknown(name: str) -> Response:
    return json_error(404, "DeploymentNotFound",
                      f"The deployment {name!r} is not configured on this gateway.")


def _forward(call: Call, entries: tuple[PoolEntry, ...], tail: str) -> Response:
    """Send ``call`` to a pool's ``entries``, each at its deployment URL + ``tail``."""
    return relay(gateway().proxy.forward(call, Registry.pool_order(entries),
                                         lambda entry: entry.url + tail, client_gone()))


@sdk.post("/openai/deployments/<name>/<path:operation>")
def azure_deployment(name: str, operation: str) -> Response:
    entries = gateway().current.pools.get(name)
    if entries is None:
        return _unknown(name)
    if any(part in ("", ".", "..") for part in operation.split("/")):
        # the client picks the operation, never another deployment or path of the backend
        return json_error(400, "InvalidRequest", "The operation path must not contain empty, "
                          "'.' or '..' segments.")
    call = read_call(json_only=False)
    if isinstance(call, Response):
        return call
    refused = limit_client(call, name)
    if refused is not None:
        return refused
    query = request.query_string.decode("latin-1")
    return _forward(call, entries, f"/{quote(operation)}" + (f"?{query}" if query else ""))


@sdk.post("/v1/<path:operation>")
def openai_v1(operation: str) -> Response:
    if operation not in V1_OPERATIONS:
        return json_error(404, "NotFound", f"/v1/{operation} is not served by this gateway; "
                          f"it serves /v1/{', /v1/'.join(sorted(V1_OPERATIONS))}.")
    call = read_call()
    if isinstance(call, Response):
        return call
    name = call.payload.get("model")
    if not isinstance(name, str):
        return json_error(400, "InvalidRequest", "The body must name a deployment as model.")
    current = gateway().current  # one snapshot: the pool and its entries agree
    pool, entries = current.config.pools.get(name), current.pools.get(name)
    if pool is None or entries is None:
        return _unknown(name)
    refused = limit_client(call, name)
    if refused is not None:
        return refused
    return _forward(call, entries, f"/{operation}?api-version={pool.api_version}")


@sdk.get("/v1/models")
def openai_models() -> Response:
    """The pools, as the models an OpenAI client may name (those its ``deployments`` list,
    when it has such a limit)."""
    current = gateway().current
    limits = current.client_limits.get(g.get("client") or "", NO_LIMITS)
    created = int(gateway().started_at)
    return jsonify({"object": "list",
                    "data": [{"id": name, "object": "model", "created": created,
                              "owned_by": "apirouter"}
                             for name in sorted(current.pools) if limits.allows(name)]})
