"""Schemas of the operation endpoints every service gets."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from apispec import APISpec
from apispec.ext.marshmallow.openapi import OpenAPIConverter

from pyedge.operations import OpKind, OpState

MAX_WAIT_S = 60.0


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


_converter = OpenAPIConverter("3.0.3", lambda _schema: None, APISpec("params", "1", "3.0.3"))


def json_schema(schema: type[ma.Schema]) -> dict[str, Any]:
    """The JSON Schema of an operation's parameters, as GET /ops shows it."""
    result: dict[str, Any] = _converter.schema2jsonschema(schema())  # type: ignore[no-untyped-call]
    return result
