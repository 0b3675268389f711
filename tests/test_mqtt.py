"""What the services say on the real broker, read back by a separate subscriber."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_server import create_app
from pyedge import Bus, BusSettings
from tests.conftest import Broker
from tests.mqtt_recorder import MqttRecorder

OPS = "/api/custom-service/ops"


def test_every_state_change_is_published_retained(
    client: FlaskClient, recorder: MqttRecorder, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/custom-service/ops/sleep"
    recorder.subscribe(topic)
    recorder.wait_for(topic, lambda m: m.json()["state"] == "idle")  # retained at start-up

    client.post(f"{OPS}/sleep/start", json={"seconds": 0.2})
    client.post(f"{OPS}/sleep/wait")

    done = recorder.wait_for(topic, lambda m: m.json()["state"] == "done").json()
    assert done["success"] is True
    assert done["op"] == "sleep" and done["kind"] == "task"
    assert done == client.get(f"{OPS}/sleep").json
    states = [m.json()["state"] for m in recorder.on(topic)]
    assert states.index("starting") < states.index("running") < states.index("done")


def test_a_late_subscriber_gets_the_current_session(
    client: FlaskClient, broker: Broker, node_id: str
) -> None:
    client.post(f"{OPS}/sleep/start", json={"seconds": 0.1})
    client.post(f"{OPS}/sleep/wait")
    late = MqttRecorder(
        broker.host, broker.port, f"late-{uuid.uuid4().hex[:6]}", **broker.login("subscriber")
    )
    try:
        topic = f"pyedge/{node_id}/custom-service/ops/sleep"
        late.subscribe(topic)
        # The retained copy, first; `wait` answered from memory, so the `done` copy may
        # still be on its way to the broker: it follows (live) if this one is older.
        first = late.wait_for(topic)
        assert first.retain
        assert first.json()["state"] in ("running", "done")
        late.wait_for(topic, lambda m: m.json()["state"] == "done")
    finally:
        late.close()


def test_heartbeat_publishes_seq_and_timestamp_until_stopped(
    client: FlaskClient, recorder: MqttRecorder, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/custom-service/heartbeat"
    recorder.subscribe(topic)
    client.post(f"{OPS}/heartbeat/start", json={"interval": 0.1})
    recorder.wait_for(topic, lambda m: m.json()["seq"] == 3)
    client.post(f"{OPS}/heartbeat/stop")
    client.post(f"{OPS}/heartbeat/wait?timeout=5")

    beats = [m.json() for m in recorder.on(topic)]
    assert [b["seq"] for b in beats] == list(range(1, len(beats) + 1))
    assert all(b["ts"].endswith("Z") and "T" in b["ts"] for b in beats)
    count = len(beats)
    assert recorder.on(topic)[-1].json()["seq"] == count  # nothing after the stop


def test_status_is_online_while_up_and_offline_after_close(
    app_config: dict[str, Any], recorder: MqttRecorder, node_id: str
) -> None:
    recorder.subscribe(f"pyedge/{node_id}/+/status")
    app = create_app(app_config)
    for slug in ("edge-server", "custom-service"):
        recorder.wait_for(f"pyedge/{node_id}/{slug}/status", lambda m: m.payload == b"online")
    app.extensions["pyedge"].close()
    for slug in ("edge-server", "custom-service"):
        recorder.wait_for(f"pyedge/{node_id}/{slug}/status", lambda m: m.payload == b"offline")


def test_last_will_marks_the_process_offline_when_its_connection_dies(
    broker: Broker, recorder: MqttRecorder, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/probe/status"
    recorder.subscribe(topic)
    bus = Bus(
        BusSettings(broker.host, broker.port, f"will-{node_id}", will_topic=topic, **broker.login())
    )
    bus.start()
    assert bus.wait_connected(5)
    recorder.wait_for(topic, lambda m: m.payload == b"online")
    bus._client.socket().shutdown(socket.SHUT_RDWR)  # dies: no DISCONNECT is sent
    recorder.wait_for(topic, lambda m: m.payload == b"offline")
    bus.close()


def test_the_bus_reconnects_and_restores_subscriptions(broker: Broker, node_id: str) -> None:
    received: list[bytes] = []
    bus = Bus(
        BusSettings(
            broker.host,
            broker.port,
            f"re-{node_id}",
            will_topic=f"pyedge/{node_id}/probe/status",
            **broker.login(),
        )
    )
    bus.subscribe(f"pyedge/{node_id}/probe/in", lambda m: received.append(m.payload))
    bus.start()
    assert bus.wait_connected(5)
    # The `recorder` fixture only reads: an edge-server client sends.
    sender = MqttRecorder(broker.host, broker.port, f"send-{node_id}", **broker.login())
    sender.client.publish(f"pyedge/{node_id}/probe/in", b"one", qos=1).wait_for_publish(5)
    _wait(lambda: received == [b"one"])

    drop_connection_and_reconnect(bus)
    # The re-SUBSCRIBE and our PUBLISH travel on two sockets: until the broker has the
    # subscription again a message can pass it by, so send until one is delivered.
    deadline = time.monotonic() + 10
    while b"two" not in received:
        assert time.monotonic() < deadline, "subscription not restored"
        sender.client.publish(f"pyedge/{node_id}/probe/in", b"two", qos=1).wait_for_publish(5)
        time.sleep(0.1)
    assert received[0] == b"one" and set(received[1:]) == {b"two"}
    bus.close()
    sender.close()


def test_sessions_are_republished_after_a_reconnect(
    app: Flask, recorder: MqttRecorder, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/custom-service/ops/sleep"
    recorder.subscribe(topic)
    recorder.wait_for(topic)
    before = len(recorder.on(topic))
    bus = app.extensions["pyedge"].bus
    drop_connection_and_reconnect(bus)
    _wait(lambda: len(recorder.on(topic)) > before)


def drop_connection_and_reconnect(bus: Bus) -> None:
    """Cut the bus's socket as a network fault would, and wait for paho to reconnect."""
    # shutdown, not close: a closed fd can be reused by another socket before paho
    # notices, while shutdown wakes paho with EOF at once.
    bus._client.socket().shutdown(socket.SHUT_RDWR)
    _wait(lambda: not bus.connected)
    assert bus.wait_connected(10), "no reconnect"


