"""container-manager schemas: query arguments and REST payloads (container specs: specs.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import marshmallow as ma

from container_manager.specs import NAME_RE
from pyedge import fields

MAX_TAIL = 10_000
# The engine reads 0 as "no limit": a time must be after the epoch to mean itself.
AFTER_EPOCH = ma.validate.Range(
    min=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), error="must be after 1970-01-01T00:00:01Z"
)


class ListArgs(ma.Schema):
    """Query of GET /containers."""

    all = ma.fields.Boolean(load_default=False, metadata={"description": "stopped ones too"})
    label = ma.fields.List(
        ma.fields.String(),
        load_default=list,
        metadata={"description": "key or key=value; repeat to require several"},
    )


class ForceArgs(ma.Schema):
    """Query of a removal."""

    force = ma.fields.Boolean(load_default=False)


class StopArgs(ma.Schema):
    """Query of stop and restart."""

    timeout = ma.fields.Integer(
        load_default=10,
        validate=ma.validate.Range(min=0, max=300),
        metadata={"description": "seconds to wait before killing"},
    )


class KillArgs(ma.Schema):
    """Query of kill."""

    signal = ma.fields.String(
        load_default="SIGKILL",
        validate=fields.FullMatch(r"^(SIG[A-Z0-9]+|[0-9]{1,2})$", error="a signal name or number"),
    )


class LogArgs(ma.Schema):
    """Query of GET /containers/<id>/logs."""

    tail = ma.fields.Integer(
        load_default=100,
        validate=ma.validate.Range(min=1, max=MAX_TAIL),
        metadata={"description": f"last lines, at most {MAX_TAIL}"},
    )
    since = ma.fields.AwareDateTime(load_default=None, validate=AFTER_EPOCH)
    until = ma.fields.AwareDateTime(load_default=None, validate=AFTER_EPOCH)
    timestamps = ma.fields.Boolean(load_default=False)


class StreamArgs(ma.Schema):
    """Query of GET /containers/<id>/logs/stream."""

    tail = ma.fields.Integer(
        load_default=0,
        validate=ma.validate.Range(min=0, max=MAX_TAIL),
        metadata={"description": "lines of history first (ignored when resuming)"},
    )


class EventArgs(ma.Schema):
    """Query of GET /events/stream."""

    all = ma.fields.Boolean(
        load_default=False, metadata={"description": "every object's events, not only managed"}
    )


class PortSchema(ma.Schema):
    """A published port."""

    ip = ma.fields.String()
    privateport = ma.fields.Integer()
    publicport = ma.fields.Integer()
    type = ma.fields.String()


class ContainerBaseSchema(ma.Schema):
    """What the listing and the inspect both show of a container."""

    id = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    image = ma.fields.String(allow_none=True)
    state = ma.fields.String(allow_none=True)
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    managed = ma.fields.Boolean(metadata={"description": "created by PyEdge"})
    system = ma.fields.Boolean(metadata={"description": "PyEdge's own: cannot be changed"})
    app = ma.fields.String(allow_none=True)


class ContainerSchema(ContainerBaseSchema):
    """A container as the listing shows it."""

    status = ma.fields.String(allow_none=True)
    created = ma.fields.String()
    ports = ma.fields.List(ma.fields.Nested(PortSchema))


class ContainerDetailSchema(ContainerBaseSchema):
    """A container inspected; environment values are redacted."""

    exit_code = ma.fields.Integer(allow_none=True)
    health = ma.fields.String(allow_none=True)
    restart_count = ma.fields.Integer()
    started_at = ma.fields.String(allow_none=True)
    finished_at = ma.fields.String(allow_none=True)
    attrs = ma.fields.Dict(metadata={"description": "the engine's inspect, Env values redacted"})


class StatsSchema(ma.Schema):
    """One sample of a container's resource use."""

    id = ma.fields.String()
    read_at = ma.fields.String(allow_none=True)
    cpu_percent = ma.fields.Float(
        allow_none=True, metadata={"description": "percent of one CPU, from the sample deltas"}
    )
    memory_bytes = ma.fields.Integer(allow_none=True)
    memory_limit_bytes = ma.fields.Integer(allow_none=True)
    memory_percent = ma.fields.Float(allow_none=True)
    network_rx_bytes = ma.fields.Integer()
    network_tx_bytes = ma.fields.Integer()
    block_read_bytes = ma.fields.Integer()
    block_write_bytes = ma.fields.Integer()
    pids = ma.fields.Integer(allow_none=True)


