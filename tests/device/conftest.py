"""Fixtures of the device-service tests: a sensors file, the app, a persistent subscriber."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_server import create_app
from tests.conftest import Broker, authorized_client
from tests.mqtt_recorder import MqttRecorder

SENSORS_TOML = """
[sensors.temp]
driver = "simulated"
interval = {interval}
unit = "°C"
device_class = "temperature"
options = {{ waveform = "random_walk", minimum = 10.0, maximum = 30.0, seed = 7 }}

[sensors.level]
driver = "simulated"
interval = {interval}
unit = "%"
offset = 1.5
scale = 2.0
options = {{ waveform = "sine", minimum = 0.0, maximum = 10.0, period = 60 }}
"""


def write_sensors(path: Path, interval: float) -> Path:
    """A sensors file with two simulated sensors sampling every `interval` seconds."""
    path.write_text(SENSORS_TOML.format(interval=interval))
    return path


@pytest.fixture
def sensors_file(tmp_path: Path) -> Path:
    return write_sensors(tmp_path / "sensors.toml", 0.05)


@pytest.fixture
def device_config(app_config: dict[str, Any], sensors_file: Path) -> dict[str, Any]:
    """The test app's settings with the device-service and the sensors file."""
    return {**app_config, "EDGE_SERVICES": "device-service",
            "EDGE_DEVICE_SERVICE_SENSORS": str(sensors_file)}  # fmt: skip


@pytest.fixture
def device_app(device_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(device_config)
    assert app.extensions["pyedge"].bus.wait_connected(5)
    yield app
    app.extensions["pyedge"].close()


@pytest.fixture
def device_client(device_app: Flask) -> FlaskClient:
    return authorized_client(device_app)


# A simulated sensor and two GPIO pins (on gpiozero's mock factory): the actuator tests.
GPIO_SENSORS = """
[sensors.temp]
driver = "simulated"
interval = 0.2
unit = "°C"
device_class = "temperature"

[sensors.pump]
driver = "gpio_out"
interval = 0.2
options = { pin = 27 }

[sensors.door]
driver = "gpio_in"
interval = 0.2
options = { pin = 17 }
"""


@pytest.fixture
def mock_gpio(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """gpiozero's mock pins: the only fake, below the drivers."""
    from gpiozero import Device

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    Device.pin_factory = None
    yield
    if Device.pin_factory is not None:
        Device.pin_factory.reset()
    Device.pin_factory = None


def start_device(config: dict[str, Any], tmp_path: Path, text: str = GPIO_SENSORS) -> Flask:
    """The device-service alone on `text`'s sensors (a simulated one and two GPIO pins)."""
    path = tmp_path / "sensors.toml"
    path.write_text(text)
    app = create_app(
        {
            **config,
            "EDGE_SERVICES": "device-service",
            "EDGE_SENSORS": str(path),
        }
    )
    assert app.extensions["pyedge"].bus.wait_connected(5)
    return app


@pytest.fixture
def gpio_app(app_config: dict[str, Any], tmp_path: Path, mock_gpio: None) -> Iterator[Flask]:
    app = start_device(app_config, tmp_path)
    yield app
    app.extensions["pyedge"].close()


@pytest.fixture
def home_assistant(broker: Broker, node_id: str) -> Iterator[MqttRecorder]:
    """A client logged in as Home Assistant is: it may announce its birth and switch."""
    client = MqttRecorder(
        broker.host, broker.port, f"ha-{node_id}", **broker.login("homeassistant")
    )
    yield client
    client.close()
