"""The admin endpoint generated on every service's blueprint: GET /api/<slug>/admin."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from flask import current_app
from flask.views import MethodView

from pyedge.config import Section
from pyedge.schemas import HIDDEN, AdminSchema
from pyedge.security import Role, requires

if TYPE_CHECKING:
    from pyedge.service import EdgeService, HealthCheck, ServiceRuntime

# Where create_app keeps the LoadedConfig (values, their sources, the secrets' keys).
SETTINGS_EXTENSION = "pyedge.settings"
# Shown as the source of a value whose origin the app did not record (an app not made
# by create_app).
UNKNOWN_SOURCE = "not recorded"


def plain(value: Any) -> Any:
    """A setting's value as JSON can carry it (paths as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    return str(value)


def settings_in_force(runtime: ServiceRuntime) -> list[dict[str, Any]]:
    """The service's settings and the core ones of its process: value, source, meaning."""
    from pyedge.host import CORE_SETTINGS  # the host imports the services: import late

    loaded = current_app.extensions.get(SETTINGS_EXTENSION)
    rows = []
    for section, core in ((runtime.service.section, False), (Section("edge", CORE_SETTINGS), True)):
        for setting in section.settings:
            key = section.key(setting)
            if loaded is not None and key in loaded:
                value, source = loaded[key], loaded.sources.get(key, UNKNOWN_SOURCE)
                secret = setting.secret or key in loaded.secrets
            else:
                found = current_app.config.get(key) if core else runtime.settings.get(setting.name)
                value, source, secret = found, UNKNOWN_SOURCE, setting.secret
            if secret and value is not None:
                value = HIDDEN
            rows.append(
                {
                    "key": key,
                    "value": plain(value),
                    "source": source,
                    "description": setting.help,
                    "secret": secret,
                    "core": core,
                }
            )
    return rows


def check_name(check: HealthCheck) -> tuple[str, str]:
    """A health check's name and the first line of its docstring."""
    doc = (getattr(check, "__doc__", None) or "").strip()
    return getattr(check, "__name__", type(check).__name__), doc.splitlines()[0] if doc else ""


def admin_view(runtime: ServiceRuntime) -> dict[str, Any]:
    """What GET /api/<slug>/admin answers."""
    service = runtime.service
    overall, checks = runtime.health_detail()
    return {
        "slug": service.slug,
        "title": service.title,
        "version": service.version,
        "description": service.description,
        "node": runtime.node,
        "settings": settings_in_force(runtime),
        "health": {
            "status": overall.status,
            "detail": overall.detail,
            "checks": [
                {
                    "name": check_name(check)[0],
                    "description": check_name(check)[1],
                    "status": result.status,
                    "detail": result.detail,
                }
                for check, result in checks
            ],
        },
        "operations": [
            {
                "name": name,
                "kind": session.kind,
                "state": session.state,
                "success": session.success,
                "description": session.op.description,
            }
            for name, session in runtime.runner.sessions.items()
        ],
        "log": runtime.log_lines(),
        "panels": [panel.describe() for panel in service.admin_panels],
    }


def add_admin_routes(service: EdgeService) -> None:
    """Add GET /admin (admin role): the service's settings, health, operations, log, panels."""
    blp = service.blueprint

    class Admin(MethodView):
        # Admins only: the settings name the node's hosts, paths and accounts.
        @requires(Role.ADMIN)
        @blp.response(200, AdminSchema)  # type: ignore[untyped-decorator]  # flask-smorest's
        def get(self) -> dict[str, Any]:
            """The service's admin view: settings in force, health, operations, log, panels."""
            return admin_view(service.runtime())

    # Its own endpoint name: a service's views may well have a class named Admin.
    blp.route("/admin", endpoint="pyedge_admin")(Admin)
