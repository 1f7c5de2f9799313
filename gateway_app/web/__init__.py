"""The web layer: HTTP in, gateway calls, HTTP out. ``blueprint(prefix)`` is the app's one."""

from flask import Blueprint

from . import capacity, docs, openai  # noqa: F401  (each adds its routes to sdk or api)
from .blueprint import gateway_blueprint
from .routes import check_request


def blueprint(prefix: str) -> Blueprint:
    """The app's one blueprint, its original routes under ``prefix``."""
    return gateway_blueprint(prefix, check_request)


__all__ = ["blueprint"]