def _wait(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_broker_refusing_mqtt5_gets_mqtt_311(broker: Broker, node_id: str) -> None:
    bus = Bus(
        BusSettings(
            broker.host,
            broker.port,
            f"v311-{node_id}",
            will_topic=f"pyedge/{node_id}/probe/status",
            **broker.login(),
        )
    )
    # Mosquitto 2 speaks MQTT 5, so play its refusal as an MQTT 3.1.1-only broker sends it;
    # the fallback then connects to the real broker.
    refusal = ReasonCode(PacketTypes.CONNACK, identifier=0x84)
    bus._handle_connect(bus._client, None, None, refusal, None)  # type: ignore[arg-type]
    assert bus.wait_connected(10)
    assert bus._client.protocol is MQTTProtocolVersion.MQTTv311
    bus.close()


def test_close_racing_the_first_connect_never_leaves_online_behind(
    broker: Broker, recorder: MqttRecorder, node_id: str
) -> None:
    for i in range(40):
        topic = f"pyedge/{node_id}/race-{i}/status"
        bus = Bus(
            BusSettings(
                broker.host, broker.port, f"race-{node_id}-{i}", will_topic=topic, **broker.login()
            )
        )
        bus.start()
        time.sleep(i % 5 / 1000)  # close at 0-4 ms: before, during and after the CONNACK
        bus.close()
    recorder.subscribe(f"pyedge/{node_id}/+/status")
    time.sleep(0.5)  # retained messages arrive right after the SUBACK
    left_online = [m.topic for m in recorder.messages if m.payload == b"online"]
    assert left_online == []


def test_a_burst_through_the_bus_reaches_a_qos1_subscriber_whole_and_in_order(
    broker: Broker, recorder: MqttRecorder, node_id: str
) -> None:
    # Mosquitto's default queue limit (1000) would drop most of this burst for a subscriber
    # that falls behind; mqtt/mosquitto.conf sets the limits so that none is lost.
    count = 5000
    topic = f"pyedge/{node_id}/burst/data"
    recorder.subscribe(topic)
    bus = Bus(
        BusSettings(
            broker.host,
            broker.port,
            f"burst-{node_id}",
            will_topic=f"pyedge/{node_id}/burst/status",
            **broker.login(),
        )
    )
    bus.start()
    assert bus.wait_connected(5)
    infos = [bus.publish_json(topic, {"seq": seq}) for seq in range(count)]
    for info in infos:
        info.wait_for_publish(30)
    _wait(lambda: len(recorder.on(topic)) >= count, timeout=30)
    assert [m.json()["seq"] for m in recorder.on(topic)] == list(range(count))
    bus.close()


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_overlapping_filters_deliver_each_message_once_to_each(
    broker: Broker, node_id: str, protocol: MQTTProtocolVersion
) -> None:
    # Mosquitto sends a copy per matching subscription: without subscription identifiers
    # (MQTT 5) every callback would run once per copy, an operation call twice.
    wide: list[bytes] = []
    narrow: list[bytes] = []
    other: list[bytes] = []
    bus = Bus(
        BusSettings(
            broker.host,
            broker.port,
            f"ovl-{node_id}",
            will_topic=f"pyedge/{node_id}/probe/status",
            protocol=protocol,
            **broker.login(),
        )
    )
    bus.subscribe(f"pyedge/{node_id}/#", lambda m: wide.append(m.payload))
    bus.subscribe(f"pyedge/{node_id}/probe/+", lambda m: narrow.append(m.payload))
    bus.subscribe(f"pyedge/{node_id}/elsewhere", lambda m: other.append(m.payload))
    bus.start()
    try:
        assert bus.wait_connected(5)
        sender = MqttRecorder(broker.host, broker.port, f"send-{node_id}", **broker.login())
        try:
            topic = f"pyedge/{node_id}/probe/in"
            sender.client.publish(topic, b"one", qos=1).wait_for_publish(5)
            sender.client.publish(f"pyedge/{node_id}/last", b"end", qos=1).wait_for_publish(5)
            _wait(lambda: b"end" in wide)
            time.sleep(0.2)  # a duplicate would come on the same connection, in order
            if protocol is MQTTProtocolVersion.MQTTv5:
                assert wide.count(b"one") == 1 and narrow.count(b"one") == 1
            else:  # MQTT 3.1.1 has no identifiers: each still gets it, as paho gives it
                assert b"one" in wide and b"one" in narrow
            assert other == []
            # Unsubscribed, a filter gets nothing more; the others go on.
            bus.unsubscribe(f"pyedge/{node_id}/probe/+")
            sender.client.publish(topic, b"two", qos=1).wait_for_publish(5)
            _wait(lambda: b"two" in wide)
            time.sleep(0.2)
            assert b"two" not in narrow
        finally:
            sender.close()
    finally:
        bus.close()
