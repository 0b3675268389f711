"""App specs (a documented subset of compose) and the apps API's payloads.

An app is `{"services": {<name>: <service>}}`. A service is a container spec
(specs.ContainerSpecSchema: image, command, entrypoint, environment, ports, volumes,
restart, healthcheck, labels, limits, ...) plus `depends_on`, a list of services of the
same app that are created and started first. Compose fields outside this subset (build,
deploy, networks, extends, ...) are validation errors, not silently ignored.

Two choices differ from a lone container's spec:

- `restart` defaults to "unless-stopped": a deployed app is expected to stay up. The
  reconciler, not the engine, does the restarting, with crash-loop backoff; "always" and
  "unless-stopped" both restart whatever ended the container (the app's desired state is
  running: stop a service by changing the spec), "on-failure[:N]" only a non-zero exit
  (at most N times), "no" never.
- A named volume `data` of app `shop` is the engine volume `shop_data`, as compose
  prefixes them; bind mounts are host paths and stay as given (the policy checks them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import marshmallow as ma

from container_manager.specs import RESTART_RE, ContainerSpecSchema
from pyedge import fields

# App and service names: they become parts of container, network and volume names.
APP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
NAME_ERROR = "lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 63"


class DependencyCycle(ValueError):
    """depends_on goes round in a circle; `cycle` lists it, first name repeated last."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__("dependency cycle: " + " -> ".join(cycle))
        self.cycle = cycle


def dependency_order(depends_on: Mapping[str, Sequence[str]]) -> list[str]:
    """Every service after its dependencies, otherwise in the spec's order.

    Raises DependencyCycle naming the first cycle found. Names a service depends on that
    are not keys are ignored here (the schema reports them).
    """
    order: list[str] = []
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in path:
            raise DependencyCycle([*path[path.index(name) :], name])
        path.append(name)
        for dependency in depends_on[name]:
            if dependency in depends_on:
                visit(dependency)
        path.pop()
        done.add(name)
        order.append(name)

    for name in depends_on:
        visit(name)
    return order


class AppServiceSchema(ContainerSpecSchema):
    """One service of an app: a container spec plus the services it depends on."""

    restart = ma.fields.String(
        load_default="unless-stopped",
        validate=fields.FullMatch(
            RESTART_RE, error="restart is no, always, unless-stopped or on-failure[:N]"
        ),
        metadata={"description": "who restarts it is the reconciler, with backoff"},
    )
    depends_on = ma.fields.List(
        ma.fields.String(validate=fields.FullMatch(APP_NAME_RE, error=NAME_ERROR)),
        load_default=list,
        metadata={"description": "services of this app created and started first"},
    )


class AppSpecSchema(ma.Schema):
    """An app: its services by name (a subset of a compose file's `services`)."""

    services = ma.fields.Dict(
        keys=ma.fields.String(validate=fields.FullMatch(APP_NAME_RE, error=NAME_ERROR)),
        values=ma.fields.Nested(AppServiceSchema),
        required=True,
        validate=ma.validate.Length(min=1, error="an app has at least one service"),
        metadata={"minProperties": 1},
    )

    @ma.validates_schema
    def check_dependencies(self, data: dict[str, Any], **kwargs: Any) -> None:
        """Every depends_on names a service of the app, and they form no cycle."""
        services = data["services"]
        unknown = {
            name: {"depends_on": [f"{dep!r} is not a service of this app" for dep in missing]}
            for name, spec in services.items()
            if (missing := [dep for dep in spec["depends_on"] if dep not in services])
        }
        if unknown:
            raise ma.ValidationError({"services": unknown})
        try:
            dependency_order({name: spec["depends_on"] for name, spec in services.items()})
        except DependencyCycle as exc:
            raise ma.ValidationError(str(exc), field_name="services") from exc


