"""Schemas of the gateway's REST resources: its state and its client certificates."""

from __future__ import annotations

import marshmallow as ma

from pyedge import fields
from pyedge.accounts import NAME_PATTERN, NAME_RULE

ROLES = ("viewer", "operator", "admin")
MAX_DAYS = 3650


class GatewaySchema(ma.Schema):
    """The Docker API gateway's listener."""

    listening = ma.fields.Boolean(metadata={"description": "false: gateway_listen is not set"})
    docker_host = ma.fields.String(
        allow_none=True, metadata={"description": "the DOCKER_HOST for Docker tools"}
    )
    tls = ma.fields.Boolean(metadata={"description": "HTTPS with the node's certificate"})


class CertificateSchema(ma.Schema):
    """A client certificate the gateway's CA issued (never its key)."""

    serial = ma.fields.String()
    name = ma.fields.String()
    user = ma.fields.String(metadata={"description": "the PyEdge user it acts as"})
    role = ma.fields.String(metadata={"enum": list(ROLES)})
    issued_by = ma.fields.String()
    issued_at = ma.fields.String()
    not_after = ma.fields.String()
    revoked_at = ma.fields.String(allow_none=True)


class IssueSchema(ma.Schema):
    """POST /gateway/certificates: whom the certificate is for."""

    name = ma.fields.String(
        required=True,
        validate=fields.FullMatch(NAME_PATTERN, error=NAME_RULE),
        metadata={"description": "the certificate's name, e.g. portainer"},
    )
    user = ma.fields.String(
        load_default=None,
        validate=fields.FullMatch(NAME_PATTERN, error=NAME_RULE),
        metadata={"description": "the PyEdge user it acts as (default: the caller)"},
    )
    role = ma.fields.String(load_default="viewer", validate=ma.validate.OneOf(ROLES))
    days = ma.fields.Integer(load_default=365, validate=ma.validate.Range(min=1, max=MAX_DAYS))


class IssuedSchema(CertificateSchema):
    """A new certificate with the files a Docker client needs: shown this once."""

    cert = ma.fields.String(metadata={"description": "cert.pem: the client certificate"})
    key = ma.fields.String(metadata={"description": "key.pem: its private key"})
    ca = ma.fields.String(
        allow_none=True,
        metadata={"description": "ca.pem: what verifies the gateway (the node's certificate)"},
    )
