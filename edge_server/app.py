"""The edge-server app factory: one API, one OpenAPI document, every enabled service mounted."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from inspect import iscoroutinefunction
from typing import Any

from flask import Flask

from edge_server import dashboard, metrics, views
from edge_server.dashboard.login import SWAGGER_ASSETS_URL
from edge_server.network import remote_listener
from edge_server.network.openapi_merge import MergedApi
from edge_server.network.proxy import Proxy
from edge_server.registry import configure
from edge_server.security import views as auth_views
from pyedge import EdgeService, ServiceHost, __version__, fields
from pyedge.announce import default_advertise_url
from pyedge.auth import Auth
from pyedge.bus_config import mqtt_login
from pyedge.config import LoadedConfig
from pyedge.security import SECURITY_SCHEMES

logger = logging.getLogger(__name__)

PROCESS_SLUG = "edge-server"


class EdgeFlask(Flask):
    """Flask, remembering which views and hooks are plain functions.

    Flask asks of every hook and view, on every request, whether it is a coroutine
    (eight times for a light GET here); the answer never changes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain: set[Any] = set()

    def ensure_sync(self, func: Any) -> Any:
        """Flask's, answered from memory for a function already seen to be plain."""
        # A MethodView's handler is bound to a new view on each request: key on its function.
        key = getattr(func, "__func__", func)
        if key in self._plain:
            return func
        if iscoroutinefunction(func):
            return super().ensure_sync(func)
        self._plain.add(key)
        return func


OPENAPI_CONFIG = {
    "API_TITLE": "PyEdge",
    "API_VERSION": __version__,
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": SWAGGER_ASSETS_URL,
}


def process_slug(settings: Mapping[str, Any], services: Sequence[EdgeService]) -> str:
    """The process slug (will, client id): a service's own when it runs alone with its account."""
    # A service started on its own logs in with its own account, which may write only its
    # subtree: the will must be its status topic, or the broker drops it and a crash goes
    # unseen. Solo mode (and any other mix) is the edge-server, whose account writes all.
    # A hub names a joined node's accounts `<slug>@<node>` (edge_server.network.join).
    username, _password = mqtt_login(settings)
    if len(services) == 1 and (username or "").split("@", 1)[0] == services[0].slug:
        return services[0].slug
    return PROCESS_SLUG


def advertise_url(settings: Mapping[str, Any]) -> str:
    """The base URL a process serving its services on its own announces them at."""
    url: str | None = settings.get("EDGE_ADVERTISE_URL")
    return url or default_advertise_url(settings["EDGE_HTTP_PORT"], bool(settings["EDGE_TLS"]))


def tls_fingerprint(settings: LoadedConfig) -> str | None:
    """SHA-256 (hex) of the HTTPS certificate a process serving on its own presents."""
    if not settings["EDGE_TLS"]:
        return None
    # Checked (or made) by `pyedge serve` before the worker started: this only reads it.
    # Imported here: cryptography's x509 is for TLS alone (see pyedge.identity).
    from edge_server.security.tls import server_tls

    return server_tls(settings).fingerprint.replace(":", "").lower()


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

    # The dashboard's templates are the app's, so that they win over flask-smorest's own
    # (its Swagger UI page gets the CSRF token). No static folder: the dashboard serves
    # its assets itself (only the stylesheet is public).
    app = EdgeFlask(__name__, static_folder=None, template_folder="dashboard/templates")
    app.config.update(OPENAPI_CONFIG)
    app.config.update(settings)
    app.extensions["pyedge.settings"] = settings  # each value's source, for the admin pages
    # Under TLS the browser must never send the session cookie over plain HTTP.
    app.config["SESSION_COOKIE_SECURE"] = settings["EDGE_TLS"]
    slug = process_slug(settings, services)
    # Serving on its own (`pyedge serve`): its services are announced for the hubs.
    own = slug != PROCESS_SLUG
    auth = Auth()
    # A service behind the edge-server of its own device (the compose bundle, where the
    # edge-server's public key is shared) takes its callers from it: the edge-server's log
    # has the setup code, and a second one here would only be mistaken for it.
    auth.init_app(app, setup_code=not (own and settings.get("EDGE_HUB_PUBLIC_KEY")))
    # Its /api/openapi.json (and Swagger UI) also documents the remote services.
    api = MergedApi(app)
    fields.register(api.ma_plugin.converter)
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    api.register_blueprint(views.blp)
    api.register_blueprint(auth_views.blp)
    if settings["EDGE_ROLE"] == "hub":  # nodes join this hub (pyedge join)
        from edge_server.network import join_views

        api.register_blueprint(join_views.blp)

    host = ServiceHost(
        services,
        process_slug=slug,
        advertise_url=advertise_url(settings) if own else None,
        tls_fingerprint=tls_fingerprint(settings) if own else None,
    )
    host.close_hooks.append(auth.close)
    host.init_app(app, api)
    remote_listener.init_app(app, host)
    dashboard.init_app(app, host, api)
    host.close_hooks.append(api.close)
    proxy = None
    if settings["EDGE_ROLE"] != "solo":  # the remote services are reached through it
        proxy = Proxy()
        proxy.init_app(app)
        host.close_hooks.append(proxy.close)
    # GET /metrics; an edge-server that fronts remote services scrapes theirs, signed.
    metrics.init_app(app, host, key=(lambda: proxy.key) if proxy is not None else None)
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
