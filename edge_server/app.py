"""The edge-server app factory: one API, one OpenAPI document, every enabled service mounted."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask
from flask_smorest import Api

from edge_server import auth_views, pages, views
from edge_server.registry import configure
from pyedge import EdgeService, ServiceHost, __version__
from pyedge.auth import Auth
from pyedge.bus_config import mqtt_login
from pyedge.security import SECURITY_SCHEMES

logger = logging.getLogger(__name__)

PROCESS_SLUG = "edge-server"

OPENAPI_CONFIG = {
    "API_TITLE": "PyEdge",
    "API_VERSION": __version__,
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": pages.SWAGGER_ASSETS_URL,
}


def process_slug(settings: Mapping[str, Any], services: Sequence[EdgeService]) -> str:
    """The process slug (will, client id): a service's own when it runs alone with its account."""
    # A service started on its own logs in with its own account, which may write only its
    # subtree: the will must be its status topic, or the broker drops it and a crash goes
    # unseen. Solo mode (and any other mix) is the edge-server, whose account writes all.
    username, _password = mqtt_login(settings)
    if len(services) == 1 and username == services[0].slug:
        return services[0].slug
    return PROCESS_SLUG


def create_app(
    config: Mapping[str, Any] | None = None,
    services: Sequence[EdgeService] | None = None,
) -> Flask:
    """Create the edge-server with its services mounted and started.

    Settings come from defaults < EDGE_CONFIG TOML < EDGE_* environment < `config`;
    `services` replaces the installed ones (for programs embedding PyEdge, and tests).
    Raises ConfigError naming the bad key and its source.
    """
    settings, services = configure(config, services)

    app = Flask(__name__)
    app.config.update(OPENAPI_CONFIG)
    app.config.update(settings)
    # Under TLS the browser must never send the session cookie over plain HTTP.
    app.config["SESSION_COOKIE_SECURE"] = settings["EDGE_TLS"]
    auth = Auth()
    auth.init_app(app)
    api = Api(app)
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    api.register_blueprint(views.blp)
    api.register_blueprint(auth_views.blp)
    app.register_blueprint(pages.bp)

    host = ServiceHost(services, process_slug=process_slug(settings, services))
    host.close_hooks.append(auth.close)
    host.init_app(app, api)
    try:
        host.start()
    except BaseException:
        host.close()  # a service that failed to start must not leave the others running
        raise
    logger.info(
        "%s on node %s with %s",
        host.process_slug,
        host.node,
        ", ".join(host.runtimes) or "no services",
    )
    return app
