"""Build drivers the way the device-service does: options loaded through the driver's schema."""

from __future__ import annotations

from typing import Any, TypeVar

from device_service.drivers.base import Driver

D = TypeVar("D", bound=Driver)


def make(cls: type[D], seams: dict[str, Any] | None = None, **raw: Any) -> D:
    """`cls` created from `raw` options validated by cls.Options, plus hardware seams."""
    return cls(**cls.Options().load(raw), **(seams or {}))
