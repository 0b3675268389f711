"""Fixtures: a real Mosquitto for the session, the app -> client chain, an MQTT recorder."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_server import create_app
from edge_server.broker import Mosquitto
from edge_server.config import REPO_MQTT_CONFIG
from tests.docker_engine import DockerEngine
from tests.mqtt_recorder import MqttRecorder


@dataclass(frozen=True)
class Broker:
    """Where the test broker listens."""

    host: str
    port: int


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the machine's EDGE_* variables out of the tests."""
    for key in list(os.environ):
        if key.startswith("EDGE_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real Mosquitto with the project's configuration, on a free port."""
    port = free_port()
    mosquitto = Mosquitto(REPO_MQTT_CONFIG, tmp_path_factory.mktemp("mosquitto"), "127.0.0.1", port)
    mosquitto.start()
    yield Broker("127.0.0.1", port)
    mosquitto.stop()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A real dockerd on its own socket, with the busybox test image built locally."""
    engine = DockerEngine()
    try:
        engine.start()
        engine.build_busybox()
        yield engine
    finally:
        engine.remove()


@pytest.fixture
def node_id() -> str:
    """A node id of this test's own, so retained messages of other tests do not mix in."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def app_config(broker: Broker, tmp_path: Path, node_id: str) -> dict[str, Any]:
    """Settings of a test app: the test broker, its own node id and data dir."""
    return {
        "EDGE_MQTT_HOST": broker.host,
        "EDGE_MQTT_PORT": broker.port,
        "EDGE_NODE_ID": node_id,
        "EDGE_DATA_DIR": str(tmp_path / "data"),
        "EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART": False,
        # The foundation's tests look at custom-service alone; device-service has its own.
        "EDGE_SERVICES": "custom-service",
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """The edge-server with the installed services, connected to the test broker."""
    app = create_app(app_config)
    assert app.extensions["pyedge"].bus.wait_connected(5), "app did not reach the broker"
    yield app
    app.extensions["pyedge"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def recorder(broker: Broker) -> Iterator[MqttRecorder]:
    """A separate MQTT subscriber on the test broker."""
    recorder = MqttRecorder(broker.host, broker.port, f"recorder-{uuid.uuid4().hex[:8]}")
    yield recorder
    recorder.close()
