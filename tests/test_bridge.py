"""mqtt/bridge.conf.example filled in, bridging two real Mosquittos: what goes up, comes down."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_server.broker.accounts import EDGE_SERVER, AccountSpec, ensure_accounts
from edge_server.broker.embedded import Mosquitto, TlsListener
from edge_server.config import REPO_MQTT_CONFIG
from edge_server.security.tls import ensure_certificate
from tests.conftest import OBSERVER, broker_accounts, free_port

EXAMPLE = REPO_MQTT_CONFIG.parent / "bridge.conf.example"
PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")
BRIDGE = "bridge-site"
CLOUD = "cloud"
NODE = "n1"


def render(values: dict[str, str]) -> str:
    """The example with its placeholders filled in; every one must be given."""
    text = EXAMPLE.read_text()
    assert set(PLACEHOLDER.findall(text)) == set(values)
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


@dataclass
class Bridged:
    """The site's broker (bridged) and the upstream one."""

    local: Mosquitto
    upstream: Mosquitto


@pytest.fixture(scope="module")
def bridged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridged]:
    base = tmp_path_factory.mktemp("bridge")
    # Upstream: its own accounts (the bridge's, a cloud controller's) and a TLS listener
    # with a certificate naming 127.0.0.1, which the bridge verifies.
    cert = ensure_certificate(base / "upstream-node")
    up_dir = base / "upstream"
    up_accounts = ensure_accounts(
        up_dir,
        [
            AccountSpec(BRIDGE, "the site's bridge",
                        # More than it needs: only the bridge's `topic` lines filter.
                        read=("pyedge/#",),
                        write=("pyedge/#", f"$SYS/broker/connection/{BRIDGE}/state")),
            AccountSpec(CLOUD, "a controller upstream", read=("pyedge/#", "$SYS/#"),
                        write=("pyedge/#",)),
        ],
        "pyedge",
    )  # fmt: skip
    up_conf = base / "upstream.conf"
    up_conf.write_text("allow_anonymous false\npersistence false\nlog_type all\n")
    tls = TlsListener("127.0.0.1", free_port(), cert.cert, cert.key)
    upstream = Mosquitto(up_conf, up_dir, "127.0.0.1", free_port(), up_accounts, tls)
    upstream.start()

    # The site: the project's configuration with an include_dir holding the bridge.
    conf_d = base / "mosquitto.d"
    conf_d.mkdir()
    (conf_d / "bridge.conf").write_text(
        render({
            "BRIDGE_NAME": BRIDGE, "UPSTREAM_HOST": "127.0.0.1", "UPSTREAM_PORT": str(tls.port),
            "UPSTREAM_CA": str(cert.cert), "UPSTREAM_USERNAME": BRIDGE,
            "UPSTREAM_PASSWORD": up_accounts.get(BRIDGE).password, "ROOT": "pyedge",
        })
    )  # fmt: skip
    site_conf = base / "site.conf"
    site_conf.write_text(REPO_MQTT_CONFIG.read_text() + f"\ninclude_dir {conf_d}\n")
    local_dir = base / "local"
    local = Mosquitto(site_conf, local_dir, "127.0.0.1", free_port(), broker_accounts(local_dir))
    local.start()
    try:
        yield Bridged(local, upstream)
    finally:
        local.stop()
        upstream.stop()


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    properties: Any


class Client:
    """An MQTT 5 client that keeps what it receives, properties included."""

    def __init__(self, port: int, login: dict[str, str]) -> None:
        self.messages: list[Message] = []
        self.cond = threading.Condition()
        connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"c-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(login["username"], login["password"])
        self.client.on_connect = lambda *args: connected.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(5)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5)

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        self.client.publish(topic, payload, qos=1, **kwargs).wait_for_publish(5)

    def wait_for(self, topic: str, payload: bytes | None = None, timeout: float = 15) -> Message:
        def found() -> Message | None:
            for message in self.messages:
                if message.topic == topic and payload in (None, message.payload):
                    return message
            return None

        with self.cond:
            assert self.cond.wait_for(found, timeout), (topic, [m.topic for m in self.messages])
            result = found()
            assert result is not None
            return result

    def on(self, topic: str) -> list[Message]:
        with self.cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(
                Message(message.topic, message.payload, bool(message.retain), message.properties)
            )
            self.cond.notify_all()


