"""Fixtures of the device-service tests: a sensors file, the app, a persistent subscriber."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_server import create_app
from tests.conftest import authorized_client

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
