"""Trouble that must not stop the service: a sensor failing, the disk full, the broker away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from edge_server import create_app
from tests.conftest import app_login, authorized_client, start_broker
from tests.mqtt_recorder import MqttRecorder

W1_GOOD = "57 01 4b 46 7f ff 0c 10 a2 : crc=a2 YES\n57 01 4b 46 7f ff 0c 10 a2 t=21375\n"
W1_DEVICE = "28-0316a2795dff"


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def w1_root(tmp_path: Path) -> Path:
    """A sysfs tree with one DS18B20, as the kernel's w1 driver shows it."""
    device = tmp_path / "sys" / "bus" / "w1" / "devices" / W1_DEVICE
    device.mkdir(parents=True)
    (device / "w1_slave").write_text(W1_GOOD)
    return tmp_path / "sys"


@pytest.fixture
def two_sensor_app(app_config: dict[str, Any], tmp_path: Path, w1_root: Path) -> Iterator[Flask]:
    sensors = tmp_path / "sensors.toml"
    sensors.write_text(
        '[sensors.water]\ndriver = "ds18b20"\ninterval = 0.05\n'
        f'options = {{ root = "{w1_root}", device = "{W1_DEVICE}" }}\n\n'
        '[sensors.temp]\ndriver = "simulated"\ninterval = 0.05\n'
    )
    app = create_app(
        {**app_config, "EDGE_SERVICES": "device-service", "EDGE_SENSORS": str(sensors)}
    )
    yield app
    app.extensions["pyedge"].close()


def swap(path: Path, text: str) -> None:
    """Replace a fake sysfs file at once: the kernel's never shows a half-written state,
    and write_text's truncation would let the sampling thread read it empty."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    staged.replace(path)


def test_a_failing_sensor_is_unavailable_and_the_others_go_on(
    two_sensor_app: Flask, w1_root: Path, recorder: MqttRecorder, node_id: str
) -> None:
    client = authorized_client(two_sensor_app)
    base = f"pyedge/{node_id}/device-service/sensors"
    recorder.subscribe(f"{base}/#")
    assert recorder.wait_for(f"{base}/water").json()["value"] == 21.375
    slave = w1_root / "bus" / "w1" / "devices" / W1_DEVICE / "w1_slave"
    swap(slave, W1_GOOD.replace("YES", "NO"))  # the bus starts giving bad CRCs
    recorder.wait_for(f"{base}/water/availability", lambda m: m.payload == b"offline")
    health = client.get("/api/health")
    assert health.status_code == 503
    assert "water" in health.json["services"]["device-service"]["detail"]
    assert "CRC" in client.get("/api/device-service/sensors/water").json["error"]
    seen = len(recorder.messages)
    recorder.wait_for(f"{base}/temp", after=seen)  # the other sensor is still sampled
    swap(slave, W1_GOOD)  # and the sensor comes back by itself
    recorder.wait_for(f"{base}/water/availability", lambda m: m.payload == b"online", after=seen)
    wait_for(lambda: client.get("/api/health").status_code == 200)


def test_a_full_disk_degrades_without_crashing(
    two_sensor_app: Flask, recorder: MqttRecorder, node_id: str
) -> None:
    client = authorized_client(two_sensor_app)
    device = two_sensor_app.extensions["pyedge"].runtimes["device-service"].extras["device"]
    wait_for(lambda: client.get("/api/device-service/outbox").json["drained"] > 0)
    # SQLite's own page limit: the same SQLITE_FULL error a full file system gives.
    pages = device.outbox._db.execute("PRAGMA page_count").fetchone()[0]
    device.outbox._db.execute(f"PRAGMA max_page_count = {pages}")
    wait_for(lambda: client.get("/api/health").status_code == 503)
    detail = client.get("/api/health").json["services"]["device-service"]["detail"]
    assert "full" in detail
    session = client.get("/api/device-service/ops/acquire").json
    assert session["state"] == "running"  # sampling goes on, and recovers by itself
    device.outbox._db.execute("PRAGMA max_page_count = 1073741823")
    wait_for(lambda: client.get("/api/health").status_code == 200)


def test_paho_holds_at_most_the_inflight_window_while_the_broker_is_away(
    app_config: dict[str, Any], tmp_path: Path
) -> None:
    broker = start_broker(tmp_path / "broker")
    sensors = tmp_path / "sensors.toml"
    sensors.write_text('[sensors.temp]\ndriver = "simulated"\ninterval = 0.01\n')
    app = create_app(
        {
            **app_config,
            "EDGE_MQTT_PORT": broker.port,
            **app_login(broker.accounts),
            "EDGE_SERVICES": "device-service",
            "EDGE_SENSORS": str(sensors),
            "EDGE_DEVICE_SERVICE_INFLIGHT": 20,
        }
    )
    try:
        runtime = app.extensions["pyedge"].runtimes["device-service"]
        assert runtime.bus.wait_connected(5)
        broker.stop()
        client = authorized_client(app)
        wait_for(lambda: client.get("/api/device-service/outbox").json["depth"] > 300)
        # Readings wait in the outbox, not in paho's memory.
        assert len(runtime.bus._client._out_messages) <= 20 + 10  # the window + state topics
    finally:
        app.extensions["pyedge"].close()
        broker.stop()


def test_purge_history_removes_old_readings(two_sensor_app: Flask) -> None:
    client = authorized_client(two_sensor_app)
    wait_for(lambda: client.get("/api/device-service/outbox").json["drained"] > 4)
    client.post("/api/device-service/ops/purge_history/start", json={"older_than": 0})
    session = client.post("/api/device-service/ops/purge_history/wait?timeout=5").json
    assert session["success"] is True and session["data"]["removed"] > 4
