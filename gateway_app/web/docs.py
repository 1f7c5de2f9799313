"""Serve the OpenAPI document (``openapi.yaml`` in this package) as YAML and as JSON."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from flask import Response

from ..errors import json_error
from .admin import admin_route
from .blueprint import api

DOCUMENT = Path(__file__).with_name("openapi.yaml")


@cache
def document_text() -> bytes:
    """The document as shipped, read once."""
    return DOCUMENT.read_bytes()


@cache
def document_json() -> bytes | None:
    """The document converted to JSON, or None when PyYAML is not installed."""
    try:
        import yaml
    except ImportError:
        return None
    data: Any = yaml.safe_load(document_text())
    return json.dumps(data, ensure_ascii=False, indent=1).encode()


@api.get("/openapi.yaml")
@admin_route
def openapi_yaml() -> Response:
    return Response(document_text(), content_type="application/yaml; charset=utf-8")


@api.get("/openapi.json")
@admin_route
def openapi_json() -> Response:
    body = document_json()
    if body is None:
        return json_error(501, "NotImplemented",
                          "PyYAML is not installed here; fetch openapi.yaml instead.")
    return Response(body, content_type="application/json")
