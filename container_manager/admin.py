"""The security policy in force, for the API and the container-manager's admin page."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import marshmallow as ma
from flask.views import MethodView
from flask_smorest import abort

from container_manager.policy import (
    RESERVED_LABEL_PREFIX,
    SAFE_SECURITY_OPTS,
    SYSTEM_DIRS,
    Policy,
)
from container_manager.service import POLICY, service
from pyedge import AdminPanel
from pyedge.security import Role, requires

blp = service.blueprint


class PolicySchema(ma.Schema):
    """What a container spec may ask of this node: the settings' grants and the fixed rules."""

    allow_privileged = ma.fields.Boolean(required=True)
    allow_host_namespaces = ma.fields.Boolean(
        required=True, metadata={"description": "network, pid, ipc, uts, user"}
    )
    bind_dirs = ma.fields.List(
        ma.fields.String(),
        required=True,
        metadata={"description": "host directories bind mounts may come from"},
    )
    devices = ma.fields.List(ma.fields.String(), required=True)
    cap_add = ma.fields.List(
        ma.fields.String(), required=True, metadata={"description": "capabilities cap_add may add"}
    )
    engine_socket = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the engine's socket, never mountable"},
    )
    system_dirs = ma.fields.List(
        ma.fields.String(),
        required=True,
        metadata={"description": "never mountable, whatever the settings grant"},
    )
    security_opt = ma.fields.List(
        ma.fields.String(), required=True, metadata={"description": "the only values allowed"}
    )
    reserved_label_prefix = ma.fields.String(required=True)


def describe(policy: Policy) -> dict[str, Any]:
    """The policy as GET /policy shows it."""
    return {
        "allow_privileged": policy.allow_privileged,
        "allow_host_namespaces": policy.allow_host_namespaces,
        "bind_dirs": list(policy.bind_dirs),
        "devices": list(policy.devices),
        "cap_add": list(policy.cap_add),
        "engine_socket": policy.engine_socket,
        "system_dirs": list(SYSTEM_DIRS),
        "security_opt": list(SAFE_SECURITY_OPTS),
        "reserved_label_prefix": RESERVED_LABEL_PREFIX,
    }


@blp.route("/policy")
class PolicyResource(MethodView):
    # Viewers may read it: knowing what is denied helps write a spec that passes, and it
    # holds no secret (the settings that grant it are the admin's to change).
    @requires(Role.VIEWER)
    @blp.response(200, PolicySchema)
    def get(self) -> dict[str, Any]:
        """The security policy in force: what the settings grant and what is always denied."""
        policy: Policy | None = service.runtime().extras.get(POLICY)
        if policy is None:
            abort(HTTPStatus.SERVICE_UNAVAILABLE, message="container-manager is not running")
        return describe(policy)


service.admin_panel(
    AdminPanel(
        title="Security policy in force",
        description="Every container spec and app is checked against it before it reaches the "
        "engine. The EDGE_CONTAINER_MANAGER_ALLOW_PRIVILEGED, _ALLOW_HOST_NAMESPACES, "
        "_BIND_DIRS, _DEVICES and _CAP_ADD settings grant more; the rest is fixed.",
        source="policy",
        columns=(
            "allow_privileged",
            "allow_host_namespaces",
            "bind_dirs",
            "devices",
            "cap_add",
            "engine_socket",
            "system_dirs",
            "security_opt",
            "reserved_label_prefix",
        ),
    )
)
