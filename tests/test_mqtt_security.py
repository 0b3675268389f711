"""The broker's accounts, ACL and TLS, against a real Mosquitto: who may connect, write, read."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_server import cli, create_app
from edge_server.broker.accounts import (
    DISCOVERY_PREFIX_KEY,
    AccountError,
    ensure_accounts,
    hub_accounts,
    load_accounts,
    node_accounts,
    plan_accounts,
)
from edge_server.broker.embedded import Mosquitto, TlsListener, find_mosquitto, port_open
from edge_server.config import REPO_MQTT_CONFIG
from edge_server.registry import configure
from edge_server.security.tls import ensure_certificate
from pyedge import Bus, BusSettings, ConfigError, EdgeService
from pyedge.bus_config import mqtt_login
from tests.conftest import OBSERVER, Broker, app_login, free_port, start_broker
from tests.mqtt_recorder import MqttRecorder
from tests.test_run import PYEDGE, start_node, stop_node, wait_ready

NOT_AUTHORIZED = 0x87


def connect_result(
    port: int,
    username: str | None = None,
    password: str | None = None,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
) -> ReasonCode:
    """The broker's CONNACK reason code for a login."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    if username is not None:
        client.username_pw_set(username, password)
    result: list[ReasonCode] = []
    answered = threading.Event()

    def on_connect(*args: Any) -> None:
        result.append(args[3])
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert answered.wait(5), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]


class Publisher:
    """A client logged in as an account; `publish` answers the broker's PUBACK reason code."""

    def __init__(self, port: int, login: dict[str, str], client_id: str) -> None:
        self._acks: dict[int, ReasonCode] = {}
        self._cond = threading.Condition()
        connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.username_pw_set(login["username"], login["password"])
        self.client.on_connect = lambda *args: connected.set()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(5), "not connected"

    def publish(self, topic: str, payload: bytes = b"x") -> ReasonCode:
        """Publish at QoS 1 and wait for the broker's verdict."""
        info = self.client.publish(topic, payload, qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self._acks, 10), "no PUBACK"
            return self._acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        with self._cond:
            self._acks[mid] = rc
            self._cond.notify_all()


@pytest.fixture
def everything(broker: Broker) -> Iterator[MqttRecorder]:
    """A subscriber to every topic there is (the test-only observer account)."""
    recorder = MqttRecorder(
        broker.host, broker.port, f"all-{uuid.uuid4().hex[:8]}", **broker.login(OBSERVER)
    )
    recorder.subscribe("#")
    yield recorder
    recorder.close()


def assert_never_delivered(recorder: MqttRecorder, denied: list[str], sentinel: str) -> None:
    """Wait for `sentinel` (published after the denied ones); none of `denied` came first."""
    # `recorder` must be able to read every topic in `denied` (the observer account), or a
    # leak would go unseen and this could not fail.
    recorder.wait_for(sentinel)
    # The broker handles a client's PUBLISHes in order and queues deliveries in the same
    # order: had a denied message passed, it would have arrived before the sentinel.
    assert [m.topic for m in recorder.messages if m.topic in denied] == []


# --- who may connect ---


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_anonymous_clients_are_refused(broker: Broker, protocol: MQTTProtocolVersion) -> None:
    refused = connect_result(broker.port, protocol=protocol)
    assert refused.is_failure
    assert "Not authorized" in str(refused)


def test_a_wrong_password_is_refused_and_the_right_one_accepted(broker: Broker) -> None:
    login = broker.login("subscriber")
    assert connect_result(broker.port, login["username"], "wrong").is_failure
    assert connect_result(broker.port, "nobody", login["password"]).is_failure
    assert not connect_result(broker.port, **login).is_failure


# --- what each account may write ---


