"""edge-server schemas: health and the services tree."""

import marshmallow as ma

from pyedge import OpKind, OpState

STATUSES = ("ok", "degraded")


class ComponentHealthSchema(ma.Schema):
    """One service's health."""

    status = ma.fields.String(required=True, validate=ma.validate.OneOf(STATUSES))
    detail = ma.fields.String(required=True)


class MqttHealthSchema(ma.Schema):
    """The bus connection's health."""

    status = ma.fields.String(
        required=True, validate=ma.validate.OneOf(("connected", "disconnected"))
    )
    broker = ma.fields.String(required=True)
    detail = ma.fields.String(required=True)


class HealthSchema(ma.Schema):
    """The node's health: ok only when the bus and every service are."""

    status = ma.fields.String(required=True, validate=ma.validate.OneOf(STATUSES))
    node = ma.fields.String(required=True)
    version = ma.fields.String(required=True)
    mqtt = ma.fields.Nested(MqttHealthSchema, required=True)
    services = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.Nested(ComponentHealthSchema), required=True
    )


class OperationSummarySchema(ma.Schema):
    """An operation as the services tree lists it."""

    name = ma.fields.String(required=True)
    kind = ma.fields.Enum(OpKind, by_value=True, required=True)
    state = ma.fields.Enum(OpState, by_value=True, required=True)
    success = ma.fields.Boolean(allow_none=True, required=True)


class ServiceSchema(ma.Schema):
    """A service in the services tree."""

    slug = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    version = ma.fields.String(required=True)
    description = ma.fields.String(required=True)
    mode = ma.fields.String(required=True, metadata={"description": "local (mounted in-process)"})
    node = ma.fields.String(required=True)
    url = ma.fields.String(required=True)
    health = ma.fields.Nested(ComponentHealthSchema, required=True)
    ops = ma.fields.List(ma.fields.Nested(OperationSummarySchema), required=True)
