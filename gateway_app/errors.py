"""One JSON error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

It is the shape the OpenAI SDKs already parse. Messages never contain keys.
"""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, current_app
from werkzeug.exceptions import HTTPException

log = logging.getLogger("apirouter")

# werkzeug's exception names -> our codes, for the errors Flask raises itself
_CODES = {400: "InvalidRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed",
          413: "PayloadTooLarge", 415: "UnsupportedMediaType"}


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def too_large(limit: int | None) -> str:
    """The message of a 413, whichever of Flask and waitress answers it."""
    return f"The request body is larger than the gateway's limit of {limit} bytes."


def json_error(status: int, code: str, message: str,
               headers: list[tuple[str, str]] | None = None) -> Response:
    """A JSON error response."""
    return Response(error_body(code, message), status=status, headers=headers,
                    content_type="application/json")


def register_error_handlers(app: Flask) -> None:
    """Turn every error Flask or a handler raises into the JSON shape."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = (too_large(current_app.config.get("MAX_CONTENT_LENGTH")) if status == 413
                   else exc.description or exc.name)
        response = json_error(status, _CODES.get(status, "HttpError"), message)
        allowed = getattr(exc, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error: %s", type(exc).__name__)
        return json_error(500, "InternalError", "The gateway failed to handle this request.")