def test_a_service_account_publishes_only_under_its_own_subtree(
    broker: Broker, everything: MqttRecorder, node_id: str
) -> None:
    device = Publisher(broker.port, broker.login("device-service"), f"dev-{node_id}")
    try:
        denied = [f"pyedge/{node_id}/custom-service/x", "other/topic", f"pyedge/{node_id}/x"]
        codes = {topic: device.publish(topic).value for topic in denied}
        own = f"pyedge/{node_id}/device-service/sensors/x"
        assert not device.publish(own).is_failure
        # Delivery first: that nothing leaked matters more than what the PUBACK said.
        assert_never_delivered(everything, denied, own)
        assert codes == dict.fromkeys(denied, NOT_AUTHORIZED)
        # Its other topics: Home Assistant discovery for a node, under the prefix only.
        discovery = f"homeassistant/sensor/{node_id}/x/config"
        assert not device.publish(discovery).is_failure
        everything.wait_for(discovery)
        assert device.publish("homeassistant/status").value == NOT_AUTHORIZED
    finally:
        device.close()


def test_the_subscriber_account_cannot_publish(
    broker: Broker, everything: MqttRecorder, node_id: str
) -> None:
    subscriber = Publisher(broker.port, broker.login("subscriber"), f"ro-{node_id}")
    edge = Publisher(broker.port, broker.login("edge-server"), f"es-{node_id}")
    try:
        denied = [f"pyedge/{node_id}/custom-service/status", f"pyedge/{node_id}/x/set", "other/x"]
        codes = {topic: subscriber.publish(topic).value for topic in denied}
        # Its PUBACKs came back, so the broker had handled those before this one.
        sentinel = f"pyedge/{node_id}/edge-server/sentinel"
        assert not edge.publish(sentinel).is_failure
        assert_never_delivered(everything, denied, sentinel)
        assert codes == dict.fromkeys(denied, NOT_AUTHORIZED)
    finally:
        subscriber.close()
        edge.close()


def test_home_assistant_may_switch_actuators_and_announce_itself_only(
    broker: Broker, node_id: str
) -> None:
    ha = Publisher(broker.port, broker.login("homeassistant"), f"ha-{node_id}")
    try:
        base = f"pyedge/{node_id}/device-service"
        assert not ha.publish(f"{base}/actuators/pump/set", b"ON").is_failure
        assert not ha.publish("homeassistant/status", b"online").is_failure
        assert ha.publish(f"{base}/sensors/temp").value == NOT_AUTHORIZED
        assert ha.publish(f"homeassistant/switch/{node_id}/pump/config").value == NOT_AUTHORIZED
    finally:
        ha.close()


def test_a_service_writes_what_it_declares_on_its_node_and_nothing_more(
    broker: Broker, everything: MqttRecorder, node_id: str
) -> None:
    # The alerts service declares mqtt_writes=("device-service/actuators/+/set",).
    alerts = Publisher(broker.port, broker.login("alerts"), f"alerts-{node_id}")
    try:
        base = f"pyedge/{node_id}/device-service"
        denied = [f"{base}/sensors/temp", f"{base}/actuators/pump", f"{base}/status"]
        codes = {topic: alerts.publish(topic).value for topic in denied}
        allowed = f"{base}/actuators/pump/set"
        assert not alerts.publish(allowed, b"ON").is_failure
        assert_never_delivered(everything, denied, allowed)
        assert codes == dict.fromkeys(denied, NOT_AUTHORIZED)
    finally:
        alerts.close()
    # On a node of its own only, as its subtree.
    specs = {
        spec.name: spec for spec in plan_accounts(root="pyedge", node="n1", services=["alerts"])
    }
    assert specs["alerts"].write == (
        "pyedge/n1/alerts/#",
        "pyedge/n1/device-service/actuators/+/set",
    )


@pytest.mark.parametrize(
    "declared",
    ["#", "+/actuators/+/set", "my-service/x", "device-service/#/x", "/device-service/x"],
)
def test_a_declared_write_must_name_another_service_and_stay_a_plain_filter(
    declared: str,
) -> None:
    with pytest.raises(ValueError, match="mqtt_writes"):
        EdgeService("my-service", title="Mine", version="1", mqtt_writes=(declared,))


