"""The gateway's REST resources: its listener, and the client certificates it accepts."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView

from container_manager.gateway.runtime import GATEWAY, certificates_of
from container_manager.gateway.schemas import (
    CertificateSchema,
    GatewaySchema,
    IssuedSchema,
    IssueSchema,
)
from container_manager.service import service
from pyedge.security import Role, requires

blp = service.blueprint


@blp.route("/gateway")
class GatewayResource(MethodView):
    @blp.response(200, GatewaySchema)
    def get(self) -> dict[str, Any]:
        """The Docker API gateway: whether it listens, where, and with TLS."""
        runtime = service.runtime()
        gateway = runtime.extras.get(GATEWAY)
        return {
            "listening": gateway is not None,
            "docker_host": gateway.url if gateway is not None else None,
            "tls": gateway is not None and runtime.tls is not None,
        }


@blp.route("/gateway/certificates")
class Certificates(MethodView):
    @requires(Role.ADMIN)
    @blp.response(200, CertificateSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List the client certificates issued, revoked ones included."""
        return certificates_of(service.runtime()).records()

    @requires(Role.ADMIN)
    @blp.arguments(IssueSchema)
    @blp.response(201, IssuedSchema)
    @blp.alt_response(409, description="A certificate of that name exists")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Issue a client certificate for Docker tools (its key is shown this once)."""
        runtime = service.runtime()
        caller = g.identity
        issued = certificates_of(runtime).issue(
            body["name"],
            body["user"] or caller.name,
            Role.parse(body["role"]),
            body["days"],
            issued_by=caller.actor,
        )
        ca = runtime.tls.cert.read_text() if runtime.tls is not None else None
        return {**issued.record, "cert": issued.cert_pem, "key": issued.key_pem, "ca": ca}


@blp.route("/gateway/certificates/<name>")
class CertificateResource(MethodView):
    @requires(Role.ADMIN)
    @blp.response(200, CertificateSchema)
    def delete(self, name: str) -> dict[str, Any]:
        """Revoke a client certificate: refused at once, by every connection."""
        return certificates_of(service.runtime()).revoke(name)
