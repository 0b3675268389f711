"""The device: its sensors, their outbox and forwarder, and their availability on the bus."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from device_service.drivers.base import DriverCatalog, DriverError, Reading
from device_service.forwarder import Forwarder
from device_service.outbox import Outbox, OutboxError
from device_service.outbox import Reading as StoredReading
from device_service.sensors import Sensor, load_sensors
from pyedge import ServiceRuntime
from pyedge.operations import utc_now

logger = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"


class Device:
    """Everything the device-service owns in one process; built by its start hook."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.sensors = {
            sensor.name: sensor
            for sensor in load_sensors(
                settings["sensors"], settings["machine_type"], DriverCatalog()
            )
        }
        self.outbox = Outbox(
            runtime.data_dir / "device.sqlite3",
            max_rows=settings["outbox_max_rows"],
            max_age=settings["outbox_max_age"],
            policy=settings["outbox_policy"],
        )
        self.forwarder = Forwarder(
            self.outbox, runtime.bus, inflight=settings["inflight"], rate=settings["drain_rate"]
        )
        self.available: dict[str, bool | None] = dict.fromkeys(self.sensors)
        self.errors: dict[str, str] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.store_error: str | None = None
        # One reader per sensor at a time: the sampling loop and the `read` Task share them.
        self._locks = {name: threading.Lock() for name in self.sensors}
        runtime.bus.on_connect(self._publish_availability)

    def topic(self, sensor: str, *parts: str) -> str:
        """pyedge/<node>/device-service/sensors/<sensor>[/<parts>]."""
        return self.runtime.topic("sensors", sensor, *parts)

    def start(self) -> None:
        """Start forwarding what the outbox holds (a previous run's readings first)."""
        self.forwarder.start()

    def close(self) -> None:
        """Stop forwarding, release the drivers and close the outbox."""
        self.forwarder.stop()
        for sensor in self.sensors.values():
            try:
                sensor.driver.close()
            except Exception:
                logger.exception("closing driver of %s failed", sensor.name)
        self.outbox.close()

    def read(self, sensor: Sensor) -> Reading | None:
        """Read one sensor now; a failure marks it unavailable and returns None."""
        try:
            with self._locks[sensor.name]:
                raw = sensor.driver.read()
        except (DriverError, OSError, ValueError) as exc:
            self._set_available(sensor.name, False, f"{type(exc).__name__}: {exc}")
            return None
        self._set_available(sensor.name, True)
        return raw

    def sample(self, sensors: Sequence[Sensor]) -> int:
        """Read `sensors`, store their readings in one transaction, wake the forwarder."""
        batch = []
        for sensor in sensors:
            raw = self.read(sensor)
            if raw is None:
                continue
            # Timestamped at sampling time, not at publishing time.
            body = sensor.body(raw, utc_now())
            batch.append(StoredReading(sensor.name, self.topic(sensor.name), body, time.time()))
        if not batch:
            return 0
        try:
            seqs = self.outbox.append(batch)
        except OutboxError as exc:
            self.store_error = str(exc)
            logger.error("%s", exc)
            return 0
        self.store_error = None
        for reading, seq in zip(batch, seqs, strict=True):
            self.last[reading.sensor] = {**reading.body, "seq": seq}
        self.forwarder.wake()
        return len(batch)

    def health(self) -> str:
        """A one-line account; raises when readings are being lost or sensors are down."""
        problems = []
        if self.store_error:
            problems.append(f"outbox cannot store readings: {self.store_error}")
        if self.forwarder.error:
            problems.append(f"forwarder: {self.forwarder.error}")
        down = [
            f"{name} ({self.errors.get(name, '?')})"
            for name, ok in self.available.items()
            if ok is False
        ]
        if down:
            problems.append("unavailable: " + ", ".join(down))
        if problems:
            raise RuntimeError("; ".join(problems))
        stats = self.outbox.stats()
        return f"{len(self.sensors)} sensors; outbox depth {stats['depth']}"

    def _set_available(self, name: str, ok: bool, error: str = "") -> None:
        if ok:
            self.errors.pop(name, None)
        else:
            self.errors[name] = error
        if self.available[name] is ok:
            return
        self.available[name] = ok
        if not ok:
            logger.warning("sensor %s unavailable: %s", name, error)
        self.runtime.bus.publish(
            self.topic(name, "availability"), ONLINE if ok else OFFLINE, retain=True
        )

    def _publish_availability(self) -> None:
        for name, ok in list(self.available.items()):
            if ok is not None:
                self.runtime.bus.publish(
                    self.topic(name, "availability"), ONLINE if ok else OFFLINE, retain=True
                )
