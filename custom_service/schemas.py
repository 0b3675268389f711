"""custom-service schemas: operation parameters and REST payloads."""

import marshmallow as ma


class SleepParams(ma.Schema):
    """Parameters of the sleep Task."""

    seconds = ma.fields.Float(
        required=True,
        validate=ma.validate.Range(min=0, max=3600, min_inclusive=False),
        metadata={"description": "how long to sleep, 0 < seconds <= 3600"},
    )


class HeartbeatParams(ma.Schema):
    """Parameters of the heartbeat Process."""

    interval = ma.fields.Float(
        load_default=1.0,
        # Bounded: a wait of years overflows the platform's time_t and ends the Process.
        validate=ma.validate.Range(min=0.1, max=86400),
        metadata={"description": "seconds between beats, 0.1 to 86400 (a day)"},
    )


class HelloArgs(ma.Schema):
    """Query of GET /hello."""

    name = ma.fields.String(load_default="world", validate=ma.validate.Length(min=1, max=64))


class HelloSchema(ma.Schema):
    """A greeting."""

    message = ma.fields.String(required=True)
    node = ma.fields.String(required=True)


class TicksArgs(ma.Schema):
    """Query of GET /ticks."""

    count = ma.fields.Integer(
        load_default=10,
        validate=ma.validate.Range(min=1, max=10000),
        metadata={"description": "how many events, 1 to 10000"},
    )
    interval = ma.fields.Float(
        load_default=1.0,
        validate=ma.validate.Range(min=0, max=60),
        metadata={"description": "seconds between events, 0 to 60"},
    )
