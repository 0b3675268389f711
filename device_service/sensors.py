"""Which sensors run: a TOML file of [sensors.<name>] tables, or defaults by machine type."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import marshmallow as ma

from device_service.drivers.base import Driver, Reading
from pyedge import ConfigError

SENSOR_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_INTERVAL = 7 * 24 * 3600.0


class SensorSchema(ma.Schema):
    """One [sensors.<name>] table."""

    class Meta:
        unknown = ma.RAISE

    driver = ma.fields.String(required=True)
    interval = ma.fields.Float(load_default=10.0, validate=ma.validate.Range(0.01, MAX_INTERVAL))
    unit = ma.fields.String(load_default=None, allow_none=True)
    device_class = ma.fields.String(load_default=None, allow_none=True)
    state_class = ma.fields.String(
        load_default="measurement",
        allow_none=True,
        validate=ma.validate.OneOf(["measurement", "total", "total_increasing"]),
    )
    offset = ma.fields.Float(load_default=0.0, validate=ma.validate.Range(-1e9, 1e9))
    scale = ma.fields.Float(load_default=1.0, validate=ma.validate.Range(-1e9, 1e9))
    options = ma.fields.Dict(keys=ma.fields.String(), load_default=dict)


@dataclass
class Sensor:
    """A configured sensor: its driver, schedule, units and calibration."""

    name: str
    driver_name: str
    driver: Driver
    interval: float
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = "measurement"
    offset: float = 0.0
    scale: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def units(self) -> dict[str, str]:
        """Each quantity's unit; the sensor's `unit` names the single quantity's."""
        units = dict(self.driver.quantities)
        if self.unit is not None and len(units) == 1:
            units = {key: self.unit for key in units}
        return units

    @property
    def single(self) -> bool:
        """True when the driver measures one quantity: published as value and unit."""
        return len(self.driver.quantities) == 1

    def body(self, raw: Reading, ts: str) -> dict[str, Any]:
        """The published JSON body (without seq) of a raw reading, calibrated.

        One quantity: {"value", "unit", "ts"}; several: one key each, plus "units".
        """
        values = {key: self.calibrate(value) for key, value in raw.items()}
        units = self.units
        if self.single and len(values) == 1:
            ((key, value),) = values.items()
            return {"value": value, "unit": units.get(key, ""), "ts": ts}
        return {**values, "units": {k: units.get(k, "") for k in values}, "ts": ts}

    def calibrate(self, value: Any) -> Any:
        """value * scale + offset, for numbers (booleans and text pass unchanged)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        result = (
            value if self.scale == 1.0 and self.offset == 0.0 else value * self.scale + self.offset
        )
        if not math.isfinite(result):
            raise ValueError(f"{value!r} * {self.scale} + {self.offset} is not a finite number")
        return result if result is value else round(result, 6)


DEFAULT_SENSORS: dict[str, dict[str, dict[str, Any]]] = {
    "pc": {
        "host": {"driver": "host", "interval": 10.0},
        "room_temperature": {
            "driver": "simulated",
            "interval": 5.0,
            "unit": "°C",
            "device_class": "temperature",
            "options": {"waveform": "sine", "minimum": 18.0, "maximum": 24.0, "period": 600},
        },
        "room_humidity": {
            "driver": "simulated",
            "interval": 5.0,
            "unit": "%",
            "device_class": "humidity",
            "options": {"waveform": "random_walk", "minimum": 30.0, "maximum": 60.0, "seed": 1},
        },
    },
    "rpi": {"host": {"driver": "host", "interval": 10.0}},
}


def default_tables(machine_type: str) -> dict[str, dict[str, Any]]:
    """The sensors run without a sensors file: host (+ simulated on a PC).

    The host driver reads Linux's /proc and /sys, so a Mac or Windows PC gets the
    simulated sensors alone rather than a sensor that can never read.
    """
    if machine_type == "rpi":
        return DEFAULT_SENSORS["rpi"]
    tables = DEFAULT_SENSORS["pc"]
    if machine_type != "pc_linux":
        tables = {name: table for name, table in tables.items() if table["driver"] != "host"}
    return tables


def load_sensors(
    file: Path | None, machine_type: str, drivers: Mapping[str, type[Driver]]
) -> list[Sensor]:
    """Build the sensors from `file` (or the defaults); errors name file, sensor and key."""
    source = str(file) if file else f"defaults for {machine_type}"
    tables = _read(file) if file else default_tables(machine_type)
    return [_sensor(name, table, drivers, source) for name, table in tables.items()]


def _read(file: Path) -> dict[str, dict[str, Any]]:
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("EDGE_SENSORS", str(file), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("EDGE_SENSORS", str(file), f"invalid TOML: {exc}") from exc
    unknown = set(data) - {"sensors"}
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), str(file), "expected only [sensors.<name>]")
    sensors = data.get("sensors", {})
    for name, table in sensors.items():
        if not isinstance(table, dict):
            raise ConfigError(f"sensors.{name}", str(file), "expected a table")
    return sensors


def _sensor(
    name: str, table: dict[str, Any], drivers: Mapping[str, type[Driver]], source: str
) -> Sensor:
    where = f"[sensors.{name}]"
    if not SENSOR_NAME_RE.match(name):
        raise ConfigError(where, source, "a sensor name is lowercase letters, digits, '_', '-'")
    try:
        spec = SensorSchema().load(table)
    except ma.ValidationError as exc:
        key, problem = _first_error(exc.messages)
        raise ConfigError(f"{where} {key}", source, problem) from exc
    driver_cls = drivers.get(spec["driver"])
    if driver_cls is None:
        raise ConfigError(
            f"{where} driver",
            source,
            f"no driver {spec['driver']!r} (installed: {', '.join(sorted(drivers))})",
        )
    try:
        options = driver_cls.Options().load(spec["options"])
    except ma.ValidationError as exc:
        key, problem = _first_error(exc.messages)
        raise ConfigError(f"{where} options.{key}", source, problem) from exc
    try:
        driver = driver_cls(**options)
    except Exception as exc:  # the driver could not open its hardware: say which sensor
        raise ConfigError(where, source, f"driver {spec['driver']} failed to start: {exc}") from exc
    return Sensor(
        name=name,
        driver_name=spec["driver"],
        driver=driver,
        interval=spec["interval"],
        unit=spec["unit"],
        device_class=spec["device_class"],
        state_class=spec["state_class"],
        offset=spec["offset"],
        scale=spec["scale"],
        options=dict(spec["options"]),
    )


def _first_error(messages: Any) -> tuple[str, str]:
    if isinstance(messages, dict) and messages:
        key, value = next(iter(messages.items()))
        text = "; ".join(value) if isinstance(value, list) else str(value)
        return str(key), text
    return "?", str(messages)
