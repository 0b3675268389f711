"""edge-server schemas: health, the services tree and the nodes."""

import marshmallow as ma

from pyedge import OpKind, OpState

STATUSES = ("ok", "degraded")
# A remote service is also `offline`: its status, its will or its health check said so.
SERVICE_STATUSES = (*STATUSES, "offline")
MODES = ("local", "remote")


class ComponentHealthSchema(ma.Schema):
    """One service's health."""

    status = ma.fields.String(required=True, validate=ma.validate.OneOf(SERVICE_STATUSES))
    detail = ma.fields.String(required=True)


class MqttHealthSchema(ma.Schema):
    """The bus connection's health."""

    status = ma.fields.String(
        required=True, validate=ma.validate.OneOf(("connected", "disconnected"))
    )
    broker = ma.fields.String(required=True)
    detail = ma.fields.String(required=True)


class RemoteHealthSchema(ComponentHealthSchema):
    """A service serving on its own, as this edge-server sees it."""

    node = ma.fields.String(required=True)
    slug = ma.fields.String(required=True)


class HealthSchema(ma.Schema):
    """The node's health: ok only when the bus and every local service are."""

    status = ma.fields.String(required=True, validate=ma.validate.OneOf(STATUSES))
    node = ma.fields.String(required=True)
    version = ma.fields.String(required=True)
    mqtt = ma.fields.Nested(MqttHealthSchema, required=True)
    services = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.Nested(ComponentHealthSchema), required=True
    )
    remote = ma.fields.List(
        ma.fields.Nested(RemoteHealthSchema),
        metadata={
            "description": "services serving on their own (node and hub roles); an offline "
            "one does not degrade this node. Only for an authenticated caller: absent "
            "without credentials"
        },
    )


class OperationSummarySchema(ma.Schema):
    """An operation as the services tree lists it."""

    name = ma.fields.String(required=True)
    kind = ma.fields.Enum(OpKind, by_value=True, required=True)
    state = ma.fields.Enum(
        OpState,
        by_value=True,
        required=True,
        allow_none=True,
        metadata={"description": "null for a remote operation whose state is not known yet"},
    )
    success = ma.fields.Boolean(allow_none=True, required=True)


class ServiceSchema(ma.Schema):
    """A service in the services tree."""

    slug = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    version = ma.fields.String(required=True)
    description = ma.fields.String(required=True)
    mode = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf(MODES),
        metadata={"description": "local (mounted in-process) or remote (serving on its own)"},
    )
    node = ma.fields.String(required=True)
    url = ma.fields.String(
        required=True,
        metadata={"description": "its API on this server: /api/<slug> or /api/nodes/<node>/<slug>"},
    )
    health = ma.fields.Nested(ComponentHealthSchema, required=True)
    ops = ma.fields.List(ma.fields.Nested(OperationSummarySchema), required=True)


class NodeSchema(ma.Schema):
    """A node of the network, as the hub knows it."""

    node = ma.fields.String(required=True)
    machine = ma.fields.String(required=True, metadata={"description": "platform.machine()"})
    services = ma.fields.List(ma.fields.String(), required=True)
    last_seen = ma.fields.DateTime(required=True, metadata={"description": "ISO 8601 UTC"})
    status = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf(("online", "offline")),
        metadata={"description": "online when any of its services is"},
    )


class MemorySchema(ma.Schema):
    """Memory in bytes."""

    total = ma.fields.Integer(required=True)
    available = ma.fields.Integer(required=True)


class DiskSchema(ma.Schema):
    """The data dir's filesystem, in bytes."""

    path = ma.fields.String(required=True)
    total = ma.fields.Integer(required=True)
    free = ma.fields.Integer(required=True)


class DeviceSchema(ma.Schema):
    """The device's CPU, memory, disk and uptime (a figure the platform lacks is null)."""

    cpu_percent = ma.fields.Float(required=True, allow_none=True)
    cpus = ma.fields.Integer(required=True, allow_none=True)
    load = ma.fields.List(ma.fields.Float(), required=True, allow_none=True)
    memory = ma.fields.Nested(MemorySchema, required=True, allow_none=True)
    disk = ma.fields.Nested(DiskSchema, required=True)
    uptime = ma.fields.Float(required=True, allow_none=True, metadata={"description": "s"})
