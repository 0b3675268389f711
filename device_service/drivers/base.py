"""The driver contract: a small class per kind of hardware, created from validated options.

A driver is found by name through the entry-point group ``pyedge.drivers``. The
device-service validates a sensor's ``options`` with the driver's ``Options`` schema, creates
the driver once with the loaded options, and calls ``read()`` from one thread at its
interval. Everything a driver touches below this seam (sysfs files, an SMBus object,
gpiozero's pin factory) is injectable, so tests fake only the hardware, never the driver.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar

import marshmallow as ma

from pyedge import PyEdgeError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pyedge.drivers"

Value = float | int | bool | str
Reading = dict[str, Value]


class DriverError(PyEdgeError):
    """A driver could not read (or write) its hardware; the sensor becomes unavailable."""


class NoOptions(ma.Schema):
    """A driver that takes no options."""


class Driver(ABC):
    """Base of every driver.

    Subclasses set ``name`` (the entry-point name), ``quantities`` (the keys ``read()``
    returns, with their units) and ``Options``, and implement ``read()``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[ma.Schema]] = NoOptions
    # quantity -> unit ("" when unitless); a single-quantity driver uses the key "value".
    quantities: ClassVar[Mapping[str, str]] = {"value": ""}

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def read(self) -> Reading:
        """Read the hardware now; raises DriverError when it cannot."""

    def close(self) -> None:
        """Release the hardware (files, buses, pins); the default holds nothing."""
        return  # optional on purpose: most drivers open their files anew at each read


class Actuator(Driver):
    """A driver that can also be set: a relay, an LED."""

    @abstractmethod
    def write(self, state: bool) -> Reading:
        """Switch to `state` and return the reading after the change."""


class DriverCatalog(Mapping[str, type[Driver]]):
    """The installed drivers by name, each imported only when first asked for.

    A PC need not import gpiozero or smbus2 for sensors it does not have.
    """

    def __init__(self) -> None:
        self._entries = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
        self._loaded: dict[str, type[Driver]] = {}

    def __getitem__(self, name: str) -> type[Driver]:
        if name not in self._loaded:
            entry = self._entries[name]
            cls = entry.load()
            if not (isinstance(cls, type) and issubclass(cls, Driver)) or cls.name != name:
                raise PyEdgeError(f"entry point {entry.value} must name a Driver called {name!r}")
            self._loaded[name] = cls
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def installed_drivers() -> dict[str, type[Driver]]:
    """Every installed driver class, by name (all imported)."""
    return dict(DriverCatalog())
