"""Fixtures: a real Mosquitto for the session, the app -> client chain, an MQTT recorder."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, sync_playwright
from werkzeug.serving import make_server

from edge_server import create_app
from edge_server.broker.accounts import (
    ANY_NODE,
    EDGE_SERVER,
    SUBSCRIBER,
    AccountSpec,
    BrokerAccounts,
)
from edge_server.broker.embedded import Mosquitto, TlsListener
from pyedge import testing

# Re-exported: the tests import them from here.
from pyedge.testing import authorized_client, free_port  # noqa: F401
from pyedge.testing import create_token as authorize  # noqa: F401
from tests.browser import CHROMIUM_ARGS, chromium_path
from tests.docker_engine import DockerEngine
from tests.mqtt_recorder import MqttRecorder

# Test brokers only: an account that reads every topic, so that a test which checks that
# a denied message was never delivered would see it wherever it went (`subscriber` reads
# only `<root>/#` and the discovery prefix, blind to a leak anywhere else).
OBSERVER = "observer"
OBSERVER_SPEC = AccountSpec(OBSERVER, "tests only: reads every topic", read=("#",))


@dataclass(frozen=True)
class Broker:
    """Where the test broker listens, and its accounts."""

    host: str
    port: int
    accounts: BrokerAccounts

    def login(self, account: str = EDGE_SERVER) -> dict[str, str]:
        """`username` and `password` of an account (BusSettings' and MqttRecorder's)."""
        return self.accounts.login(account)

    def app_login(self) -> dict[str, str]:
        """The settings that make an app log in as edge-server, as `pyedge run` does."""
        return app_login(self.accounts)


def app_login(accounts: BrokerAccounts) -> dict[str, str]:
    """The settings that make an app log in to a broker with `accounts` as edge-server."""
    login = accounts.login(EDGE_SERVER)
    return {"EDGE_MQTT_USERNAME": login["username"], "EDGE_MQTT_PASSWORD": login["password"]}


def broker_accounts(directory: Path, site: str = "", node: str = ANY_NODE) -> BrokerAccounts:
    """A test broker's accounts, OBSERVER's too; by default for any node (each test has its own)."""
    return testing.broker_accounts(directory, site=site, node=node, extra_accounts=[OBSERVER_SPEC])


def start_broker(
    directory: Path, site: str = "", node: str = ANY_NODE, tls: TlsListener | None = None
) -> Mosquitto:
    """A real Mosquitto with the project's configuration and test accounts, on a free port."""
    return testing.start_broker(
        directory, site=site, node=node, extra_accounts=[OBSERVER_SPEC], tls=tls
    )


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the machine's EDGE_* variables out of the tests."""
    for key in list(os.environ):
        if key.startswith("EDGE_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real Mosquitto with the project's configuration and accounts, on a free port."""
    mosquitto = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield Broker("127.0.0.1", mosquitto.port, mosquitto.accounts)
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
        **broker.app_login(),
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
def make_app(app_config: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    """`make_app(**settings)`: an app on the test broker, connected; closed after the test."""
    apps: list[Flask] = []

    def make(**settings: Any) -> Flask:
        app = create_app({**app_config, **settings})
        apps.append(app)
        assert app.extensions["pyedge"].bus.wait_connected(5), "app did not reach the broker"
        return app

    yield make
    for app in apps:
        app.extensions["pyedge"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app, authenticated as an admin."""
    return authorized_client(app)


@pytest.fixture
def recorder(broker: Broker) -> Iterator[MqttRecorder]:
    """A separate MQTT subscriber on the test broker, logged in as `subscriber` (read-only)."""
    recorder = MqttRecorder(
        broker.host, broker.port, f"recorder-{uuid.uuid4().hex[:8]}", **broker.login(SUBSCRIBER)
    )
    yield recorder
    recorder.close()


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    """The app served over real HTTP on a free port (werkzeug, threaded)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """The system's Chromium for the whole session (Playwright's sync API allows one)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
