"""edge-server REST resources: health, the services tree and the nodes."""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

from flask import current_app, g
from flask.views import MethodView
from flask_smorest import abort

from edge_server.network.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.network.remote import RemoteRegistry, RemoteService
from edge_server.network.remote_listener import RemoteListener, listener_of
from edge_server.schemas import DeviceSchema, HealthSchema, NodeSchema, ServiceSchema
from edge_server.system import device_figures
from pyedge import OpKind, OpState, ServiceHost
from pyedge.security import Blueprint, public

blp = Blueprint(
    "edge-server",
    __name__,
    url_prefix="/api",
    description="The node: health, services and (on a hub) the nodes.",
)


def host() -> ServiceHost:
    """The current app's service host."""
    result: ServiceHost = current_app.extensions["pyedge"]
    return result


def registry() -> RemoteRegistry:
    """The current app's remote services (empty in the solo role)."""
    result: RemoteRegistry = current_app.extensions.setdefault(REMOTE_EXTENSION, RemoteRegistry())
    return result


def remote_health(service: RemoteService, listener: RemoteListener | None) -> dict[str, str]:
    """A remote service's health: offline with why, else what its own health check said."""
    if not service.online:
        return {"status": "offline", "detail": service.reason}
    reported = listener.reported_health(*service.key) if listener else None
    return dict(reported) if reported else {"status": "ok", "detail": ""}


def describe_remote(
    service: RemoteService, listener: RemoteListener | None, shared: bool
) -> dict[str, Any]:
    """A remote service as the services tree shows it; `shared`: its slug is not unique."""
    states = listener.op_states(*service.key) if listener else {}
    return {
        "slug": service.slug,
        "title": service.title,
        "version": service.version,
        "description": service.description,
        "mode": "remote",
        "node": service.node,
        "url": f"/api/nodes/{service.node}/{service.slug}" if shared else f"/api/{service.slug}",
        "health": remote_health(service, listener),
        "ops": [_remote_op(op, states.get(op["name"], {})) for op in service.ops],
    }


def _remote_op(op: Mapping[str, Any], session: Mapping[str, Any]) -> dict[str, Any]:
    """An announced operation with the state its service last published (None if unknown)."""
    try:
        state: OpState | None = OpState(session["state"])
    except (KeyError, ValueError):
        state = None
    return {
        "name": op["name"],
        "kind": OpKind(op["kind"]),
        "state": state,
        "success": session.get("success") if isinstance(session.get("success"), bool) else None,
    }


def services_tree() -> list[dict[str, Any]]:
    """Every service: the local ones, then the remote ones by node and slug."""
    edge = host()
    remote = registry().services()
    # /api/<slug> is the local service's, or the one node's that has it.
    counts = Counter([*edge.runtimes, *(s.slug for s in remote)])
    listener = listener_of(current_app)
    return [
        *(edge.describe(runtime) for runtime in edge.runtimes.values()),
        *(describe_remote(s, listener, counts[s.slug] > 1) for s in remote),
    ]


@blp.route("/health")
class Health(MethodView):
    @public
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Degraded")
    def get(self) -> tuple[dict[str, Any], int]:
        """Report the node's health: 200 when ok, 503 when degraded.

        Remote services are listed (`remote`) to an authenticated caller only: their
        nodes, slugs and failure reasons (with internal URLs) are not for anyone. An
        offline one does not degrade this node.
        """
        report = host().health()
        if g.get("identity") is not None:
            listener = listener_of(current_app)
            report["remote"] = [
                {"node": s.node, "slug": s.slug, **remote_health(s, listener)}
                for s in registry().services()
            ]
        status = HTTPStatus.OK if report["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        return report, status


@blp.route("/services")
class Services(MethodView):
    @blp.response(200, ServiceSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List the services, local and remote, with their health and operations."""
        return services_tree()


@blp.route("/device")
class Device(MethodView):
    @blp.response(200, DeviceSchema)
    def get(self) -> dict[str, Any]:
        """Show this device's CPU, memory, data disk and uptime."""
        return device_figures(Path(current_app.config["EDGE_DATA_DIR"]))


def _wall_clock(monotonic: float) -> datetime:
    """The UTC time of a time.monotonic() reading."""
    return datetime.now(UTC) - timedelta(seconds=max(time.monotonic() - monotonic, 0.0))


@blp.route("/nodes")
class Nodes(MethodView):
    @blp.response(200, NodeSchema(many=True))
    @blp.alt_response(404, description="This edge-server is not a hub (EDGE_ROLE)")
    def get(self) -> list[dict[str, Any]]:
        """List the nodes on the broker with their services (hub role only)."""
        if current_app.config.get("EDGE_ROLE") != "hub":
            abort(404, message="not a hub: /api/nodes needs EDGE_ROLE=hub")
        edge = host()
        now = datetime.now(UTC)
        grouped = registry().nodes()
        own = grouped.pop(edge.node, [])
        nodes = [
            {
                "node": edge.node,
                "machine": platform.machine(),
                "services": sorted({*edge.runtimes, *(s.slug for s in own)}),
                "last_seen": now,
                "status": "online",
            }
        ]
        for node, services in sorted(grouped.items()):
            nodes.append(
                {
                    "node": node,
                    "machine": services[0].machine,
                    "services": [s.slug for s in services],
                    "last_seen": max(_wall_clock(s.last_seen) for s in services),
                    "status": "online" if any(s.online for s in services) else "offline",
                }
            )
        return nodes
