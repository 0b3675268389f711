"""device-service: sensors to MQTT through a durable outbox; its operations and lifecycle."""

from __future__ import annotations

import time
from typing import Any

from device_service.config import SETTINGS
from device_service.device import Device
from device_service.schemas import PurgeParams, ReadParams, SensorPatchSchema
from pyedge import AdminPanel, EdgeService, OperationFailed, ServiceRuntime, Session
from pyedge.security import Role

service = EdgeService(
    "device-service",
    title="Device service",
    version="1.0.0",
    description="Sensors to MQTT with no reading lost, their history, and actuators.",
    settings=SETTINGS,
    import_name=__name__,
)

DEVICE = "device"
# The history is trimmed to its retention this often while sampling.
PURGE_EVERY_S = 600.0


def device_of(runtime: ServiceRuntime) -> Device:
    """The Device the start hook built for this runtime."""
    device: Device = runtime.extras[DEVICE]
    return device


@service.on_start
def open_device(runtime: ServiceRuntime) -> None:
    """Load the sensors, open the outbox and start forwarding what it holds."""
    device = Device(runtime)
    runtime.extras[DEVICE] = device
    device.start()


@service.on_stop
def close_device(runtime: ServiceRuntime) -> None:
    """Stop forwarding and close the outbox; unsent readings wait for the next start."""
    device = runtime.extras.pop(DEVICE, None)
    if device is not None:
        device.close()


def acquire(session: Session, params: dict[str, Any]) -> str:
    """Sample every sensor at its interval into the outbox, until stopped."""
    device = device_of(session.context)
    due = dict.fromkeys(device.sensors, time.monotonic())
    next_purge = time.monotonic()
    stored = 0
    while True:
        now = time.monotonic()
        for name, sensor in device.sensors.items():
            # An interval PATCHed shorter takes effect now, not at the old due time.
            due[name] = min(due[name], now + sensor.interval)
        ready = [device.sensors[name] for name, at in due.items() if at <= now]
        for sensor in ready:
            # Keep the cadence, but after a stall start afresh rather than catch up.
            due[sensor.name] = max(due[sensor.name] + sensor.interval, now)
        stored += device.sample(ready)
        if now >= next_purge:
            next_purge = now + PURGE_EVERY_S
            device.trim(session.context.settings["history_retention"] * 3600)
        session.update(readings=stored)
        if not session.sleep(max(0.0, min(due.values()) - time.monotonic())):
            return f"stopped after {stored} readings"


def read(session: Session, params: dict[str, Any]) -> str:
    """Read every sensor (or the named ones) now and return the values in data."""
    device = device_of(session.context)
    names = params["sensors"] or list(device.sensors)
    unknown = [name for name in names if name not in device.sensors]
    if unknown:
        raise OperationFailed(f"no sensor {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name in names:
        raw = device.read(device.sensors[name])
        values[name] = raw if raw is not None else {"error": device.errors.get(name)}
    session.update(values=values)
    return f"read {len(names)} sensors"


def purge_history(session: Session, params: dict[str, Any]) -> str:
    """Delete history older than `older_than` hours (default: the retention setting)."""
    runtime: ServiceRuntime = session.context
    hours = params["older_than"]
    if hours is None:
        hours = runtime.settings["history_retention"]
    removed = device_of(runtime).outbox.purge_history(time.time() - hours * 3600)
    session.update(removed=removed)
    return f"removed {removed} readings older than {hours:g} h"


def acquire_autostart(runtime: ServiceRuntime) -> dict[str, Any] | None:
    """Sample from the start unless the settings say not to."""
    return {} if runtime.settings["acquire_autostart"] else None


service.process("acquire", acquire, autostart=acquire_autostart)
service.task("read", read, params=ReadParams)
# Deleting history is a change to the node's data, not an operator's daily work.
service.task("purge_history", purge_history, params=PurgeParams, role=Role.ADMIN, destructive=True)

# The admin page's own section: each sensor's cadence and calibration, changed in place
# through PATCH /sensors/<name> (views.py) until the next restart.
service.admin_panel(
    AdminPanel(
        title="Sensors",
        description="Interval and calibration of each sensor (reading = raw * scale + offset). "
        "A change takes effect at once and lasts until the service restarts: the sensors "
        "file stays the source.",
        source="sensors",
        columns=("name", "driver", "interval", "offset", "scale", "available"),
        edit="sensors/{name}",
        form=SensorPatchSchema,
    )
)


@service.health_check
def sensors_and_outbox(runtime: ServiceRuntime) -> str:
    """Degraded while a sensor is unavailable or readings cannot be stored or sent."""
    device = runtime.extras.get(DEVICE)
    if device is None:
        return "not started"
    return device.health()
