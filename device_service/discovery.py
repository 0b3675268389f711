"""Home Assistant MQTT discovery: one retained config per entity, none left behind."""

from __future__ import annotations

import json
import logging
from typing import Any

from device_service.drivers.base import Actuator
from device_service.sensors import Sensor
from pyedge import ServiceRuntime, __version__

logger = logging.getLogger(__name__)

BIRTH_TOPIC = "status"  # under the discovery prefix: Home Assistant says `online` there
# The kind a malformed birth message is counted as (pyedge_mqtt_rejected_total).
BIRTH_REJECTED = "ha_birth"
ON, OFF = "ON", "OFF"


class _Never:
    """An info for a clearing never sent."""

    @staticmethod
    def is_published() -> bool:
        return False


_NEVER = _Never()


def cleared(info: Any) -> bool:
    """True once the broker has the clearing message; unsure counts as not yet."""
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):
        # Published while the bus was away: paho keeps the error code even after it is
        # sent on reconnect. Remembering the ghost only clears it once more next start.
        return False


def entities(runtime: ServiceRuntime, sensors: list[Sensor], prefix: str) -> dict[str, Any]:
    """Every discovery config topic and its payload, for the sensors and actuators."""
    node = runtime.node
    device = {
        "identifiers": [f"pyedge_{node}"],
        "name": f"PyEdge {node}",
        "manufacturer": "PyEdge",
        "model": runtime.settings["machine_type"],
        "sw_version": __version__,
    }
    result: dict[str, Any] = {}
    for sensor in sensors:
        # All must be online: the process (its will), the service, and the sensor itself.
        availability = [
            {"topic": runtime.bus.settings.will_topic},
            {"topic": runtime.topic("status")},
            {"topic": runtime.topic("sensors", sensor.name, "availability")},
        ]
        common = {
            "device": device,
            "availability": availability,
            "availability_mode": "all",
            "state_topic": runtime.topic("sensors", sensor.name),
        }
        if isinstance(sensor.driver, Actuator):
            object_id = sensor.name
            result[f"{prefix}/switch/{node}/{object_id}/config"] = {
                **common,
                "name": sensor.name,
                "unique_id": f"pyedge_{node}_{object_id}",
                "state_topic": runtime.topic("actuators", sensor.name),
                "command_topic": runtime.topic("actuators", sensor.name, "set"),
                "payload_on": ON,
                "payload_off": OFF,
            }
            continue
        for quantity, unit in sensor.units.items():
            single = sensor.single
            object_id = sensor.name if single else f"{sensor.name}_{quantity}"
            key = "value" if single else quantity
            component = "binary_sensor" if quantity == "state" else "sensor"
            config: dict[str, Any] = {
                **common,
                "name": sensor.name if single else f"{sensor.name} {quantity}",
                "unique_id": f"pyedge_{node}_{object_id}",
            }
            if component == "binary_sensor":
                config["value_template"] = f"{{{{ 'ON' if value_json.{key} else 'OFF' }}}}"
            else:
                config["value_template"] = f"{{{{ value_json.{key} }}}}"
                if unit:
                    config["unit_of_measurement"] = unit
                if single and sensor.device_class:
                    config["device_class"] = sensor.device_class
                if sensor.state_class:
                    config["state_class"] = sensor.state_class
            result[f"{prefix}/{component}/{node}/{object_id}/config"] = config
    return result


class Discovery:
    """Announces the entities, again at every Home Assistant birth, and clears ghosts."""

    def __init__(
        self, runtime: ServiceRuntime, sensors: list[Sensor], prefix: str, announced: set[str]
    ) -> None:
        self.runtime = runtime
        self.prefix = prefix
        self.configs = entities(runtime, sensors, prefix)
        # Config topics announced by an earlier run whose sensor is gone from the file
        # (all of them when discovery was turned off); cleared at every announcement.
        self.ghosts = announced - set(self.configs)
        self._clearing: dict[str, Any] = {}

    def start(self) -> None:
        """Announce now, and whenever Home Assistant comes online."""
        self.runtime.bus.subscribe(f"{self.prefix}/{BIRTH_TOPIC}", self._on_birth)
        self.announce()

    def announce(self) -> None:
        """Publish every config retained, and an empty retained config for every ghost."""
        bus = self.runtime.bus
        for topic in sorted(self.ghosts):
            # An empty retained message deletes it; its info tells when the broker has it.
            self._clearing[topic] = bus.publish(topic, b"", retain=True)
        for topic, config in self.configs.items():
            bus.publish(topic, json.dumps(config, separators=(",", ":")), retain=True)
        logger.info("announced %d entities to Home Assistant", len(self.configs))

    def remembered(self) -> list[str]:
        """What to remember as announced: the configs, and the ghosts not yet cleared."""
        uncleared = {t for t in self.ghosts if not cleared(self._clearing.get(t, _NEVER))}
        return sorted(set(self.configs) | uncleared)

    def _on_birth(self, message: Any) -> None:
        if message.payload == b"online":
            self.announce()
        elif message.payload != b"offline":  # Home Assistant's will; anything else is wrong
            self.runtime.metrics.reject(
                BIRTH_REJECTED,
                message.topic,
                message.payload,
                "expected online or offline",
                log=logger,
            )
