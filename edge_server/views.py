"""edge-server REST resources: health and the services tree."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import current_app
from flask.views import MethodView

from edge_server.schemas import HealthSchema, ServiceSchema
from pyedge import ServiceHost
from pyedge.security import Blueprint, public

blp = Blueprint(
    "edge-server", __name__, url_prefix="/api", description="The node: health and services."
)


def host() -> ServiceHost:
    """The current app's service host."""
    result: ServiceHost = current_app.extensions["pyedge"]
    return result


@blp.route("/health")
class Health(MethodView):
    @public
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Degraded")
    def get(self) -> tuple[dict[str, Any], int]:
        """Report the node's health: 200 when ok, 503 when degraded."""
        report = host().health()
        status = HTTPStatus.OK if report["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        return report, status


@blp.route("/services")
class Services(MethodView):
    @blp.response(200, ServiceSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List the services with their health and operations."""
        edge = host()
        return [edge.describe(runtime) for runtime in edge.runtimes.values()]