def test_a_site_prefixes_every_topic_and_its_node_accounts_stay_inside(
    app_config: dict[str, Any], tmp_path: Path, node_id: str
) -> None:
    # Accounts for this one node of site plant-a, as `pyedge run` makes them. The watcher
    # reads every topic (the test-only observer): a message outside the site's root would
    # be invisible to `subscriber`, so only it can show one.
    mosquitto = start_broker(tmp_path / "broker", site="plant-a", node=node_id)
    watcher = MqttRecorder(
        "127.0.0.1", mosquitto.port, f"w-{node_id}", **mosquitto.accounts.login(OBSERVER)
    )
    device = Publisher(mosquitto.port, mosquitto.accounts.login("device-service"), f"d-{node_id}")
    app = create_app(
        {**app_config, **app_login(mosquitto.accounts), "EDGE_MQTT_PORT": mosquitto.port,
         "EDGE_SITE": "plant-a"}
    )  # fmt: skip
    try:
        watcher.subscribe("#")
        root = f"plant-a/pyedge/{node_id}"
        for slug in ("edge-server", "custom-service"):
            watcher.wait_for(f"{root}/{slug}/status", lambda m: m.payload == b"online")
        assert watcher.wait_for(f"{root}/custom-service/ops/heartbeat").json()["op"] == "heartbeat"
        assert [m.topic for m in watcher.messages if m.topic.startswith("pyedge/")] == []
        # Without the site, or under another node of it: not this node's account's business.
        denied = [
            f"pyedge/{node_id}/device-service/x",
            "plant-a/pyedge/other-node/device-service/x",
        ]
        codes = {topic: device.publish(topic).value for topic in denied}
        assert not device.publish(f"{root}/device-service/x").is_failure
        assert_never_delivered(watcher, denied, f"{root}/device-service/x")
        assert codes == dict.fromkeys(denied, NOT_AUTHORIZED)
    finally:
        app.extensions["pyedge"].close()
        device.close()
        watcher.close()
        mosquitto.stop()


# --- the accounts file, passwd and ACL ---


def test_passwords_are_made_once_and_missing_accounts_added(tmp_path: Path) -> None:
    first = ensure_accounts(
        tmp_path, plan_accounts(root="pyedge", node="n1", services=["custom-service"]), "pyedge"
    )
    assert set(first.accounts) == {"edge-server", "custom-service", "controller", "subscriber"}
    both = ["custom-service", "device-service"]
    again = ensure_accounts(
        tmp_path, plan_accounts(root="pyedge", node="n1", services=both), "pyedge"
    )
    assert set(again.accounts) == {*first.accounts, "device-service", "homeassistant"}
    for name, account in first.accounts.items():
        assert again.get(name).password == account.password
    assert load_accounts(tmp_path) == again
    for path in (tmp_path / "accounts.json", again.passwd, again.acl):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # mosquitto_passwd's $7$: PBKDF2-SHA512 of the password, which the broker checks.
    for line in again.passwd.read_text().splitlines():
        username, hashed = line.split(":", 1)
        _, seven, rounds, salt, digest = hashed.split("$")
        password = again.get(username).password.encode()
        expected = hashlib.pbkdf2_hmac("sha512", password, base64.b64decode(salt), int(rounds))
        assert (seven, base64.b64decode(digest)) == ("7", expected)


