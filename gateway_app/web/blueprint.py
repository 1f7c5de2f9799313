"""The app's one blueprint, ``apirouter``, and the one it nests.

``bp`` holds the Azure OpenAI and OpenAI data-plane paths (``/openai/...``, ``/v1/...``) at the
root, where the SDKs look for them. It nests ``api``, the original's routes under
``/api/v1/<env>/apirouter``. The env segment is a URL variable checked against
``API_GATEWAY_ENV``, the pattern Flask documents for a prefix that carries a value, so the
blueprints are built once at import and any number of apps (with different envs) can use them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app

bp = Blueprint("apirouter", __name__)
api = Blueprint("api", __name__, url_prefix="/api/v1/<env>/apirouter")


@api.url_value_preprocessor
def _same_env(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Only this gateway's env is served; the views never see the segment."""
    env = (values or {}).pop("env", None)
    if env != current_app.extensions["apirouter"].settings.env:
        abort(404)
bp.register_blueprint(api)
