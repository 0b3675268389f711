"""Fixtures of the alerts tests: the app with the real device-service, a sensor publisher."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Broker, authorized_client

# gpiozero's mock pins (the only fake, below the drivers), as the device tests use them.
from tests.device.conftest import mock_gpio
from tests.mqtt_recorder import MqttRecorder

# The pump is a gpio_out on gpiozero's mock pins (the fake below the driver seam); the
# simulated sensor samples rarely: the rules watch sensors that only the tests publish.
SENSORS = """
[sensors.temp]
driver = "simulated"
interval = 3600

[sensors.pump]
driver = "gpio_out"
interval = 3600
options = { pin = 27 }
"""


@pytest.fixture
def app_config(
    app_config: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """alerts and the device-service on one node, ticking fast, retrying webhooks fast."""
    request.getfixturevalue(mock_gpio.__name__)
    sensors = tmp_path / "sensors.toml"
    sensors.write_text(SENSORS)
    return {
        **app_config,
        "EDGE_SERVICES": "alerts,device-service",
        "EDGE_DEVICE_SERVICE_SENSORS": str(sensors),
        "EDGE_DEVICE_SERVICE_DISCOVERY": False,
        "EDGE_ALERTS_TICK": 0.1,
        "EDGE_ALERTS_WEBHOOK_BACKOFF": 0.05,
        "EDGE_ALERTS_WEBHOOK_TIMEOUT": 2.0,
    }


@pytest.fixture
def alerts_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def alerts_client(alerts_app: Flask) -> FlaskClient:
    return authorized_client(alerts_app)


class Sensors:
    """Publishes readings as the device-service does, logged in as edge-server."""

    def __init__(self, broker: Broker, node: str) -> None:
        self.node = node
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, f"sensors-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(**broker.login())
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.seq = 0

    def publish(self, sensor: str, value: Any, **extra: Any) -> None:
        """Publish one reading of `sensor` and wait for the broker's acknowledgement."""
        self.seq += 1
        body = {"value": value, "unit": "", "ts": "2026-01-01T00:00:00Z", "seq": self.seq}
        self.raw(sensor, json.dumps({**body, **extra}).encode())

    def raw(self, sensor: str, payload: bytes) -> None:
        """Publish any payload on the sensor's topic."""
        topic = f"pyedge/{self.node}/device-service/sensors/{sensor}"
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def sensors(broker: Broker, node_id: str) -> Iterator[Sensors]:
    publisher = Sensors(broker, node_id)
    yield publisher
    publisher.close()


@pytest.fixture
def alerts_recorder(recorder: MqttRecorder, node_id: str) -> MqttRecorder:
    """The recorder, on the alerts' and the device-service's topics of this node."""
    recorder.subscribe(f"pyedge/{node_id}/alerts/#")
    recorder.subscribe(f"pyedge/{node_id}/device-service/actuators/#")
    return recorder