def test_the_acl_confines_each_account_to_its_node_and_subtree(tmp_path: Path) -> None:
    settings = {"EDGE_SITE": "", "EDGE_NODE_ID": "n1", "EDGE_DEVICE_SERVICE_DISCOVERY_PREFIX": "ha"}
    accounts = ensure_accounts(tmp_path, node_accounts(settings, ["device-service"]), "pyedge")
    blocks = {
        block.splitlines()[1].removeprefix("user "): block.splitlines()[2:]
        for block in accounts.acl.read_text().split("\n\n")[1:]
    }
    assert blocks == {
        "edge-server": [
            "topic read pyedge/#",
            "topic read ha/status",
            "topic write pyedge/n1/#",
            "topic write pyedge/+/+/ops/+/call",
            "topic write ha/+/n1/#",
        ],
        "device-service": [
            "topic read pyedge/#",
            "topic read ha/status",
            "topic write pyedge/n1/device-service/#",
            "topic write ha/+/n1/#",
        ],
        "controller": ["topic read pyedge/#", "topic write pyedge/+/+/ops/+/call"],
        "subscriber": ["topic read pyedge/#", "topic read ha/#"],
        "homeassistant": [
            "topic read pyedge/#",
            "topic read ha/#",
            "topic write ha/status",
            "topic write pyedge/n1/device-service/actuators/+/set",
        ],
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        *[(DISCOVERY_PREFIX_KEY, prefix) for prefix in ("ha/+", "#", "ha//x", "/ha", "ha/")],
        (DISCOVERY_PREFIX_KEY, "$SYS"),
        (DISCOVERY_PREFIX_KEY, "ha\ntopic readwrite #"),  # a rule of its own in the ACL
        ("EDGE_NODE_ID", "n1\n"),
        ("EDGE_NODE_ID", "n+"),
        ("EDGE_SITE", "plant/a"),
        ("EDGE_SITE", "$SYS"),
    ],
)
def test_settings_that_go_into_acl_filters_must_be_plain_topics(key: str, value: str) -> None:
    # The settings `pyedge run` plans the accounts from (device-service's included).
    with pytest.raises(ConfigError) as error:
        configure({"EDGE_SERVICES": "device-service", key: value})
    assert error.value.key == key


def test_a_discovery_prefix_of_several_levels_confines_the_discovery_rules() -> None:
    settings, _services = configure(
        {"EDGE_SERVICES": "device-service", "EDGE_NODE_ID": "n1",
         DISCOVERY_PREFIX_KEY: " plant-a/home assistant "}
    )  # fmt: skip
    device = {spec.name: spec for spec in node_accounts(settings, ["device-service"])}[
        "device-service"
    ]
    assert device.write == ("pyedge/n1/device-service/#", "plant-a/home assistant/+/n1/#")


def test_a_joined_nodes_accounts_write_only_their_own_service_topics(tmp_path: Path) -> None:
    settings = {"EDGE_SITE": "plant-a", "EDGE_NODE_ID": "hub",
                DISCOVERY_PREFIX_KEY: "ha"}  # fmt: skip
    nodes = {"n2": {"services": ["device-service", "custom-service"]}}
    specs = {s.name: s for s in hub_accounts(settings, ["custom-service"], nodes)}
    root = "plant-a/pyedge"
    assert specs["custom-service@n2"].write == (f"{root}/n2/custom-service/#",)
    assert specs["custom-service@n2"].read == (f"{root}/#",)
    assert specs["device-service@n2"].write == (f"{root}/n2/device-service/#", "ha/+/n2/#")
    assert specs["custom-service"].write == (f"{root}/hub/custom-service/#",)  # the hub's own
    # Node ids and slugs go into ACL filters: nothing that could widen a rule passes.
    for bad in ({"n+": {"services": ["x"]}}, {"n2\n": {"services": ["x"]}},
                {"n2": {"services": ["x/#"]}}, {"n2": {"services": ["X"]}}):  # fmt: skip
        with pytest.raises(AccountError):
            hub_accounts(settings, ["custom-service"], bad)


def test_no_accounts_yet_says_how_they_are_made(tmp_path: Path) -> None:
    with pytest.raises(AccountError, match="pyedge run"):
        load_accounts(tmp_path)


# --- how a process logs in ---


