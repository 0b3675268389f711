"""/rules CRUD with roles and validation, the TOML rules file, and the retained state."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from alerts.rules import load_rules_file
from pyedge import ConfigError
from pyedge.security import Role
from tests.alerts.conftest import Sensors
from tests.conftest import authorized_client
from tests.mqtt_recorder import MqttRecorder

RULES_TOML = """
[rules.too-cold]
sensor = "probe"
kind = "below"
threshold = 5.0
hysteresis = 1.0
duration = 0
severity = "critical"
actions = [{ actuator = "pump", state = "OFF", on = "fire" }]
"""

HOT = {"name": "hot", "sensor": "probe", "kind": "above", "threshold": 30}
# A PUT's body: the path names the rule.
BODY = {key: value for key, value in HOT.items() if key != "name"}


def test_crud_roles_validation_and_file_rules(
    make_app: Callable[..., Flask],
    tmp_path: Path,
    alerts_recorder: MqttRecorder,
    sensors: Sensors,
    node_id: str,
) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES_TOML)
    app = make_app(EDGE_ALERTS_RULES=str(rules_file))
    client, recorder = authorized_client(app, Role.OPERATOR), alerts_recorder

    # Viewers read; operators change.
    viewer = authorized_client(app, Role.VIEWER)
    assert viewer.post("/api/alerts/rules", json=HOT).status_code == 403
    assert viewer.get("/api/alerts/rules").status_code == 200
    assert client.post("/api/alerts/rules", json=HOT).status_code == 201
    assert client.post("/api/alerts/rules", json=HOT).status_code == 409

    # Bad rules: 422 with the envelope, naming the field.
    bad = {
        "threshold": {**HOT, "name": "a", "threshold": None},
        "low": {**HOT, "name": "b", "kind": "outside", "high": 1},
        "hysteresis": {**HOT, "name": "c", "hysteresis": -1},
        "name": {**HOT, "name": "Not A Slug"},
        "kind": {**HOT, "name": "d", "kind": "sideways"},
        "stale_after": {**HOT, "name": "e", "kind": "stale"},
        "actions": {**HOT, "name": "f", "actions": [{"webhook": "ftp://x", "on": "fire"}]},
        "colour": {**HOT, "name": "g", "colour": "red"},
    }
    for field, rule in bad.items():
        response = client.post("/api/alerts/rules", json=rule)
        assert response.status_code == 422, (field, response.json)
        assert field in response.json["errors"]["json"], (field, response.json)
    assert client.put("/api/alerts/rules/hot", json={**HOT, "name": "other"}).status_code == 422

    # The list: the file's rule (read-only, 409 naming the file) and the API's.
    listed = {rule["name"]: rule for rule in client.get("/api/alerts/rules").json}
    assert listed["too-cold"]["source"] == str(rules_file)
    assert listed["too-cold"]["actions"][0]["actuator"] == "pump"
    assert listed["hot"]["source"] == "api" and listed["hot"]["state"] == "ok"
    for response in (
        client.put("/api/alerts/rules/too-cold", json=BODY),
        client.delete("/api/alerts/rules/too-cold"),
    ):
        assert response.status_code == 409
        assert str(rules_file) in response.json["message"]

    # The file's rule is watched like the others.
    time.sleep(0.2)
    sensors.publish("probe", 4)
    fired = recorder.wait_for(f"pyedge/{node_id}/alerts/events")
    assert fired.json()["rule"] == "too-cold" and not fired.retain

    # PUT replaces (its state starts afresh, its retained state is cleared); the change
    # is watched at once; DELETE clears the retained state with an empty payload.
    state_topic = f"pyedge/{node_id}/alerts/rules/hot"
    sensors.publish("probe", 31)
    recorder.wait_for(state_topic, lambda m: m.payload and m.json()["state"] == "firing")
    changed = client.put("/api/alerts/rules/hot", json={**BODY, "threshold": 40})
    assert changed.status_code == 200 and changed.json["threshold"] == 40
    recorder.wait_for(state_topic, lambda m: m.payload == b"")
    assert client.get("/api/alerts/rules/hot").json["state"] == "ok"
    sensors.publish("probe", 41)
    firing = recorder.wait_for(f"pyedge/{node_id}/alerts/events", lambda m: m.json()["value"] == 41)
    assert firing.json()["rule"] == "hot"
    assert client.put("/api/alerts/rules/hot", json={**BODY, "enabled": False}).status_code == 200
    assert client.get("/api/alerts/rules/hot").json["state"] == "off"
    assert viewer.delete("/api/alerts/rules/hot").status_code == 403
    assert client.delete("/api/alerts/rules/hot").status_code == 204
    assert client.get("/api/alerts/rules/hot").status_code == 404
    assert client.delete("/api/alerts/rules/hot").status_code == 404

    # API rules persist across a restart; the file's are read again.
    app.extensions["pyedge"].close()
    again = authorized_client(make_app(EDGE_ALERTS_RULES=str(rules_file)), Role.OPERATOR)
    assert again.post("/api/alerts/rules", json={**HOT, "name": "kept"}).status_code == 201
    names = [rule["name"] for rule in again.get("/api/alerts/rules").json]
    assert names == ["kept", "too-cold"]


def test_a_bad_rules_file_names_the_key_and_degrades_the_service(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    path = tmp_path / "rules.toml"
    cases = {
        '[rules.hot]\nsensor = "probe"\nkind = "above"\n': "rules.hot.threshold",
        '[rules.hot]\nsensor = "probe"\nkind = "above"\nthreshold = 1\nfor = 3\n': "rules.hot.for",
        '[rules.hot]\nsensor = "p"\nkind = "above"\nthreshold = 1\n'
        'actions = [{ actuator = "pump" }]\n': "rules.hot.actions.0.state",
        '[rules."Bad Name"]\nsensor = "p"\n': "rules.Bad Name",
        "[rules]\nhot = 3\n": "rules.hot",
        "[rulez.hot]\n": "rulez",
        "rules = [": "EDGE_ALERTS_RULES",
    }
    for text, key in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_rules_file(path)
        assert caught.value.key == key and caught.value.source == str(path), text
    with pytest.raises(ConfigError, match="file not found"):
        load_rules_file(tmp_path / "missing.toml")

    path.write_text(next(iter(cases)))
    app = make_app(EDGE_ALERTS_RULES=str(path))
    health = app.extensions["pyedge"].runtimes["alerts"].health()
    assert health.status == "degraded"
    assert "rules.hot.threshold" in health.detail and str(path) in health.detail
    # The API's rules still work meanwhile.
    client = authorized_client(app)
    assert client.post("/api/alerts/rules", json=HOT).status_code == 201
