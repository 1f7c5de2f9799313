"""Capacity routes on the gateway's blueprint: the JSON report and the dashboard page.

- ``GET {prefix}/capacity``: the capacity report over the history kept in memory.
- ``GET {prefix}/dashboard``: a page that charts that history per (pool, backend), shows
  each backend's cooldown (from ``/readyz``) and the capacity table, refreshing itself. Its
  script and style are files of the package (gateway_app/capacity/dashboard/), served by
  ``GET {prefix}/dashboard/NAME``;
  the page loads nothing from anywhere else, which its Content-Security-Policy enforces.
"""

from __future__ import annotations

from pathlib import Path

from flask import Response, jsonify, request, send_from_directory

from ..capacity import report as planning
from ..cluster.link import ClusterUnavailable
from .admin import admin_route
from .auth import open_route
from .blueprint import api
from .routes import gateway

DASHBOARD_DIR = Path(__file__).parents[1] / "capacity" / "dashboard"
# Only this origin: no CDN, no inline script, nothing sent elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@api.get("/capacity")
@admin_route
def capacity() -> Response:
    """Over the cluster's figures when Redis is configured and reachable, else this
    instance's; ``scope`` (and ``scopeNote``) say which."""
    gw = gateway()
    extra = {"scope": "instance"}
    try:
        document = gw.metrics(request.path, "cluster" if gw.cluster else "instance")
        if gw.cluster:
            extra = {"scope": "cluster", "replicas": document["replicas"]}
    except ClusterUnavailable as exc:
        document = gw.metrics(request.path)
        extra["scopeNote"] = f"{exc}: this instance's figures only"
    report = planning.live_report(document, gw.config.sections.get("capacity"))
    status = report.pop("status")
    return jsonify({**report, **extra, "status": status})


def _protect(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


@api.get("/dashboard")
@admin_route
@open_route  # the page and its assets hold no data; its script asks for a key
def dashboard() -> Response:
    return _protect(send_from_directory(DASHBOARD_DIR, "index.html", max_age=0))


@api.get("/dashboard/<name>")
@admin_route
@open_route
def dashboard_asset(name: str) -> Response:
    return _protect(send_from_directory(DASHBOARD_DIR, name, max_age=0))