class LogLineSchema(ma.Schema):
    """One log line."""

    stream = ma.fields.String(metadata={"description": "stdout or stderr"})
    ts = ma.fields.String(metadata={"description": "the engine's RFC 3339 time (timestamps=true)"})
    text = ma.fields.String()


class LogsSchema(ma.Schema):
    """The last lines of a container's output."""

    id = ma.fields.String()
    lines = ma.fields.List(ma.fields.Nested(LogLineSchema))


class ImageSchema(ma.Schema):
    """An image."""

    id = ma.fields.String(required=True)
    tags = ma.fields.List(ma.fields.String())
    size = ma.fields.Integer()
    created = ma.fields.String()
    containers = ma.fields.Integer(metadata={"description": "containers using it"})
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), allow_none=True)


class ImageDetailSchema(ImageSchema):
    """An image inspected."""

    architecture = ma.fields.String(allow_none=True)
    os = ma.fields.String(allow_none=True)
    attrs = ma.fields.Dict()


class PruneArgs(ma.Schema):
    """Query of POST /images/prune."""

    all = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "every unused image, not only dangling (untagged) ones"},
    )


class PruneSchema(ma.Schema):
    """What a prune removed."""

    deleted = ma.fields.List(ma.fields.String())
    space_reclaimed = ma.fields.Integer()


class VolumeSchema(ma.Schema):
    """A volume."""

    name = ma.fields.String(required=True)
    driver = ma.fields.String()
    mountpoint = ma.fields.String()
    created = ma.fields.String(allow_none=True)
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), allow_none=True)


def no_reserved_labels(labels: dict[str, str]) -> None:
    """Labels starting with pyedge. are PyEdge's own (apps adopt what carries theirs)."""
    reserved = sorted(key for key in labels if key.startswith("pyedge."))
    if reserved:
        raise ma.ValidationError(f"reserved for PyEdge: {', '.join(reserved)}")


def user_labels() -> ma.fields.Dict:
    """Labels a user may set on what PyEdge creates (none starting with pyedge.)."""
    return ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.String(),
        load_default=dict,
        validate=no_reserved_labels,
        metadata={"x-propertyNames": {"not": {"pattern": "^pyedge\\."}}},
    )


class VolumeCreateSchema(ma.Schema):
    """POST /volumes."""

    name = ma.fields.String(
        required=True, validate=fields.FullMatch(NAME_RE, error="not a volume name")
    )
    # The engine's own driver only: it looks a plugin driver up for 15 s before it
    # answers that there is none, and nothing here installs or configures plugins.
    driver = ma.fields.String(load_default="local", validate=ma.validate.OneOf(["local"]))
    labels = user_labels()


class NetworkSchema(ma.Schema):
    """A network."""

    id = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    driver = ma.fields.String()
    scope = ma.fields.String()
    internal = ma.fields.Boolean()
    created = ma.fields.String(allow_none=True)
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), allow_none=True)


class NetworkCreateSchema(ma.Schema):
    """POST /networks."""

    name = ma.fields.String(
        required=True, validate=fields.FullMatch(NAME_RE, error="not a network name")
    )
    # bridge only: macvlan and ipvlan need options (a parent interface) not taken here,
    # overlay a swarm, and a plugin driver is looked up for 15 s before the refusal.
    driver = ma.fields.String(load_default="bridge", validate=ma.validate.OneOf(["bridge"]))
    internal = fields.Boolean(load_default=False)
    labels = user_labels()


class SystemSchema(ma.Schema):
    """The engine behind the container-manager."""

    engine_version = ma.fields.String()
    api_version = ma.fields.String(metadata={"description": "the engine's"})
    client_api_version = ma.fields.String(metadata={"description": "the negotiated one"})
    os = ma.fields.String()
    os_type = ma.fields.String()
    architecture = ma.fields.String()
    kernel = ma.fields.String()
    docker_root = ma.fields.String()
    disk_free_bytes = ma.fields.Integer(
        allow_none=True, metadata={"description": "free space of the data root, when local"}
    )
    containers = ma.fields.Integer()
    containers_running = ma.fields.Integer()
    images = ma.fields.Integer()