def test_an_app_logs_in_from_a_credentials_file(
    app_config: dict[str, Any], broker: Broker, tmp_path: Path
) -> None:
    credentials = tmp_path / "edge-server.json"
    credentials.write_text(json.dumps(broker.login()))
    credentials.chmod(0o600)
    config = {k: v for k, v in app_config.items() if k not in ("EDGE_MQTT_USERNAME",
              "EDGE_MQTT_PASSWORD")}  # fmt: skip
    app = create_app({**config, "EDGE_MQTT_CREDENTIALS": str(credentials)})
    try:
        assert app.extensions["pyedge"].bus.wait_connected(5)
    finally:
        app.extensions["pyedge"].close()


def test_a_service_on_its_own_marks_its_own_status_offline_when_it_dies(
    app_config: dict[str, Any], broker: Broker, recorder: MqttRecorder, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/custom-service/status"
    recorder.subscribe(f"pyedge/{node_id}/#")
    # The one service, logged in with its own account: what `pyedge run --no-broker` with
    # EDGE_SERVICES=custom-service and that account's credentials runs.
    login = broker.login("custom-service")
    app = create_app(
        {**app_config, "EDGE_MQTT_USERNAME": login["username"],
         "EDGE_MQTT_PASSWORD": login["password"]}
    )  # fmt: skip
    host = app.extensions["pyedge"]
    try:
        assert host.bus.wait_connected(5), host.bus.last_error
        recorder.wait_for(topic, lambda m: m.payload == b"online")
        # Its connection dies without a DISCONNECT, as when the process is killed: only the
        # will can tell, and the broker publishes it only where the account may write.
        host.bus._client.socket().shutdown(socket.SHUT_RDWR)
        died = recorder.wait_for(topic, lambda m: m.payload == b"offline")
        # The bus comes back by itself; a clean close then says offline once more.
        after = recorder.messages.index(died) + 1
        back = recorder.wait_for(topic, lambda m: m.payload == b"online", after=after)
        after = recorder.messages.index(back) + 1
    finally:
        host.close()
    recorder.wait_for(topic, lambda m: m.payload == b"offline", after=after)


def test_unusable_logins_are_configuration_errors(tmp_path: Path) -> None:
    credentials = tmp_path / "c.json"
    credentials.write_text('{"username": "x"}')
    with pytest.raises(ConfigError, match="EDGE_MQTT_CREDENTIALS") as error:
        mqtt_login({"EDGE_MQTT_CREDENTIALS": credentials})
    assert error.value.source == str(credentials)
    with pytest.raises(ConfigError, match="not both"):
        mqtt_login({"EDGE_MQTT_CREDENTIALS": credentials, "EDGE_MQTT_PASSWORD": "p"})
    with pytest.raises(ConfigError, match="EDGE_MQTT_PASSWORD must be set"):
        mqtt_login({"EDGE_MQTT_USERNAME": "edge-server"})


def test_pyedge_config_does_not_show_the_broker_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGE_MQTT_USERNAME", "edge-server")
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "do-not-print-me")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "EDGE_MQTT_PASSWORD=(set; not shown)" in out
    assert "do-not-print-me" not in out


# --- TLS ---


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    """A broker with a TLS listener (on every address) and the node's self-signed cert."""
    files = ensure_certificate(tmp_path / "node")
    listener = TlsListener("0.0.0.0", free_port(), files.cert, files.key)
    mosquitto = start_broker(tmp_path / "broker", tls=listener)
    yield mosquitto, files.cert
    mosquitto.stop()


def tls_bus(mosquitto: Mosquitto, host: str, ca_file: Path, node_id: str) -> Bus:
    assert mosquitto.tls is not None
    return Bus(
        BusSettings(
            host,
            mosquitto.tls.port,
            f"tls-{node_id}",
            will_topic=f"pyedge/{node_id}/tls/status",
            tls=True,
            ca_file=ca_file,
            **mosquitto.accounts.login(),
        )
    )


