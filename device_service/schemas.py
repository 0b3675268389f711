"""device-service schemas: operation parameters and REST payloads."""

from datetime import UTC

import marshmallow as ma

from pyedge import fields


class ReadParams(ma.Schema):
    """Parameters of the read Task."""

    sensors = ma.fields.List(
        ma.fields.String(),
        load_default=None,
        allow_none=True,
        metadata={"description": "sensor names; all when omitted"},
    )


class PurgeParams(ma.Schema):
    """Parameters of the purge_history Task."""

    older_than = ma.fields.Float(
        load_default=None,
        allow_none=True,
        validate=ma.validate.Range(min=0),
        metadata={"description": "hours; default: the history retention setting"},
    )


class OutboxSchema(ma.Schema):
    """The outbox: how much waits for the broker, and what left it."""

    depth = ma.fields.Integer(required=True, metadata={"description": "readings waiting"})
    oldest_age = ma.fields.Float(
        required=True, allow_none=True, metadata={"description": "seconds the oldest waits"}
    )
    drained = ma.fields.Integer(required=True, metadata={"description": "acknowledged, ever"})
    dropped = ma.fields.Integer(required=True, metadata={"description": "given up, ever"})
    unstored = ma.fields.Integer(
        required=True,
        metadata={"description": "sampled but refused by the store (a full disk), this run"},
    )
    max_rows = ma.fields.Integer(required=True)
    policy = ma.fields.String(required=True)
    in_flight = ma.fields.Integer(required=True, metadata={"description": "published, unacked"})
    error = ma.fields.String(required=True, allow_none=True)


class SensorSchema(ma.Schema):
    """A sensor: its configuration, availability and last reading."""

    name = ma.fields.String(required=True)
    driver = ma.fields.String(required=True)
    interval = ma.fields.Float(required=True)
    units = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), required=True)
    device_class = ma.fields.String(required=True, allow_none=True)
    state_class = ma.fields.String(required=True, allow_none=True)
    offset = ma.fields.Float(required=True)
    scale = ma.fields.Float(required=True)
    options = ma.fields.Dict(required=True)
    available = ma.fields.Boolean(required=True, allow_none=True)
    error = ma.fields.String(required=True, allow_none=True)
    topic = ma.fields.String(required=True)
    last = ma.fields.Dict(required=True, allow_none=True)


class SensorPatchSchema(ma.Schema):
    """What PATCH may change on a running sensor (until restart; the file is the source)."""

    class Meta:
        unknown = ma.RAISE

    interval = ma.fields.Float(validate=ma.validate.Range(0.01, 7 * 24 * 3600.0))
    offset = ma.fields.Float(validate=ma.validate.Range(-1e9, 1e9))
    scale = ma.fields.Float(validate=ma.validate.Range(-1e9, 1e9))


class HistoryArgs(ma.Schema):
    """Which part of a sensor's history, and how much of it."""

    since = ma.fields.AwareDateTime(load_default=None, allow_none=True, default_timezone=UTC)
    until = ma.fields.AwareDateTime(load_default=None, allow_none=True, default_timezone=UTC)
    limit = ma.fields.Integer(load_default=500, validate=ma.validate.Range(min=1, max=10000))


class HistoryPointSchema(ma.Schema):
    """One point of a sensor's history (an average when downsampled)."""

    ts = ma.fields.String(required=True)
    values = ma.fields.Dict(required=True)
    count = ma.fields.Integer(required=True, metadata={"description": "readings averaged"})


class HistorySchema(ma.Schema):
    """A sensor's history between two times."""

    sensor = ma.fields.String(required=True)
    since = ma.fields.String(required=True)
    until = ma.fields.String(required=True)
    downsampled = ma.fields.Boolean(required=True)
    points = ma.fields.List(ma.fields.Nested(HistoryPointSchema), required=True)


class ActuatorStateSchema(ma.Schema):
    """The state to switch an actuator to."""

    class Meta:
        unknown = ma.RAISE

    state = fields.Boolean(required=True)


class ActuatorSchema(ma.Schema):
    """An actuator and its state."""

    name = ma.fields.String(required=True)
    state = ma.fields.Boolean(required=True, allow_none=True)
    topic = ma.fields.String(required=True, metadata={"description": "where its state is echoed"})