def load_spec(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and load a raw app spec; raises marshmallow.ValidationError."""
    loaded: dict[str, Any] = AppSpecSchema().load(raw)
    return loaded


class ApplyArgs(ma.Schema):
    """Query of PUT /apps/<name> and POST /apps/<name>/plan."""

    force = ma.fields.Boolean(
        load_default=False,
        metadata={
            "description": "replace containers of the target names that PyEdge did not create,"
            " and adopt such networks and volumes as they are (never another app's)"
        },
    )


class DeleteArgs(ma.Schema):
    """Query of DELETE /apps/<name>."""

    volumes = ma.fields.Boolean(
        load_default=False,
        metadata={
            "description": "remove the app's named volumes too (those it created; never an"
            " adopted one)"
        },
    )


class StepSchema(ma.Schema):
    """One step of a plan."""

    action = ma.fields.String(
        metadata={
            "description": "create, start, stop (denied by the policy), recreate, remove,"
            " create_network or create_volume"
        }
    )
    service = ma.fields.String()
    network = ma.fields.String()
    volume = ma.fields.String()
    container = ma.fields.String(metadata={"description": "the container the step replaces"})
    reason = ma.fields.String()


class ViolationSchema(ma.Schema):
    """One reason the security policy denies a spec."""

    field = ma.fields.String()
    value = ma.fields.String()
    reason = ma.fields.String()


class ConflictSchema(ma.Schema):
    """An engine object in the app's way that PyEdge will not change or use on its own."""

    service = ma.fields.String()
    network = ma.fields.String()
    volume = ma.fields.String()
    container = ma.fields.String(metadata={"description": "its name"})
    id = ma.fields.String()
    reason = ma.fields.String()
    forceable = ma.fields.Boolean(
        metadata={
            "description": "force=true replaces the container, or adopts the network or volume"
        }
    )


class PlanSchema(ma.Schema):
    """What applying a spec would do, changing nothing."""

    app = ma.fields.String()
    steps = ma.fields.List(ma.fields.Nested(StepSchema))
    violations = ma.fields.List(ma.fields.Nested(ViolationSchema))
    conflicts = ma.fields.List(ma.fields.Nested(ConflictSchema))


class ServiceStateSchema(ma.Schema):
    """One service: desired against actual, and what the reconciler knows of it."""

    desired_image = ma.fields.String()
    image = ma.fields.String(allow_none=True, metadata={"description": "the container's"})
    container_id = ma.fields.String(allow_none=True)
    container_name = ma.fields.String()
    state = ma.fields.String(
        allow_none=True, metadata={"description": "the engine's: running, exited, ... or null"}
    )
    health = ma.fields.String(allow_none=True)
    exit_code = ma.fields.Integer(allow_none=True)
    up_to_date = ma.fields.Boolean(metadata={"description": "created from the current spec"})
    restart_count = ma.fields.Integer(metadata={"description": "restarts by the reconciler"})
    failures = ma.fields.Integer(metadata={"description": "crashes in a row (ran < 10 s)"})
    backoff = ma.fields.Float(metadata={"description": "seconds of the current restart wait"})
    status = ma.fields.String(
        metadata={
            "description": "running, converging, exited (not to be restarted), degraded "
            "(crash-looping, or its spec refused before reaching the engine), conflict (a "
            "container, network or volume in the way) or denied (by the policy: stopped)"
        }
    )
    last_error = ma.fields.String(allow_none=True)


class AppSchema(ma.Schema):
    """An app: its desired state's version and how far the engine is from it."""

    name = ma.fields.String()
    generation = ma.fields.Integer(metadata={"description": "grows with each changed spec"})
    updated_at = ma.fields.String()
    status = ma.fields.String(metadata={"description": "running, degraded, converging or stopped"})
    error = ma.fields.String(
        allow_none=True,
        metadata={"description": "why its last pass failed as a whole (then it is degraded)"},
    )
    services = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Nested(ServiceStateSchema))


class AppDetailSchema(AppSchema):
    """An app with its spec as it was given."""

    spec = ma.fields.Dict()
    adopted = ma.fields.List(
        ma.fields.String(),
        metadata={
            "description": "networks and volumes PyEdge did not create that the app uses"
            " (adopted with force=true); nothing removes them"
        },
    )