def test_the_bus_connects_over_tls_verifying_the_node_certificate(
    tls_broker: tuple[Mosquitto, Path], node_id: str
) -> None:
    mosquitto, cert = tls_broker
    recorder = MqttRecorder(
        "127.0.0.1", mosquitto.port, f"r-{node_id}", **mosquitto.accounts.login("subscriber")
    )
    bus = tls_bus(mosquitto, "127.0.0.1", cert, node_id)
    try:
        recorder.subscribe(f"pyedge/{node_id}/#")
        bus.start()
        assert bus.wait_connected(10), bus.last_error
        bus.publish_json(f"pyedge/{node_id}/tls/data", {"over": "tls"})
        assert recorder.wait_for(f"pyedge/{node_id}/tls/data").json() == {"over": "tls"}
        recorder.wait_for(f"pyedge/{node_id}/tls/status", lambda m: m.payload == b"online")
    finally:
        bus.close()
        recorder.close()


@pytest.mark.parametrize("wrong", ["another CA", "another name"])
def test_the_bus_refuses_a_broker_it_cannot_verify(
    tls_broker: tuple[Mosquitto, Path], tmp_path: Path, node_id: str, wrong: str
) -> None:
    mosquitto, cert = tls_broker
    if wrong == "another CA":
        # Same names, another key: what a broker in the middle would present.
        host, ca_file = "127.0.0.1", ensure_certificate(tmp_path / "impostor").cert
    else:
        host, ca_file = "127.0.0.2", cert  # loopback too, but not a name in the certificate
    bus = tls_bus(mosquitto, host, ca_file, node_id)
    try:
        bus.start()
        deadline = time.monotonic() + 10
        while "certificate verify failed" not in (bus.last_error or ""):
            assert time.monotonic() < deadline, bus.last_error
            time.sleep(0.05)
        assert not bus.connected
        if wrong == "another name":
            assert "mismatch" in (bus.last_error or "")
    finally:
        bus.close()


# The commented lines at the end of mqtt/mosquitto.conf, and what they hold.
SHIPPED_LINE = re.compile(r"^#((?:user|persistence_location|password_file|acl_file|listener|"
                          r"certfile|keyfile) .*)$", re.MULTILINE)  # fmt: skip
SHIPPED_DATA_DIR = "/home/pi/pyedge/data"


