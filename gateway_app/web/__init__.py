"""The web layer: HTTP in, gateway calls, HTTP out. ``bp`` is the app's one blueprint."""

from . import capacity, docs, openai, routes  # noqa: F401  (each adds its routes to bp)
from .blueprint import bp

__all__ = ["bp"]
