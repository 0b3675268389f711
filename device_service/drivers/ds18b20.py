"""DS18B20 1-wire thermometer, read through the Linux w1-therm sysfs file w1_slave."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import marshmallow as ma

from device_service.drivers.base import Driver, DriverError, Reading

logger = logging.getLogger(__name__)

# The scratchpad holds 85 °C after power-on until a conversion completes.
POWER_ON_RESET = 85000


class DS18B20Options(ma.Schema):
    """Options of the ds18b20 driver."""

    root = ma.fields.String(
        load_default="/sys", metadata={"description": "sysfs mount point (tests use a copy)"}
    )
    device = ma.fields.String(
        load_default=None,
        validate=ma.validate.Regexp(r"^[0-9a-f]{2}-[0-9a-f]{12}$"),
        metadata={"description": "1-wire id such as 28-0316a2795dff; none: the first 28-*"},
    )


class DS18B20(Driver):
    """Temperature in °C from one DS18B20 on the 1-wire bus (w1-gpio and w1-therm loaded)."""

    name = "ds18b20"
    Options = DS18B20Options
    quantities = {"temperature": "°C"}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.devices = Path(options["root"]) / "bus" / "w1" / "devices"

    def read(self) -> Reading:
        """Read w1_slave; a failed CRC, the 85 °C reset value or no sensor raise DriverError."""
        path = self._device() / "w1_slave"
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise DriverError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return {"temperature": parse_w1_slave(text, path)}

    def _device(self) -> Path:
        """The configured sensor's directory, or the first DS18B20 found."""
        device: str | None = self.options["device"]
        if device:
            return self.devices / device
        found = sorted(self.devices.glob("28-*"))
        if not found:
            raise DriverError(f"no DS18B20 (28-*) under {self.devices}")
        return found[0]


def parse_w1_slave(text: str, path: Path | str = "w1_slave") -> float:
    """°C from the two lines of w1_slave: "... crc=xx YES" then "... t=21375"."""
    lines = text.strip().splitlines()
    if len(lines) < 2 or "crc=" not in lines[0] or "t=" not in lines[1]:
        raise DriverError(f"{path}: unexpected content {text!r}")
    if not lines[0].rstrip().endswith("YES"):
        raise DriverError(f"{path}: CRC check failed")
    scratchpad = lines[0].split(":")[0].split()
    if scratchpad and all(byte == "00" for byte in scratchpad):
        # A real scratchpad has the config register's low bits set: this is no sensor.
        raise DriverError(f"{path}: empty scratchpad, sensor disconnected?")
    try:
        millidegrees = int(lines[1].rsplit("t=", 1)[1])
    except ValueError as exc:
        raise DriverError(f"{path}: bad temperature in {lines[1]!r}") from exc
    if millidegrees == POWER_ON_RESET:
        raise DriverError(f"{path}: 85 °C power-on reset value, no conversion yet")
    return millidegrees / 1000