@pytest.fixture
def ends(bridged: Bridged) -> Iterator[tuple[Client, Client, Client]]:
    """A service on the site (edge-server), a watcher of everything there, a cloud client."""
    service = Client(bridged.local.port, bridged.local.accounts.login(EDGE_SERVER))
    site = Client(bridged.local.port, bridged.local.accounts.login(OBSERVER))
    cloud = Client(bridged.upstream.port, bridged.upstream.accounts.login(CLOUD))
    site.subscribe("#")
    cloud.subscribe("pyedge/#")
    yield service, site, cloud
    for client in (service, site, cloud):
        client.close()


def test_the_example_names_every_bridge_option_it_documents() -> None:
    settings = {line.split()[0] for line in EXAMPLE.read_text().splitlines()
                if line and not line.startswith("#")}  # fmt: skip
    assert {"connection", "address", "topic", "remote_username", "remote_password",
            "bridge_cafile", "bridge_protocol_version", "cleansession", "try_private",
            "notifications"} <= settings  # fmt: skip


def test_state_goes_up_retained_and_the_bridge_says_it_is_connected(
    bridged: Bridged, ends: tuple[Client, Client, Client]
) -> None:
    service, _site, cloud = ends
    # The bridge comes up in the background: its own retained notification says when.
    cloud.subscribe(f"$SYS/broker/connection/{BRIDGE}/state")
    cloud.wait_for(f"$SYS/broker/connection/{BRIDGE}/state", b"1")
    status = f"pyedge/{NODE}/custom-service/status"
    service.publish(status, b"online", retain=True)
    assert cloud.wait_for(status, b"online").payload == b"online"
    # Retained upstream too: a client arriving later gets it at once.
    late = Client(bridged.upstream.port, bridged.upstream.accounts.login(CLOUD))
    try:
        late.subscribe(status)
        assert late.wait_for(status, b"online").retain
    finally:
        late.close()


def test_calls_come_down_with_their_mqtt5_properties_and_nothing_else_does(
    ends: tuple[Client, Client, Client],
) -> None:
    service, site, cloud = ends
    service.publish(f"pyedge/{NODE}/custom-service/status", b"online", retain=True)
    cloud.wait_for(f"pyedge/{NODE}/custom-service/status", b"online")  # the bridge is up
    # Upstream tries to write the site's state: the bridge does not bring it in.
    spoof = f"pyedge/{NODE}/custom-service/ops/sleep"
    cloud.publish(spoof, b'{"state": "done"}')
    call = f"pyedge/{NODE}/custom-service/ops/sleep/call"
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = f"pyedge/{NODE}/custom-service/reply/r1"
    properties.CorrelationData = b"corr-1"
    cloud.publish(call, b'{"action": "status"}', properties=properties)
    arrived = site.wait_for(call)
    assert arrived.payload == b'{"action": "status"}'
    assert arrived.properties.ResponseTopic == f"pyedge/{NODE}/custom-service/reply/r1"
    assert arrived.properties.CorrelationData == b"corr-1"
    # The bridge forwards in order: had the spoof come in, it would be there before the call.
    assert site.on(spoof) == []

    # The reply goes up; the call did not go back up as a copy (no loop), nor come down twice.
    reply = f"pyedge/{NODE}/custom-service/reply/r1"
    service.publish(reply, b'{"code": 200}')
    cloud.wait_for(reply)
    assert len(cloud.on(call)) == 1
    assert len(site.on(call)) == 1


def test_a_call_published_on_the_site_does_not_come_back_down(
    ends: tuple[Client, Client, Client],
) -> None:
    service, site, cloud = ends
    call = f"pyedge/{NODE}/device-service/ops/acquire/call"
    service.publish(call, b'{"action": "status"}')
    cloud.wait_for(call)  # it went up (it matches `out`)
    # A copy coming back would be queued to the bridge before this call, which the cloud
    # publishes once it has the first: both come down the one bridge connection in order.
    sentinel = f"pyedge/{NODE}/device-service/ops/sentinel/call"
    cloud.publish(sentinel, b"x")
    site.wait_for(sentinel)
    assert len(site.on(call)) == 1
    assert len(cloud.on(call)) == 1
