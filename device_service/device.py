"""The device: its sensors, their outbox and forwarder, and their availability on the bus."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from device_service import metrics
from device_service.discovery import OFF, ON, Discovery
from device_service.drivers.base import Actuator, DriverCatalog, DriverError, Reading
from device_service.forwarder import Forwarder
from device_service.outbox import Outbox, OutboxError
from device_service.outbox import Reading as StoredReading
from device_service.sensors import Sensor, load_sensors
from pyedge import ServiceRuntime
from pyedge.operations import utc_now

logger = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
ANNOUNCED = "discovery.announced"
# The kind a refused actuator command is counted as (pyedge_mqtt_rejected_total).
ACTUATOR_SET = "actuator_set"


class ActuatorError(Exception):
    """A request to switch an actuator that is unknown or cannot be switched."""


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
        self.refused_ticks = 0  # sampling ticks the outbox refused since the last success
        # Readings sampled that the store refused (a full disk): never stored, so never
        # given a seq; counted in memory, since the store itself cannot count them.
        self.unstored = 0
        # One reader per sensor at a time: the sampling loop and the `read` Task share them.
        self._locks = {name: threading.Lock() for name in self.sensors}
        self._availability_lock = threading.Lock()
        self.actuators = {
            name: sensor
            for name, sensor in self.sensors.items()
            if isinstance(sensor.driver, Actuator)
        }
        # Each actuator's state as last switched or read, echoed retained on MQTT.
        self.actuator_states: dict[str, bool] = {}
        # With discovery off it still runs, with no entities: what an earlier run
        # announced is cleared, so that Home Assistant keeps no ghosts.
        self.discovery = Discovery(
            runtime,
            list(self.sensors.values()) if settings["discovery"] else [],
            settings["discovery_prefix"],
            set(self.outbox.get_state(ANNOUNCED, [])),
        )
        runtime.bus.on_connect(self._on_connect)
        self._collector = runtime.metrics.register(functools.partial(metrics.families, self))

    def topic(self, sensor: str, *parts: str) -> str:
        """pyedge/<node>/device-service/sensors/<sensor>[/<parts>]."""
        return self.runtime.topic("sensors", sensor, *parts)

    def start(self) -> None:
        """Start forwarding (a previous run's readings first), announce, accept commands."""
        self.forwarder.start()
        bus = self.runtime.bus
        bus.subscribe(self.runtime.topic("actuators", "+", "set"), self._on_set)
        self.discovery.start()
        self.outbox.set_state(ANNOUNCED, self.discovery.remembered())
        for name in self.actuators:
            self._echo(name)

    def switch(self, name: str, state: bool) -> bool:
        """Switch an actuator and echo its new state; raises ActuatorError."""
        sensor = self.actuators.get(name)
        if sensor is None:
            raise ActuatorError(f"no actuator {name!r}")
        driver = sensor.driver
        assert isinstance(driver, Actuator)
        try:
            with self._locks[name]:
                reading = driver.write(state)
                new_state = bool(reading.get("state", state))
                # Echoed under the same lock: the retained state is the pin's last one.
                self._echo(name, new_state)
        except (DriverError, OSError) as exc:
            self._set_available(name, False, f"{type(exc).__name__}: {exc}")
            raise ActuatorError(f"{name}: {exc}") from exc
        return new_state

    def _echo(self, name: str, state: bool | None = None) -> None:
        if state is None:
            raw = self.read(self.actuators[name])
            if raw is None:
                return
            state = bool(raw.get("state"))
        self.actuator_states[name] = state
        self.runtime.bus.publish(
            self.runtime.topic("actuators", name), ON if state else OFF, retain=True
        )

    def _on_set(self, message: Any) -> None:
        name = message.topic.split("/")[-2]
        reject = self.runtime.metrics.reject
        if name not in self.actuators:
            reject(
                ACTUATOR_SET, message.topic, message.payload, f"no actuator {name!r}", log=logger
            )
            return
        try:
            state = parse_switch(message.payload)
        except ValueError as exc:
            reject(ACTUATOR_SET, message.topic, message.payload, exc, log=logger)
            return
        try:
            self.switch(name, state)
        except ActuatorError as exc:  # the hardware's failure, not the command's
            logger.warning("command on %s failed: %s", message.topic, exc)

    def _on_connect(self) -> None:
        self._publish_availability()
        self.discovery.announce()

    def close(self) -> None:
        """Stop forwarding, release the drivers and close the outbox."""
        self.runtime.metrics.unregister(self._collector)
        self.forwarder.stop()
        self.outbox.set_state(ANNOUNCED, self.discovery.remembered())
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
        except Exception as exc:  # a plugin may raise anything: only its sensor suffers
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
            try:
                # Timestamped at sampling time, not at publishing time.
                body = sensor.body(raw, utc_now())
            except ValueError as exc:  # e.g. a calibration that overflows
                self._set_available(sensor.name, False, str(exc))
                continue
            batch.append(StoredReading(sensor.name, self.topic(sensor.name), body, time.time()))
        if not batch:
            return 0
        try:
            seqs = self.outbox.append(batch)
        except OutboxError as exc:
            self._store_failed(exc)
            self.unstored += len(batch)
            return 0
        if self.store_error is not None:
            logger.warning("outbox stores readings again (%d ticks refused)", self.refused_ticks)
            self.store_error = None
            self.refused_ticks = 0
        for reading, seq in zip(batch, seqs, strict=True):
            self.last[reading.sensor] = {**reading.body, "seq": seq}
        self.forwarder.wake()
        return len(batch)

    def trim(self, history_retention: float) -> None:
        """Drop history past its retention and outbox rows past their maximum age."""
        try:
            self.outbox.purge_history(time.time() - history_retention)
            self.outbox.expire()
        except OutboxError as exc:  # a full disk must not stop the sampling
            self._store_failed(exc)

    def _store_failed(self, exc: OutboxError) -> None:
        # Logged when it starts or changes, not per tick: a full disk would otherwise
        # write 25 lines a second to a log that is often on that same disk.
        if str(exc) != self.store_error:
            logger.error("%s", exc)
        self.store_error = str(exc)
        self.refused_ticks += 1

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
        # One lock for the change and its announcement: the sampling loop, the read Task,
        # the API and the MQTT thread all get here, and the retained state must be the last.
        with self._availability_lock:
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
        with self._availability_lock:
            for name, ok in self.available.items():
                if ok is not None:
                    self.runtime.bus.publish(
                        self.topic(name, "availability"), ONLINE if ok else OFFLINE, retain=True
                    )

    def replace(self, name: str, sensor: Sensor) -> None:
        """Swap in a changed sensor at once, so no reading mixes old and new settings."""
        self.sensors[name] = sensor


def parse_switch(payload: bytes) -> bool:
    """ON/OFF (any case), true/false, 1/0, or JSON {"state": ...}; raises ValueError."""
    text = payload.decode(errors="replace").strip()
    words = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
    if text.lower() in words:
        return words[text.lower()]
    problem = f'expected ON, OFF or {{"state": true|false}}, got {text[:40]!r}'
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
        raise ValueError(problem) from None
    if isinstance(value, dict) and isinstance(value.get("state"), bool | str):
        return parse_switch(str(value["state"]).encode())
    raise ValueError(problem)
