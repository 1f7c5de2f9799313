"""The app's one blueprint, and the two it nests (Flask's nested blueprints).

``sdk`` holds the Azure OpenAI and OpenAI data-plane paths (``/openai/...``, ``/v1/...``) at the
root, where the SDKs look for them; ``api`` holds the original's routes, nested under the
app's ``/api/v1/{env}/apirouter``. Both are built once, at import. The one blueprint that nests
them is made per app by :func:`gateway_blueprint`, because the prefix comes from that app's
settings and Flask records a nested blueprint's prefix where it is nested: one app's prefix
cannot leak into another's (tests run several apps in one process).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint

sdk = Blueprint("sdk", __name__)
api = Blueprint("api", __name__)


def gateway_blueprint(prefix: str, check: Callable) -> Blueprint:
    """The app's one blueprint: ``sdk`` at the root, ``api`` under ``prefix``, and ``check``
    run before every request of both."""
    root = Blueprint("apirouter", __name__)
    root.register_blueprint(sdk)
    root.register_blueprint(api, url_prefix=prefix)
    root.before_request(check)
    return root
