"""device-service REST resources: sensors, their history, and the outbox."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

from flask.views import MethodView
from flask_smorest import abort

from device_service.device import ActuatorError, Device
from device_service.schemas import (
    ActuatorSchema,
    ActuatorStateSchema,
    HistoryArgs,
    HistorySchema,
    OutboxSchema,
    SensorPatchSchema,
    SensorSchema,
)
from device_service.sensors import Sensor
from device_service.service import DEVICE, service
from pyedge.security import Role, requires

blp = service.blueprint


def current_device() -> Device:
    """The running device, or 503 while the service is not started."""
    device: Device | None = service.runtime().extras.get(DEVICE)
    if device is None:
        abort(HTTPStatus.SERVICE_UNAVAILABLE, message="device-service is not running")
    return device


def find_sensor(device: Device, name: str) -> Sensor:
    """The named sensor, or 404."""
    sensor = device.sensors.get(name)
    if sensor is None:
        abort(HTTPStatus.NOT_FOUND, message=f"no sensor {name!r}")
    return sensor


def describe(device: Device, sensor: Sensor) -> dict[str, Any]:
    """A sensor as the API shows it."""
    return {
        "name": sensor.name,
        "driver": sensor.driver_name,
        "interval": sensor.interval,
        "units": sensor.units,
        "device_class": sensor.device_class,
        "state_class": sensor.state_class,
        "offset": sensor.offset,
        "scale": sensor.scale,
        "options": sensor.options,
        "available": device.available[sensor.name],
        "error": device.errors.get(sensor.name),
        "topic": device.topic(sensor.name),
        "last": device.last.get(sensor.name),
    }


@blp.route("/sensors")
class Sensors(MethodView):
    @blp.response(200, SensorSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List the sensors with their availability and last reading."""
        device = current_device()
        return [describe(device, sensor) for sensor in device.sensors.values()]


@blp.route("/sensors/<name>")
class SensorResource(MethodView):
    @blp.response(200, SensorSchema)
    def get(self, name: str) -> dict[str, Any]:
        """Show a sensor: configuration, availability, last reading."""
        device = current_device()
        return describe(device, find_sensor(device, name))

    @blp.arguments(SensorPatchSchema)
    @blp.response(200, SensorSchema)
    def patch(self, changes: dict[str, Any], name: str) -> dict[str, Any]:
        """Change a sensor's interval or calibration until the next restart."""
        device = current_device()
        changed = dataclasses.replace(find_sensor(device, name), **changes)
        device.replace(name, changed)
        return describe(device, changed)


@blp.route("/sensors/<name>/history")
class SensorHistory(MethodView):
    @blp.arguments(HistoryArgs, location="query")
    @blp.response(200, HistorySchema)
    def get(self, args: dict[str, Any], name: str) -> dict[str, Any]:
        """A sensor's readings over time, averaged into at most `limit` points."""
        device = current_device()
        until = args["until"] or datetime.now(UTC)
        try:
            since = args["since"] or until - timedelta(hours=1)
            window = (since.timestamp(), until.timestamp())
        except (OverflowError, ValueError, OSError):
            abort(HTTPStatus.UNPROCESSABLE_ENTITY, message="since/until out of range")
        if since > until:
            abort(HTTPStatus.UNPROCESSABLE_ENTITY, message="since is after until")
        sensor = find_sensor(device, name)
        keys = ["value"] if sensor.single else list(sensor.units)
        points, downsampled = device.outbox.history(name, *window, args["limit"], keys)
        return {
            "sensor": name,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "downsampled": downsampled,
            "points": points,
        }


@blp.route("/outbox")
class OutboxResource(MethodView):
    @blp.response(200, OutboxSchema)
    def get(self) -> dict[str, Any]:
        """How many readings wait for the broker, and how many were drained or dropped."""
        device = current_device()
        return {**device.outbox.stats(), **device.forwarder.stats(), "unstored": device.unstored}


def actuator_state(device: Device, name: str) -> dict[str, Any]:
    """An actuator as the API shows it: its state as last switched or read."""
    topic = device.runtime.topic("actuators", name)
    return {"name": name, "state": device.actuator_states.get(name), "topic": topic}


@blp.route("/actuators")
class Actuators(MethodView):
    @blp.response(200, ActuatorSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List the actuators (relays, LEDs) with their last known state."""
        device = current_device()
        return [actuator_state(device, name) for name in device.actuators]


@blp.route("/actuators/<name>")
class ActuatorResource(MethodView):
    @requires(Role.OPERATOR)
    @blp.arguments(ActuatorStateSchema)
    @blp.response(200, ActuatorSchema)
    def put(self, body: dict[str, bool], name: str) -> dict[str, Any]:
        """Switch an actuator; its new state is echoed on MQTT too."""
        device = current_device()
        if name not in device.actuators:
            abort(HTTPStatus.NOT_FOUND, message=f"no actuator {name!r}")
        try:
            device.switch(name, body["state"])
        except ActuatorError as exc:
            abort(HTTPStatus.SERVICE_UNAVAILABLE, message=str(exc))
        return actuator_state(device, name)
