"""Admin routes: what the admin listener serves, and what admission control never refuses.

Probes, metrics, instance information, capacity, the dashboard, the OpenAPI document and
reconfiguration are marked where they are defined, with :func:`admin_route`. Every other
route is a call: it is counted against the bound on calls in progress
(:mod:`gateway_app.admission`) and is not served on the admin listener.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import Flask, Response
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..admission import Admission
from ..errors import error_body, json_error
from ..routing.headers import REQUEST_ID, REQUEST_ID_KEY, request_id

F = TypeVar("F", bound=Callable)

ADMIN_ATTRIBUTE = "apirouter_admin"
RETRY_AFTER_SECONDS = 1


def admin_route(view: F) -> F:
    """Mark a view as an admin route: served on the admin listener, never refused."""
    setattr(view, ADMIN_ATTRIBUTE, True)
    return view


def is_admin(view: Callable | None) -> bool:
    return getattr(view, ADMIN_ATTRIBUTE, False)


def admit(admission: Admission, environ: dict[str, Any]) -> Response | None:
    """Admit a call, or refuse it at once with 503 when the gateway is at its limit."""
    if admission.admit(environ):
        return None
    rid = request_id(environ.get(REQUEST_ID_KEY))
    return json_error(503, "Overloaded",
                      f"The gateway is serving as many calls as it can ({admission.limit}); "
                      f"retry after {RETRY_AFTER_SECONDS} s.",
                      [("retry-after", str(RETRY_AFTER_SECONDS)),
                       ("retry-after-ms", str(RETRY_AFTER_SECONDS * 1000)),
                       (REQUEST_ID, rid)])


def admin_only(app: Flask) -> Callable[[dict, Callable], Iterable[bytes]]:
    """``app`` as the admin listener serves it: admin routes, and a JSON 404 for the rest."""

    def serve(environ: dict, start_response: Callable) -> Iterable[bytes]:
        adapter = app.url_map.bind_to_environ(environ)
        try:
            endpoint, _values = adapter.match()
            served = is_admin(app.view_functions.get(endpoint))
        except MethodNotAllowed as exc:
            # a 405 for an admin path (POST /healthz); a call's path is not found here
            served = any(is_admin(app.view_functions.get(adapter.match(method=method)[0]))
                         for method in exc.valid_methods or ())
        except HTTPException:
            served = True  # no route at all: the app answers with its own JSON 404
        if served:
            return app(environ, start_response)
        body = error_body("NotFound", "This port serves only probes, metrics and "
                          "administration; calls go to the gateway's main port.")
        start_response("404 NOT FOUND", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body)))])
        return [body]

    return serve
