"""Digital GPIO with gpiozero: an input (button, contact, pulse counter), an output (relay)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import marshmallow as ma
from gpiozero import DigitalInputDevice, DigitalOutputDevice, GPIOZeroError  # type: ignore[import-untyped]

from device_service.drivers.base import Actuator, Driver, DriverError, Reading

logger = logging.getLogger(__name__)


@contextmanager
def gpio_errors(pin: int) -> Iterator[None]:
    """Turn gpiozero's errors into DriverError naming the pin, in one place."""
    try:
        yield
    except GPIOZeroError as exc:
        raise DriverError(f"GPIO{pin}: {exc}") from exc


PIN = ma.fields.Integer(
    required=True,
    validate=ma.validate.Range(min=0),
    metadata={"description": "GPIO number (BCM numbering on a Raspberry Pi)"},
)


class GpioInOptions(ma.Schema):
    """Options of the gpio_in driver."""

    pin = PIN
    pull_up = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "pull the pin up (active when low) instead of down"},
    )
    mode = ma.fields.String(
        load_default="poll",
        validate=ma.validate.OneOf(["poll", "edge"]),
        metadata={"description": "poll: state only; edge: also count edges between reads"},
    )
    bounce_time = ma.fields.Float(
        load_default=None,
        validate=ma.validate.Range(min=0, min_inclusive=False),
        metadata={"description": "seconds to ignore changes after an edge (none: no debounce)"},
    )


class GpioOutOptions(ma.Schema):
    """Options of the gpio_out driver."""

    pin = PIN
    active_high = ma.fields.Boolean(
        load_default=True, metadata={"description": "on drives the pin high (false: low)"}
    )
    initial = ma.fields.Boolean(
        load_default=False, metadata={"description": "state set when the driver starts"}
    )


class GpioIn(Driver):
    """A digital input: "state" is True when active (high, or low with pull_up).

    In edge mode "edges" counts every change (both directions) since the driver started.
    """

    name = "gpio_in"
    Options = GpioInOptions
    quantities = {"state": "", "edges": ""}

    def __init__(self, *, pin_factory: Any = None, **options: Any) -> None:
        super().__init__(**options)
        self._edges = 0
        self._lock = threading.Lock()
        with gpio_errors(options["pin"]):
            self.device = DigitalInputDevice(
                options["pin"],
                pull_up=options["pull_up"],
                bounce_time=options["bounce_time"],
                pin_factory=pin_factory,
            )
        if options["mode"] == "edge":
            self.device.when_activated = self._count
            self.device.when_deactivated = self._count

    def _count(self) -> None:
        """gpiozero's callback, on its own thread, for each change."""
        with self._lock:
            self._edges += 1

    def read(self) -> Reading:
        """The pin's state now, and in edge mode the edges counted so far."""
        with gpio_errors(self.options["pin"]):
            reading: Reading = {"state": bool(self.device.is_active)}
        if self.options["mode"] == "edge":
            with self._lock:
                reading["edges"] = self._edges
        return reading

    def close(self) -> None:
        """Release the pin."""
        self.device.close()


class GpioOut(Actuator):
    """A digital output such as a relay or an LED: "state" True is on."""

    name = "gpio_out"
    Options = GpioOutOptions
    quantities = {"state": ""}

    def __init__(self, *, pin_factory: Any = None, **options: Any) -> None:
        super().__init__(**options)
        with gpio_errors(options["pin"]):
            self.device = DigitalOutputDevice(
                options["pin"],
                active_high=options["active_high"],
                initial_value=options["initial"],
                pin_factory=pin_factory,
            )

    def read(self) -> Reading:
        """Whether the output is on."""
        with gpio_errors(self.options["pin"]):
            return {"state": bool(self.device.is_active)}

    def write(self, state: bool) -> Reading:
        """Switch on (True) or off and return the state read back."""
        with gpio_errors(self.options["pin"]):
            self.device.value = bool(state)
        logger.debug("GPIO%s switched %s", self.options["pin"], "on" if state else "off")
        return self.read()

    def close(self) -> None:
        """Release the pin (gpiozero leaves it as it was or resets it to input)."""
        self.device.close()
