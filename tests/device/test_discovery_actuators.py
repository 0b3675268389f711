"""Home Assistant discovery and actuators, against the real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import authorized_client
from tests.device.conftest import GPIO_SENSORS as SENSORS
from tests.device.conftest import start_device as start
from tests.mqtt_recorder import MqttRecorder

# The default prefix: the test broker's ACL lets the device-service announce under it, for
# its own node only (<prefix>/<component>/<node>/...), which keeps the tests apart.
PREFIX = "homeassistant"


def test_discovery_configs_describe_every_entity(
    gpio_app: Flask, recorder: MqttRecorder, node_id: str
) -> None:
    prefix = PREFIX
    recorder.subscribe(f"{prefix}/+/{node_id}/#")
    temp = recorder.wait_for(f"{prefix}/sensor/{node_id}/temp/config").json()
    assert temp["unique_id"] == f"pyedge_{node_id}_temp"
    assert temp["state_topic"] == f"pyedge/{node_id}/device-service/sensors/temp"
    assert temp["value_template"] == "{{ value_json.value }}"
    assert (temp["unit_of_measurement"], temp["device_class"], temp["state_class"]) == (
        "°C",
        "temperature",
        "measurement",
    )
    assert temp["device"]["identifiers"] == [f"pyedge_{node_id}"]
    assert temp["availability_mode"] == "all"
    assert {a["topic"] for a in temp["availability"]} == {
        f"pyedge/{node_id}/edge-server/status",
        f"pyedge/{node_id}/device-service/status",
        f"pyedge/{node_id}/device-service/sensors/temp/availability",
    }
    pump = recorder.wait_for(f"{prefix}/switch/{node_id}/pump/config").json()
    assert pump["command_topic"] == f"pyedge/{node_id}/device-service/actuators/pump/set"
    assert pump["state_topic"] == f"pyedge/{node_id}/device-service/actuators/pump"
    door = recorder.wait_for(f"{prefix}/binary_sensor/{node_id}/door_state/config").json()
    assert door["value_template"] == "{{ 'ON' if value_json.state else 'OFF' }}"


def test_configs_are_announced_again_when_home_assistant_is_born(
    gpio_app: Flask, recorder: MqttRecorder, home_assistant: MqttRecorder, node_id: str
) -> None:
    prefix = PREFIX
    topic = f"{prefix}/sensor/{node_id}/temp/config"
    recorder.subscribe(topic)
    recorder.wait_for(topic)
    seen = len(recorder.messages)
    home_assistant.client.publish(f"{prefix}/status", b"online", qos=1).wait_for_publish(5)
    again = recorder.wait_for(topic, after=seen)
    assert not again.retain  # a live re-announcement, not the retained copy


def test_an_actuator_switches_over_mqtt_and_echoes_its_state(
    gpio_app: Flask, recorder: MqttRecorder, home_assistant: MqttRecorder, node_id: str
) -> None:
    base = f"pyedge/{node_id}/device-service/actuators/pump"
    recorder.subscribe(base)
    recorder.wait_for(base, lambda m: m.payload == b"OFF")
    home_assistant.client.publish(f"{base}/set", b"ON", qos=1)
    recorder.wait_for(base, lambda m: m.payload == b"ON")
    home_assistant.client.publish(f"{base}/set", json.dumps({"state": False}), qos=1)
    recorder.wait_for(base, lambda m: m.payload == b"OFF", after=2)
    pin = gpio_app.extensions["pyedge"].runtimes["device-service"].extras["device"]
    assert pin.actuator_states["pump"] is False


def test_an_actuator_switches_over_the_api(
    gpio_app: Flask, recorder: MqttRecorder, node_id: str
) -> None:
    client: FlaskClient = authorized_client(gpio_app)
    base = f"pyedge/{node_id}/device-service/actuators/pump"
    recorder.subscribe(base)
    response = client.put("/api/device-service/actuators/pump", json={"state": True})
    assert response.status_code == 200 and response.json["state"] is True
    recorder.wait_for(base, lambda m: m.payload == b"ON")
    assert client.get("/api/device-service/actuators").json == [
        {"name": "pump", "state": True, "topic": base}
    ]
    assert client.put("/api/device-service/actuators/temp", json={"state": True}).status_code == 404
    assert client.put("/api/device-service/actuators/pump", json={"state": "x"}).status_code == 422


@pytest.mark.parametrize(
    ("changes", "sensors", "left"),
    [
        ({}, SENSORS.split("[sensors.pump]")[0], {"sensor/{node}/temp/config"}),
        ({"EDGE_DEVICE_SERVICE_DISCOVERY": False}, SENSORS, set()),
    ],
    ids=["sensors-removed-from-the-file", "discovery-turned-off"],
)
def test_no_ghost_entity_is_left_behind(
    app_config: dict[str, Any],
    tmp_path: Path,
    mock_gpio: None,
    recorder: MqttRecorder,
    node_id: str,
    changes: dict[str, Any],
    sensors: str,
    left: set[str],
) -> None:
    first = start(app_config, tmp_path)
    first.extensions["pyedge"].close()
    second = start({**app_config, **changes}, tmp_path, sensors)  # same data dir: it remembers
    try:
        prefix = PREFIX
        time.sleep(0.5)  # the clearing messages are out
        recorder.subscribe(f"{prefix}/+/{node_id}/#")
        time.sleep(0.5)  # every retained config left would have arrived by now
        retained = {m.topic for m in recorder.messages if m.retain and m.payload}
        assert retained == {f"{prefix}/{topic.format(node=node_id)}" for topic in left}
    finally:
        second.extensions["pyedge"].close()
