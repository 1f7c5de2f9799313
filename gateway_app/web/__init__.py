"""The web layer: HTTP in, gateway calls, HTTP out. ``bp`` is the app's one blueprint."""

from . import capacity, docs, openai, routes  # noqa: F401  (each adds its routes to bp)
from .admin import admit
from .blueprint import bp

# after routes' client-key check, so a client without a key gets its 401 and is never counted
bp.before_request(admit)

__all__ = ["bp"]
