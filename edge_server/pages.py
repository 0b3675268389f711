"""Pages outside the API: the node's front page and Swagger UI's local assets."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from pyedge import ServiceHost

# Swagger UI is served from the installed package: a Pi may have no internet.
SWAGGER_ASSETS_URL = "/api/docs/assets/"

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    """List the services and their health."""
    host: ServiceHost = current_app.extensions["pyedge"]
    services = [host.describe(runtime) for runtime in host.runtimes.values()]
    return render_template("index.html", health=host.health(), services=services)


@bp.get(f"{SWAGGER_ASSETS_URL}<path:filename>")
def swagger_assets(filename: str) -> Response:
    """Serve a Swagger UI file from the swagger-ui-bundle package."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
