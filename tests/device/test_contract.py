"""The MQTT contract of readings, read back by an independent subscriber on the real broker."""

from __future__ import annotations

import time

from flask.testing import FlaskClient

from tests.mqtt_recorder import MqttRecorder


def test_readings_follow_the_topic_and_payload_contract(
    device_client: FlaskClient, recorder: MqttRecorder, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/device-service/sensors/temp"
    recorder.subscribe(topic)
    recorder.wait_for(topic, lambda m: m.json()["seq"] >= 5)
    readings = [m.json() for m in recorder.on(topic)]
    for reading in readings:
        assert set(reading) == {"value", "unit", "ts", "seq"}
        assert reading["unit"] == "°C"
        assert 10.0 <= reading["value"] <= 30.0
        assert reading["ts"].endswith("Z") and len(reading["ts"]) == 24  # ms precision
    seqs = [r["seq"] for r in readings]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [r["ts"] for r in readings] == sorted(r["ts"] for r in readings)


def test_the_latest_reading_is_retained_and_availability_announced(
    device_client: FlaskClient, recorder: MqttRecorder, node_id: str
) -> None:
    base = f"pyedge/{node_id}/device-service/sensors"
    deadline = time.monotonic() + 10
    while device_client.get("/api/device-service/outbox").json["drained"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    recorder.subscribe(f"{base}/#")  # after the first readings: they come retained
    retained = recorder.wait_for(f"{base}/temp", lambda m: m.retain)
    assert retained.json()["seq"] >= 1
    assert recorder.wait_for(f"{base}/temp/availability").payload == b"online"


def test_calibration_is_applied_before_publishing(
    device_client: FlaskClient, recorder: MqttRecorder, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/device-service/sensors/level"
    recorder.subscribe(topic)
    value = recorder.wait_for(topic).json()["value"]
    assert 1.5 <= value <= 21.5  # raw 0..10, times 2, plus 1.5


def test_api_shows_sensors_outbox_and_history(device_client: FlaskClient) -> None:
    device_client.post("/api/device-service/ops/acquire/wait?timeout=0.5")
    sensors = {s["name"]: s for s in device_client.get("/api/device-service/sensors").json}
    assert set(sensors) == {"temp", "level"}
    assert sensors["temp"]["available"] is True
    assert sensors["temp"]["last"]["seq"] >= 1
    outbox = device_client.get("/api/device-service/outbox").json
    assert outbox["drained"] >= 1 and outbox["dropped"] == 0
    history = device_client.get("/api/device-service/sensors/temp/history?limit=3").json
    assert history["downsampled"] is True
    assert len(history["points"]) <= 3
    assert sum(p["count"] for p in history["points"]) >= 2
    assert device_client.get("/api/device-service/sensors/nope").status_code == 404


def test_patch_changes_calibration_and_rejects_unknown_fields(device_client: FlaskClient) -> None:
    patched = device_client.patch("/api/device-service/sensors/temp", json={"offset": 100.0})
    assert patched.status_code == 200 and patched.json["offset"] == 100.0
    bad = device_client.patch("/api/device-service/sensors/temp", json={"driver": "host"})
    assert bad.status_code == 422


def test_read_task_returns_values_now(device_client: FlaskClient) -> None:
    assert (
        device_client.post(
            "/api/device-service/ops/read/start", json={"sensors": ["temp"]}
        ).status_code
        == 202
    )
    session = device_client.post("/api/device-service/ops/read/wait?timeout=5").json
    assert session["success"] is True
    assert set(session["data"]["values"]) == {"temp"}
    device_client.post("/api/device-service/ops/read/start", json={"sensors": ["nope"]})
    failed = device_client.post("/api/device-service/ops/read/wait?timeout=5").json
    assert failed["success"] is False and "no sensor nope" in failed["messages"][-1]["text"]


def test_bad_history_and_patch_input_is_422(device_client: FlaskClient) -> None:
    base = "/api/device-service/sensors/temp"
    queries = [
        "until=0001-01-01T00:00:00Z",
        "since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
        "limit=0",
        "since=yesterday",
    ]
    for query in queries:
        response = device_client.get(f"{base}/history?{query}")
        assert response.status_code == 422, query
        assert response.json["code"] == 422
    for body in ({"interval": 1e308}, {"scale": 1e308}, {"offset": "x"}, {"interval": 0}):
        assert device_client.patch(base, json=body).status_code == 422, body
