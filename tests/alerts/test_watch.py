"""The watch Process on a real broker: hysteresis, duration, stale, and actuator actions."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.alerts.conftest import Sensors
from tests.mqtt_recorder import MqttRecorder


def events_of(recorder: MqttRecorder, node: str, rule: str) -> list[dict[str, Any]]:
    """The events of `rule` received so far."""
    events = [m.json() for m in recorder.on(f"pyedge/{node}/alerts/events")]
    return [event for event in events if event["rule"] == rule]


def wait_events(recorder: MqttRecorder, node: str, rule: str, count: int) -> list[dict[str, Any]]:
    """Wait until `rule` has `count` events, and return them."""
    deadline = time.monotonic() + 5
    while len(events := events_of(recorder, node, rule)) < count:
        assert time.monotonic() < deadline, f"{rule}: {events}"
        time.sleep(0.05)
    return events


def test_hysteresis_duration_stale_and_the_pump(
    alerts_app: Flask,
    alerts_client: FlaskClient,
    alerts_recorder: MqttRecorder,
    sensors: Sensors,
    node_id: str,
) -> None:
    recorder, client = alerts_recorder, alerts_client
    pump = {"actuator": "pump", "state": "ON", "on": "fire"}
    rules = [
        {"name": "hot", "sensor": "probe", "kind": "above", "threshold": 30, "hysteresis": 2,
         "severity": "critical",
         "actions": [pump, {"actuator": "pump", "state": "OFF", "on": "clear"}]},
        {"name": "sustained", "sensor": "level", "field": "depth", "kind": "outside",
         "low": 0, "high": 50, "duration": 0.6},
        {"name": "quiet", "sensor": "heartbeat", "kind": "stale", "stale_after": 0.5},
    ]  # fmt: skip
    for rule in rules:
        assert client.post("/api/alerts/rules", json=rule).status_code == 201
    time.sleep(0.2)  # the subscriptions reach the broker

    # Hysteresis: above 30 fires; back to 29.5 or up to 30.5 within the band does not
    # flap; only 27.9 (below 30 - 2) clears, and 31 fires again.
    for value in (25, 31, 29.5, 30.5, 29, 27.9, 29, 31):
        sensors.publish("probe", value)
        time.sleep(0.05)
    events = wait_events(recorder, node_id, "hot", 3)
    time.sleep(0.3)
    events = events_of(recorder, node_id, "hot")
    assert [(e["state"], e["value"]) for e in events] == [
        ("firing", 31.0),
        ("ok", 27.9),
        ("firing", 31.0),
    ]
    assert events[0]["severity"] == "critical" and events[0]["sensor"] == "probe"
    assert "above 30" in events[0]["message"] and events[0]["ts"]

    # The actuator action reached the device-service: the pump's retained state is ON.
    topic = f"pyedge/{node_id}/device-service/actuators/pump"
    recorder.wait_for(topic, lambda m: m.payload == b"ON")
    pumps = client.get("/api/device-service/actuators").json
    assert [p["state"] for p in pumps if p["name"] == "pump"] == [True]
    recorder.wait_for(f"pyedge/{node_id}/alerts/rules/hot", lambda m: m.json()["state"] == "firing")

    # Duration: a 0.2 s spike outside the band does not fire; 0.6 s of it does.
    sensors.publish("level", 0, depth=70)
    time.sleep(0.2)
    sensors.publish("level", 0, depth=20)
    time.sleep(0.8)
    assert events_of(recorder, node_id, "sustained") == []
    spike = time.monotonic()
    sensors.publish("level", 0, depth=-5)
    (fired,) = wait_events(recorder, node_id, "sustained", 1)
    assert time.monotonic() - spike >= 0.55
    assert fired["state"] == "firing" and fired["value"] == -5

    # Stale: no heartbeat for 0.5 s fires; a reading clears it.
    assert events_of(recorder, node_id, "quiet")[0]["state"] == "firing"
    sensors.publish("heartbeat", 1)
    assert [e["state"] for e in wait_events(recorder, node_id, "quiet", 2)] == ["firing", "ok"]

    # A malformed reading is refused, not fatal.
    sensors.raw("probe", b"not json")
    sensors.publish("probe", 20)
    (_fire, _clear, _fire2, cleared) = wait_events(recorder, node_id, "hot", 4)
    assert cleared["state"] == "ok"
    recorder.wait_for(topic, lambda m: m.payload == b"OFF")

    # The API and the history say the same, newest first.
    hot = client.get("/api/alerts/rules/hot").json
    assert (hot["state"], hot["value"], hot["source"]) == ("ok", 20.0, "api")
    history = client.get("/api/alerts/history?rule=hot&limit=3").json
    assert [(e["state"], e["value"]) for e in history] == [
        ("ok", 20.0),
        ("firing", 31.0),
        ("ok", 27.9),
    ]
    assert {e["rule"] for e in client.get("/api/alerts/history").json} == {
        "hot",
        "sustained",
        "quiet",
    }
    runtime = alerts_app.extensions["pyedge"].runtimes["alerts"]
    assert runtime.health().detail == "3 rules, 1 firing"  # sustained still is

    # The test Task: an event marked test, and the fire actions; the state stays.
    started = client.post("/api/alerts/ops/test/start", json={"rule": "quiet", "value": 3})
    assert started.status_code in (200, 202), started.json
    done = client.post("/api/alerts/ops/test/wait?timeout=5").json
    assert done["success"] is True, done
    test_event = wait_events(recorder, node_id, "quiet", 3)[-1]
    assert test_event["test"] is True and test_event["value"] == 3
    assert client.get("/api/alerts/rules/quiet").json["state"] == "ok"

    # Stopping watch degrades the service.
    assert client.post("/api/alerts/ops/watch/stop").status_code == 200
    client.post("/api/alerts/ops/watch/wait?timeout=5")
    assert "watch not running" in runtime.health().detail