def test_the_shipped_config_runs_a_tls_listener_once_its_lines_are_uncommented(
    tmp_path: Path, node_id: str
) -> None:
    shipped = REPO_MQTT_CONFIG.read_text()
    assert "\nallow_anonymous false\n" in shipped
    enabled = SHIPPED_LINE.sub(r"\1", shipped)
    commented = set(shipped.splitlines())
    settings = [line.split()[0] for line in enabled.splitlines() if line not in commented]
    assert settings == ["user", "persistence_location", "password_file", "acl_file",
                        "listener", "listener", "certfile", "keyfile"]  # fmt: skip
    # The node's files where `pyedge run` leaves them in its data dir; the shipped paths,
    # user and ports made this machine's (a wrong path would stop Mosquitto).
    data_dir = tmp_path / "data"
    specs = plan_accounts(root="pyedge", node=node_id, services=["custom-service"])
    accounts = ensure_accounts(data_dir / "mosquitto", specs, "pyedge")
    cert = ensure_certificate(data_dir).cert
    plain, tls = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        enabled.replace(SHIPPED_DATA_DIR, str(data_dir))
        .replace("\nuser pi\n", f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
        .replace("\nlistener 1883 ", f"\nlistener {plain} ")
        .replace("\nlistener 8883 ", f"\nlistener {tls} ")
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
    recorder = bus = None
    try:
        deadline = time.monotonic() + 10
        while not (port_open("127.0.0.1", plain) and port_open("127.0.0.1", tls)):
            assert process.poll() is None, (tmp_path / "mosquitto.log").read_text()
            assert time.monotonic() < deadline, "Mosquitto did not listen"
            time.sleep(0.05)
        assert connect_result(plain).is_failure  # anonymous
        recorder = MqttRecorder("127.0.0.1", plain, f"r-{node_id}", **accounts.login("subscriber"))
        recorder.subscribe(f"pyedge/{node_id}/#")
        # A service on another machine: TLS, the node's certificate verified, its account.
        status = f"pyedge/{node_id}/custom-service/status"
        bus = Bus(
            BusSettings(
                "127.0.0.1",
                tls,
                f"tls-{node_id}",
                will_topic=status,
                tls=True,
                ca_file=cert,
                **accounts.login("custom-service"),
            )
        )
        bus.start()
        assert bus.wait_connected(10), bus.last_error
        recorder.wait_for(status, lambda m: m.payload == b"online")
    finally:
        if bus is not None:
            bus.close()
        if recorder is not None:
            recorder.close()
        process.terminate()
        process.wait(10)
        log.close()


# --- `pyedge run` and `pyedge mqtt credentials` ---


def test_run_makes_the_accounts_and_credentials_gives_a_working_login(tmp_path: Path) -> None:
    tls_port = free_port()
    tls = {"EDGE_MQTT_TLS": "1", "EDGE_MQTT_TLS_PORT": str(tls_port),
           "EDGE_MQTT_TLS_BIND": "127.0.0.1"}  # fmt: skip
    node = start_node(tmp_path, EDGE_SERVICES="custom-service", **tls)
    try:
        wait_ready(node)
        assert stat.S_IMODE((node.data_dir / "mosquitto" / "accounts.json").stat().st_mode) == 0o600
        assert connect_result(node.mqtt_port).is_failure  # anonymous, on the run's own broker
        env = {"PATH": "/usr/bin:/bin", "EDGE_MQTT_PORT": str(node.mqtt_port), **tls}
        listing = pyedge(["mqtt", "credentials", "--data-dir", str(node.data_dir)], env)
        for name in ("edge-server", "custom-service", "device-service", "subscriber"):
            assert f"\n{name} " in f"\n{listing}"
        assert f"write: pyedge/{node.node_id}/custom-service/#" in listing
        shown = pyedge(["mqtt", "credentials", "subscriber", "--data-dir", str(node.data_dir)], env)
        fields = dict(line.split(": ", 1) for line in shown.splitlines() if ": " in line)
        password = load_accounts(node.data_dir / "mosquitto").get("subscriber").password
        assert (fields["username"].strip(), fields["password"].strip()) == ("subscriber", password)
        assert fields["port"].strip() == str(node.mqtt_port)
        commands = [line for line in shown.splitlines() if line.startswith("mosquitto_sub ")]
        assert len(commands) == 2 and f"-p {tls_port} --cafile " in commands[1]
        mosquitto_sub = shutil.which("mosquitto_sub")
        assert mosquitto_sub, "mosquitto_sub is missing: apt-get install mosquitto-clients"
        for command in commands:  # as printed: plain on this machine, and verified TLS
            args = [mosquitto_sub, *shlex.split(command, comments=True)[1:], "-C", "1", "-W", "10"]
            result = subprocess.run(args, capture_output=True, text=True, timeout=20)
            assert result.returncode == 0, (command, result.stderr)
            assert result.stdout.startswith(f"pyedge/{node.node_id}/"), result.stdout
    finally:
        stop_node(node)


def pyedge(args: list[str], env: dict[str, str]) -> str:
    """Run the `pyedge` command; its output (it must succeed)."""
    result = subprocess.run([PYEDGE, *args], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_credentials_of_an_unknown_account_name_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = {"EDGE_SITE": "", "EDGE_NODE_ID": "n1"}
    ensure_accounts(tmp_path / "mosquitto", node_accounts(settings, ["custom-service"]), "pyedge")
    code = cli.main(["mqtt", "credentials", "nobody", "--data-dir", str(tmp_path)])
    assert code == 1
    assert "no broker account 'nobody'; there are: edge-server, custom-service" in (
        capsys.readouterr().err
    )
