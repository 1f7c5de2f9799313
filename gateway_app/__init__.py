"""An API gateway for Azure OpenAI deployments: priority failover, cooldowns and metrics."""

from __future__ import annotations

import logging
import os

from flask import Flask

from .admission import release_admitted
from .errors import register_error_handlers
from .gateway import Gateway
from .logs import configure_logging
from .settings import Settings
from .web import blueprint

log = logging.getLogger("apirouter")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; raises SettingsError or ConfigError when it cannot start."""
    settings = settings or Settings.from_env(os.environ)
    configure_logging(settings.logging_level, settings.log_format)
    for name in settings.unknown_names:
        log.warning("%s", settings.unknown_name_warning(name))
    gw = Gateway(settings)
    app = Flask(__name__, static_folder=None)  # no /static/<path> route: the API has none
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["apirouter"] = gw
    app.register_blueprint(blueprint(settings.route_prefix))
    app.wsgi_app = release_admitted(app.wsgi_app)  # type: ignore[method-assign]
    register_error_handlers(app)
    if not gw.client_keys.enabled:
        log.warning("no client keys configured: every route is open to anyone who can reach "
                    "it (set API_GATEWAY_CLIENT_KEYS or clientKeys in the configuration file)")
    gw.start()
    log.info("gateway %s serving %d endpoint(s) and %d deployment pool(s) under %s",
             settings.name, len(gw.current.lb), len(gw.current.pools), settings.route_prefix)
    return app
