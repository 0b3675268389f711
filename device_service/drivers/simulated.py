"""Simulated sensor: a seeded random walk or a sine between two bounds, for demos and tests."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import marshmallow as ma

from device_service.drivers.base import Driver, Reading

logger = logging.getLogger(__name__)


class SimulatedOptions(ma.Schema):
    """Options of the simulated driver."""

    waveform = ma.fields.String(
        load_default="random_walk",
        validate=ma.validate.OneOf(["random_walk", "sine"]),
        metadata={"description": "random_walk or sine"},
    )
    seed = ma.fields.Integer(
        load_default=0, metadata={"description": "random-walk seed; equal seeds, equal values"}
    )
    minimum = ma.fields.Float(load_default=0.0, metadata={"description": "lowest value"})
    maximum = ma.fields.Float(load_default=100.0, metadata={"description": "highest value"})
    step = ma.fields.Float(
        load_default=1.0,
        validate=ma.validate.Range(min=0, min_inclusive=False),
        metadata={"description": "random walk: largest change per read, > 0"},
    )
    period = ma.fields.Float(
        load_default=60.0,
        validate=ma.validate.Range(min=0, min_inclusive=False),
        metadata={"description": "sine: seconds per cycle, > 0"},
    )
    unit = ma.fields.String(
        load_default="", metadata={"description": "unit of the value, e.g. °C (informative)"}
    )

    @ma.validates_schema
    def check_bounds(self, data: dict[str, Any], **_: Any) -> None:
        """The bounds must leave room to move."""
        if data["minimum"] >= data["maximum"]:
            raise ma.ValidationError("must be less than maximum", "minimum")


class Simulated(Driver):
    """A fake sensor whose one quantity "value" walks randomly or follows a sine.

    ``quantities`` stays {"value": ""} because units are per class; the configured unit is
    ``self.unit``, and the device-service takes the unit from the sensor's configuration.
    """

    name = "simulated"
    Options = SimulatedOptions
    quantities = {"value": ""}

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, **options: Any) -> None:
        super().__init__(**options)
        self.unit: str = options["unit"]
        self._low: float = options["minimum"]
        self._high: float = options["maximum"]
        self._clock = clock
        self._start = clock()
        self._random = random.Random(options["seed"])
        self._value = self._random.uniform(self._low, self._high)
        self._first = True

    def read(self) -> Reading:
        """The next value of the walk, or the sine at the current time."""
        if self.options["waveform"] == "sine":
            return {"value": self._sine()}
        return {"value": self._walk()}

    def _sine(self) -> float:
        """Middle of the bounds plus half their span times sin(2 pi t / period)."""
        middle = (self._low + self._high) / 2
        half = (self._high - self._low) / 2
        phase = 2 * math.pi * (self._clock() - self._start) / self.options["period"]
        return middle + half * math.sin(phase)

    def _walk(self) -> float:
        """One step of at most `step` either way, reflected back inside the bounds."""
        if self._first:
            self._first = False
            return self._value
        step: float = self.options["step"]
        value = self._value + self._random.uniform(-step, step)
        if value > self._high:
            value = 2 * self._high - value
        elif value < self._low:
            value = 2 * self._low - value
        self._value = min(max(value, self._low), self._high)
        return self._value
