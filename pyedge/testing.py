"""Test helpers for a service's own tests: a real Mosquitto, the service in an app, a subscriber.

A pytest plugin, loaded wherever PyEdge is installed (the `pytest11` entry point), gives
the fixtures `edge_broker` (a real Mosquitto for the session, with PyEdge's configuration
and broker accounts) and `edge_recorder` (an MQTT subscriber on it). `create_test_app`
then hosts the service in the edge-server on that broker, exactly as `pyedge run` does,
and `authorized_client` gives a Flask test client with an API token of a role.

This is the one SDK module that imports edge_server: a service's test needs the whole
server around it (the API, authentication, the broker's accounts and ACL), and importing
it lazily keeps the SDK itself free of it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest  # a module for tests: pytest is there
from paho.mqtt.enums import CallbackAPIVersion

from pyedge.security import Role

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient

    from edge_server.broker.accounts import AccountSpec, BrokerAccounts
    from edge_server.broker.embedded import Mosquitto, TlsListener
    from pyedge.service import EdgeService

# The broker account solo mode's process logs in with: it writes every service's topics.
EDGE_SERVER = "edge-server"
# A read-only account (the broker's `subscriber`): what a test listens with.
SUBSCRIBER = "subscriber"
# The node of a test broker's accounts: any, so that each test may use a node id of its own.
ANY_NODE = "+"
# How long an app may take to reach the broker.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TestBroker:
    """Where a test broker listens, and its accounts."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    host: str
    port: int
    accounts: BrokerAccounts

    def login(self, account: str = EDGE_SERVER) -> dict[str, str]:
        """`username` and `password` of a broker account."""
        login: dict[str, str] = self.accounts.login(account)
        return login

    def app_settings(self) -> dict[str, Any]:
        """The settings that connect an app to this broker as solo mode's process."""
        login = self.login(EDGE_SERVER)
        return {
            "EDGE_MQTT_HOST": self.host,
            "EDGE_MQTT_PORT": self.port,
            "EDGE_MQTT_USERNAME": login["username"],
            "EDGE_MQTT_PASSWORD": login["password"],
        }


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def broker_accounts(
    directory: Path,
    *,
    site: str = "",
    node: str = ANY_NODE,
    extra_accounts: Iterable[AccountSpec] = (),
) -> BrokerAccounts:
    """A test broker's accounts in `directory`: every installed service's, as on a device.

    By default for any node (`+`), so that each test may use a node id of its own.
    """
    from edge_server.broker.accounts import ensure_accounts, plan_accounts
    from edge_server.registry import installed_services
    from pyedge.service import topic_root

    root = topic_root(site)
    specs = plan_accounts(root=root, node=node, services=installed_services())
    accounts: BrokerAccounts = ensure_accounts(directory, [*specs, *extra_accounts], root)
    return accounts


def start_broker(
    directory: Path,
    *,
    site: str = "",
    node: str = ANY_NODE,
    extra_accounts: Iterable[AccountSpec] = (),
    tls: TlsListener | None = None,
) -> Mosquitto:
    """A real Mosquitto on a free port with PyEdge's configuration and `broker_accounts`.

    `tls` adds a TLS listener beside the plain one. Stop it with `.stop()`.
    """
    from edge_server.broker.embedded import Mosquitto
    from edge_server.config import REPO_MQTT_CONFIG

    accounts = broker_accounts(directory, site=site, node=node, extra_accounts=extra_accounts)
    config = Path(os.environ.get("EDGE_MQTT_CONFIG") or REPO_MQTT_CONFIG)
    mosquitto = Mosquitto(config, directory, "127.0.0.1", free_port(), accounts, tls)
    mosquitto.start()
    return mosquitto


def create_test_app(
    services: EdgeService | Sequence[EdgeService],
    broker: TestBroker,
    data_dir: Path,
    settings: Mapping[str, Any] | None = None,
) -> Flask:
    """The edge-server with only `services`, on `broker`, connected; close it with `close_app`.

    It has a node id of its own (`test-<random>`), so that retained messages of other
    tests do not mix in; `settings` (EDGE_* keys) override anything.
    """
    from edge_server import create_app

    services = [services] if not isinstance(services, Sequence) else list(services)
    config: dict[str, Any] = {
        **broker.app_settings(),
        "EDGE_NODE_ID": f"test-{uuid.uuid4().hex[:10]}",
        "EDGE_DATA_DIR": str(data_dir),
        "EDGE_SERVICES": ",".join(service.slug for service in services),
        **(settings or {}),
    }
    app: Flask = create_app(config, services=services)
    if not app.extensions["pyedge"].bus.wait_connected(CONNECT_TIMEOUT_S):
        close_app(app)
        raise AssertionError(f"the app did not reach the broker at {broker.host}:{broker.port}")
    return app


def close_app(app: Flask) -> None:
    """Stop the app's services and disconnect it."""
    app.extensions["pyedge"].close()


def create_token(app: Flask, role: Role = Role.ADMIN) -> str:
    """A new API token of `role` on the app's node."""
    from pyedge.auth import EXTENSION, Auth

    auth: Auth = app.extensions[EXTENSION]
    return auth.accounts.create_token(f"test-{uuid.uuid4().hex[:10]}", role)


def authorized_client(app: Flask, role: Role = Role.ADMIN) -> FlaskClient:
    """A test client of the app that sends a token of `role` with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {create_token(app, role)}"
    return client


@dataclass(frozen=True)
class Received:
    """One message as the subscriber got it."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class MqttRecorder:
    """Subscribes to topics on a real broker and keeps every message it receives."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        """Subscribe (QoS 1) and wait for the broker's SUBACK."""
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(5), f"no SUBACK for {topic}"

    def wait_for(
        self,
        topic: str,
        match: Callable[[Received], bool] = lambda m: True,
        timeout: float = 10,
        after: int = 0,
    ) -> Received:
        """The first message on `topic` satisfying `match`, waiting up to `timeout`;
        `after` skips the first so many messages received in all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages[after:]:
                    if mqtt.topic_matches_sub(topic, message.topic) and match(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    raise AssertionError(f"no matching message on {topic}; topics seen: {seen}")
                self._cond.wait(remaining)

    def on(self, topic: str) -> list[Received]:
        """Every message received so far on `topic`."""
        with self._cond:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic, m.topic)]

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain))
            )
            self._cond.notify_all()


def recorder_on(broker: TestBroker, account: str = SUBSCRIBER) -> MqttRecorder:
    """A subscriber on `broker`, logged in as `account` (read-only by default)."""
    return MqttRecorder(
        broker.host, broker.port, f"recorder-{uuid.uuid4().hex[:8]}", **broker.login(account)
    )


# --- the pytest plugin: the fixtures -----------------------------------------------------


@pytest.fixture(scope="session")
def edge_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBroker]:
    """A real Mosquitto with PyEdge's configuration and accounts, for the session."""
    mosquitto = start_broker(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield TestBroker("127.0.0.1", mosquitto.port, mosquitto.accounts)
    finally:
        mosquitto.stop()


@pytest.fixture
def edge_recorder(edge_broker: TestBroker) -> Iterator[MqttRecorder]:
    """A read-only MQTT subscriber on `edge_broker`."""
    recorder = recorder_on(edge_broker)
    try:
        yield recorder
    finally:
        recorder.close()
