"""The device-service's metrics, and malformed MQTT payloads on its subscriptions.

Actuator commands and Home Assistant's birth arrive from other clients on the real broker:
garbage there is logged and counted (`pyedge_mqtt_rejected_total`), and the service goes
on working.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from flask import Flask

from edge_server import create_app
from pyedge.security import Role
from tests.conftest import authorized_client, free_port
from tests.device.test_discovery_actuators import PREFIX
from tests.mqtt_recorder import MqttRecorder
from tests.test_metrics import scrape, until, value

DEVICE = {"service": "device-service"}
# What any client may publish where a service listens: not JSON, JSON of the wrong type or
# shape, not UTF-8, nested deeper than Python recurses, a megabyte.
GARBAGE = [
    b"garbage",
    b"\xff\xfe\xfd not utf-8",
    b"[1, 2, 3]",
    b"42",
    b"null",
    b'{"stat": true}',
    b'{"state": [true]}',
    b"[" * 100_000,
    b"x" * (1024 * 1024),
]


def test_readings_sampled_published_and_the_outbox(device_app: Flask) -> None:
    client = authorized_client(device_app, Role.VIEWER)

    def published() -> Any:
        samples = scrape(client)
        return (
            samples if value(samples, "pyedge_readings_published_total", **DEVICE) >= 10 else None
        )

    samples = until(published)
    sampled = value(samples, "pyedge_readings_sampled_total", **DEVICE, sensor="temp")
    assert sampled >= 5
    every_sensor = sum(v for _labels, v in samples["pyedge_readings_sampled_total"])
    # What is published was sampled first; nothing was dropped.
    assert every_sensor >= value(samples, "pyedge_readings_published_total", **DEVICE)
    assert value(samples, "pyedge_readings_dropped_total", **DEVICE) == 0
    assert "pyedge_outbox_depth" in samples and "pyedge_outbox_in_flight" in samples
    assert value(samples, "pyedge_outbox_oldest_age_seconds", **DEVICE) >= 0
    assert value(samples, "pyedge_sensor_available", **DEVICE, sensor="temp") == 1
    # It goes on sampling, and the counter with it.
    until(
        lambda: (
            value(scrape(client), "pyedge_readings_sampled_total", **DEVICE, sensor="temp")
            > sampled
        )
    )


def test_readings_dropped_by_a_full_outbox_are_counted(device_config: dict[str, Any]) -> None:
    # No broker there: nothing is published, and the smallest outbox overflows.
    rows = 100
    app = create_app(
        {
            **device_config,
            "EDGE_MQTT_PORT": free_port(),
            "EDGE_DEVICE_SERVICE_OUTBOX_MAX_ROWS": rows,
        }
    )
    try:
        client = authorized_client(app, Role.VIEWER)

        def dropped() -> Any:
            samples = scrape(client)
            return samples if value(samples, "pyedge_readings_dropped_total", **DEVICE) else None

        samples = until(dropped, timeout=20)
        assert value(samples, "pyedge_outbox_depth", **DEVICE) == rows
        assert value(samples, "pyedge_outbox_oldest_age_seconds", **DEVICE) > 0
        assert value(samples, "pyedge_readings_published_total", **DEVICE) == 0
        assert value(samples, "pyedge_mqtt_connected") == 0
    finally:
        app.extensions["pyedge"].close()


def test_malformed_actuator_commands_are_logged_counted_and_harmless(
    gpio_app: Flask,
    recorder: MqttRecorder,
    home_assistant: MqttRecorder,
    node_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = f"pyedge/{node_id}/device-service/actuators"
    recorder.subscribe(f"{base}/pump")
    recorder.wait_for(f"{base}/pump", lambda m: m.payload == b"OFF")
    client = authorized_client(gpio_app, Role.VIEWER)
    bad = [(f"{base}/pump/set", payload) for payload in GARBAGE]
    bad.append((f"{base}/nothing-here/set", b"ON"))  # no such actuator
    with caplog.at_level(logging.WARNING, logger="device_service.device"):
        for topic, payload in bad:
            home_assistant.client.publish(topic, payload, qos=1).wait_for_publish(5)
        until(
            lambda: (
                value(scrape(client), "pyedge_mqtt_rejected_total", kind="actuator_set") == len(bad)
            )
        )
    logged = [r for r in caplog.records if "malformed actuator_set" in r.getMessage()]
    assert len(logged) == len(bad)
    assert all(len(r.getMessage()) < 400 for r in logged)  # the megabyte is not logged
    # Still switching: a good command after the garbage works.
    seen = len(recorder.messages)
    home_assistant.client.publish(f"{base}/pump/set", b"ON", qos=1)
    recorder.wait_for(f"{base}/pump", lambda m: m.payload == b"ON", after=seen)
    device = gpio_app.extensions["pyedge"].runtimes["device-service"].extras["device"]
    assert device.actuator_states["pump"] is True


def test_a_malformed_home_assistant_birth_is_counted_and_a_good_one_still_announces(
    gpio_app: Flask,
    recorder: MqttRecorder,
    home_assistant: MqttRecorder,
    node_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = f"{PREFIX}/sensor/{node_id}/temp/config"
    recorder.subscribe(config)
    recorder.wait_for(config)
    client = authorized_client(gpio_app, Role.VIEWER)
    birth = f"{PREFIX}/status"
    # Home Assistant's own will says `offline`: that is no error. The last message, refused
    # too, marks the end (one client's messages on one topic arrive in order).
    payloads = [*GARBAGE, b"ONLINE", b"offline", json.dumps({"end": node_id}).encode()]
    expected = len(payloads) - 1  # all but `offline`
    with caplog.at_level(logging.WARNING, logger="device_service.discovery"):
        for payload in payloads:
            home_assistant.client.publish(birth, payload, qos=1).wait_for_publish(5)
        until(
            lambda: value(scrape(client), "pyedge_mqtt_rejected_total", kind="ha_birth") >= expected
        )
    rejected = value(scrape(client), "pyedge_mqtt_rejected_total", kind="ha_birth")
    assert rejected == expected
    assert len([r for r in caplog.records if "malformed ha_birth" in r.getMessage()]) == rejected
    seen = len(recorder.messages)
    home_assistant.client.publish(birth, b"online", qos=1)
    assert not recorder.wait_for(config, after=seen).retain  # announced again, live
