"""The dashboard's pages: overview, sensors, containers, operations, service admin, users.

Each page is rendered on the server with what the edge-server knows (the services tree,
the node, the caller's role) and then kept live by its script through the JSON API and
`/api/events`. A remote service is reached at its URL in the tree, through the proxy,
so every page works the same for the services of other nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from flask import Blueprint, abort, current_app, g, render_template, request, url_for
from flask.typing import ResponseReturnValue

from edge_server.views import services_tree
from pyedge import ServiceHost
from pyedge.auth import current_auth
from pyedge.security import Role, requires
from pyedge.service import topic_root

# Scripts and styles come from this server only: a page never loads or runs anything else.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DEVICE_SERVICE = "device-service"
CONTAINER_MANAGER = "container-manager"

bp = Blueprint("pages", __name__)


@dataclass(frozen=True)
class NavItem:
    """A link of the main menu, shown to callers with at least `role`."""

    key: str
    label: str
    endpoint: str
    role: Role = Role.VIEWER
    needs: str | None = None  # a service slug without which the page has nothing to show


NAV = (
    NavItem("overview", "Overview", "pages.index"),
    NavItem("sensors", "Sensors", "pages.sensors", needs=DEVICE_SERVICE),
    NavItem("containers", "Containers", "pages.containers", needs=CONTAINER_MANAGER),
    NavItem("operations", "Operations", "pages.operations"),
    NavItem("admin", "Admin", "pages.admin_index", role=Role.ADMIN),
    NavItem("users", "Users", "pages.users", role=Role.ADMIN),
)


@bp.after_request
def secure_page(response: Any) -> Any:
    """Every page gets the strict policy (replacing the app's frame-only default)."""
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
    return response


def host() -> ServiceHost:
    """The process's service host."""
    found: ServiceHost = current_app.extensions["pyedge"]
    return found


def service_ref(service: Mapping[str, Any]) -> dict[str, Any]:
    """What a page script needs of a service: who, where its API is, what it does."""
    return {
        "slug": service["slug"],
        "title": service["title"],
        "node": service["node"],
        "mode": service["mode"],
        "url": service["url"],
        "health": service["health"],
        "version": service["version"],
        "description": service["description"],
        "ops": [
            {
                "name": op["name"],
                "kind": str(op["kind"]),
                "state": str(op["state"]) if op["state"] else None,
                "success": op["success"],
            }
            for op in service["ops"]
        ],
        "admin": url_for("pages.admin", slug=service["slug"], node=service["node"]),
    }


def render_page(template: str, active: str, title: str, **context: Any) -> str:
    """A dashboard page: the menu for the caller's role, the node, the live channel's root."""
    services = context.pop("services", None) or [service_ref(s) for s in services_tree()]
    slugs = {service["slug"] for service in services}
    role: Role = g.identity.role
    nav = [
        {"key": item.key, "label": item.label, "url": url_for(item.endpoint)}
        for item in NAV
        if role >= item.role and (item.needs is None or item.needs in slugs)
    ]
    data = {"services": services, **context.pop("page_data", {})}
    return render_template(
        template,
        active=active,
        page_title=title,
        nav=nav,
        identity=g.identity,
        node=host().node,
        topic_root=topic_root(current_app.config.get("EDGE_SITE") or ""),
        csrf_token=current_auth().csrf_token(),
        services=services,
        page_data=data,
        **context,
    )


def of_slug(services: list[dict[str, Any]], slug: str) -> list[dict[str, Any]]:
    """The services (local or on any node) with this slug."""
    return [service for service in services if service["slug"] == slug]


@bp.get("/")
def index() -> str:
    """The overview: nodes, services and their health, the broker, the device, the audit."""
    services = [service_ref(s) for s in services_tree()]
    health = host().health()
    nodes: dict[str, list[dict[str, Any]]] = {}
    for service in services:
        nodes.setdefault(service["node"], []).append(service)
    nodes.setdefault(host().node, [])
    return render_page(
        "overview.html",
        "overview",
        "Overview",
        services=services,
        health=health,
        nodes=nodes,
        page_data={"health": health},
    )


def service_page(template: str, active: str, title: str, key: str, slug: str) -> str:
    """A page about one kind of service: its instances (local or remote) in page_data[key]."""
    services = [service_ref(s) for s in services_tree()]
    return render_page(
        template, active, title, services=services, page_data={key: of_slug(services, slug)}
    )


@bp.get("/sensors")
def sensors() -> str:
    """Every device-service's sensors, live, with their history; actuators as switches."""
    return service_page("sensors.html", "sensors", "Sensors", "devices", DEVICE_SERVICE)


@bp.get("/containers")
def containers() -> str:
    """Containers, apps and images of every container-manager."""
    return service_page(
        "containers.html", "containers", "Containers and apps", "managers", CONTAINER_MANAGER
    )


@bp.get("/operations")
def operations() -> str:
    """Every service's Tasks and Processes, with forms from their parameter schemas."""
    return render_page("operations.html", "operations", "Operations")


@requires(Role.ADMIN)
@bp.get("/admin")
def admin_index() -> str:
    """The services, each with a link to its admin page."""
    return render_page("admin_index.html", "admin", "Admin")


@requires(Role.ADMIN)
@bp.get("/admin/<slug>")
def admin(slug: str) -> ResponseReturnValue:
    """A service's admin page: settings, health, operations, log, and its own panels."""
    services = [service_ref(s) for s in services_tree()]
    node = request.args.get("node")
    matches = [s for s in of_slug(services, slug) if node in (None, s["node"])]
    if not matches:
        abort(HTTPStatus.NOT_FOUND)
    service = matches[0]
    return render_page(
        "admin.html",
        "admin",
        f"{service['title']} on {service['node']}",
        services=services,
        service=service,
        page_data={"service": service},
    )


@requires(Role.ADMIN)
@bp.get("/users")
def users() -> str:
    """Users, API tokens and the audit log."""
    return render_page("users.html", "users", "Users, tokens and audit")
