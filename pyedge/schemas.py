"""Schemas of the endpoints every service gets: its operations and its admin view."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from apispec import APISpec
from apispec.ext.marshmallow.openapi import OpenAPIConverter

from pyedge import fields
from pyedge.operations import OpKind, OpState

MAX_WAIT_S = 60.0
# What the admin endpoint shows in place of a secret setting's value.
HIDDEN = "set, hidden"


class MessageSchema(ma.Schema):
    """One line an operation logged."""

    ts = ma.fields.String(required=True, metadata={"description": "ISO 8601 UTC"})
    text = ma.fields.String(required=True)


class SessionSchema(ma.Schema):
    """The one session of an operation: its state, result, messages and data."""

    op = ma.fields.String(required=True)
    kind = ma.fields.Enum(OpKind, by_value=True, required=True)
    state = ma.fields.Enum(OpState, by_value=True, required=True)
    success = ma.fields.Boolean(allow_none=True, required=True)
    started_at = ma.fields.String(allow_none=True, required=True)
    ended_at = ma.fields.String(allow_none=True, required=True)
    params = ma.fields.Dict(required=True)
    messages = ma.fields.List(ma.fields.Nested(MessageSchema), required=True)
    data = ma.fields.Dict(required=True)


class OperationSchema(ma.Schema):
    """An operation: its kind, parameters (as JSON Schema) and current session."""

    name = ma.fields.String(required=True)
    kind = ma.fields.Enum(OpKind, by_value=True, required=True)
    role = ma.fields.String(
        required=True, metadata={"description": "the role that starts and ends it"}
    )
    destructive = ma.fields.Boolean(
        required=True, metadata={"description": "it deletes data (a client asks first)"}
    )
    description = ma.fields.String(required=True)
    params_schema = ma.fields.Dict(required=True)
    session = ma.fields.Nested(SessionSchema, required=True)


class WaitArgsSchema(ma.Schema):
    """How long to wait for a session to end."""

    timeout = ma.fields.Float(
        load_default=MAX_WAIT_S,
        validate=ma.validate.Range(min=0, max=MAX_WAIT_S),
        metadata={"description": f"seconds, at most {MAX_WAIT_S:g}"},
    )


class AdminSettingSchema(ma.Schema):
    """One setting in force: its value (a secret's hidden) and where it came from."""

    key = ma.fields.String(required=True, metadata={"description": "e.g. EDGE_MQTT_PORT"})
    value = ma.fields.Raw(
        required=True, allow_none=True, metadata={"description": f"{HIDDEN!r} for a secret"}
    )
    source = ma.fields.String(
        required=True,
        metadata={"description": "default, the TOML file, the environment or create_app(config)"},
    )
    description = ma.fields.String(required=True)
    secret = ma.fields.Boolean(required=True)
    core = ma.fields.Boolean(
        required=True, metadata={"description": "a core setting of the process, not the service's"}
    )


class AdminCheckSchema(ma.Schema):
    """One health check's own result."""

    name = ma.fields.String(required=True)
    description = ma.fields.String(required=True)
    status = ma.fields.String(required=True, metadata={"description": "ok or degraded"})
    detail = ma.fields.String(required=True)


class AdminHealthSchema(ma.Schema):
    """The service's health and each of its checks."""

    status = ma.fields.String(required=True, metadata={"description": "ok or degraded"})
    detail = ma.fields.String(required=True)
    checks = ma.fields.List(ma.fields.Nested(AdminCheckSchema), required=True)


class AdminOperationSchema(ma.Schema):
    """An operation and the state of its session."""

    name = ma.fields.String(required=True)
    kind = ma.fields.Enum(OpKind, by_value=True, required=True)
    state = ma.fields.Enum(OpState, by_value=True, required=True)
    success = ma.fields.Boolean(required=True, allow_none=True)
    description = ma.fields.String(required=True)


class AdminLogLineSchema(ma.Schema):
    """One record of the service's log."""

    ts = ma.fields.String(required=True, metadata={"description": "ISO 8601 UTC"})
    level = ma.fields.String(required=True)
    logger = ma.fields.String(required=True)
    message = ma.fields.String(required=True)


class AdminPanelSchema(ma.Schema):
    """A panel the service contributes to its admin page (see pyedge.admin.AdminPanel)."""

    title = ma.fields.String(required=True)
    description = ma.fields.String(required=True)
    source = ma.fields.String(
        required=True, metadata={"description": "path under the service's API to GET"}
    )
    columns = ma.fields.List(ma.fields.String(), required=True)
    key = ma.fields.String(required=True, metadata={"description": "the field naming a row"})
    edit = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "path template of a row's edit, e.g. sensors/{name}"},
    )
    method = ma.fields.String(required=True)
    role = ma.fields.String(required=True, metadata={"description": "the role that may edit"})
    form_schema = ma.fields.Dict(
        required=True, allow_none=True, metadata={"description": "JSON Schema of the edit form"}
    )


class AdminSchema(ma.Schema):
    """A service's admin view: settings in force, health, operations, log and panels."""

    slug = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    version = ma.fields.String(required=True)
    description = ma.fields.String(required=True)
    node = ma.fields.String(required=True)
    settings = ma.fields.List(ma.fields.Nested(AdminSettingSchema), required=True)
    health = ma.fields.Nested(AdminHealthSchema, required=True)
    operations = ma.fields.List(ma.fields.Nested(AdminOperationSchema), required=True)
    log = ma.fields.List(
        ma.fields.Nested(AdminLogLineSchema),
        required=True,
        metadata={"description": "the last records of the service's loggers, oldest first"},
    )
    panels = ma.fields.List(ma.fields.Nested(AdminPanelSchema), required=True)


_converter = OpenAPIConverter("3.0.3", lambda _schema: None, APISpec("params", "1", "3.0.3"))
fields.register(_converter)


def json_schema(schema: type[ma.Schema]) -> dict[str, Any]:
    """The JSON Schema of a schema: an operation's parameters (GET /ops), a panel's form."""
    result: dict[str, Any] = _converter.schema2jsonschema(schema())  # type: ignore[no-untyped-call]
    return result
