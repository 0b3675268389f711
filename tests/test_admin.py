"""Every service's admin view (GET /api/<slug>/admin) and the services' own admin panels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from pyedge.admin import LOG_LINES, AdminPanel, RingHandler
from pyedge.schemas import HIDDEN
from pyedge.security import Role
from tests.conftest import authorized_client

ADMIN = "/api/custom-service/admin"
SENSORS = """
[sensors.temp]
driver = "simulated"
interval = 1.0
unit = "°C"
options = { waveform = "sine", minimum = 10.0, maximum = 30.0, period = 60 }

[sensors.level]
driver = "simulated"
interval = 2.0
unit = "%"
options = { waveform = "sine", minimum = 0.0, maximum = 10.0, period = 60 }
"""


def by_key(admin: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in admin["settings"]}


@pytest.fixture
def device_app(make_app: Any, tmp_path: Path) -> Flask:
    sensors = tmp_path / "sensors.toml"
    sensors.write_text(SENSORS)
    return make_app(
        EDGE_SERVICES="device-service",
        EDGE_DEVICE_SERVICE_SENSORS=str(sensors),
        EDGE_DEVICE_SERVICE_ACQUIRE_AUTOSTART=False,
        EDGE_DEVICE_SERVICE_DISCOVERY=False,
    )


def test_the_admin_view_has_every_section(client: FlaskClient, node_id: str) -> None:
    response = client.get(ADMIN)
    assert response.status_code == 200, response.json
    admin = response.json
    assert admin["slug"] == "custom-service"
    assert admin["title"] == "Custom service"
    assert admin["version"] == "1.0.0"
    assert admin["node"] == node_id
    settings = by_key(admin)
    # The service's own settings, and the core ones of its process.
    greeting = settings["EDGE_CUSTOM_SERVICE_GREETING"]
    assert greeting == {
        "key": "EDGE_CUSTOM_SERVICE_GREETING",
        "value": "Hello",
        "source": "default",
        "description": "the word /hello greets with",
        "secret": False,
        "core": False,
    }
    assert settings["EDGE_NODE_ID"]["value"] == node_id
    assert settings["EDGE_NODE_ID"]["core"] is True
    assert settings["EDGE_DATA_DIR"]["value"].endswith("data")  # a path, as text
    assert "EDGE_HTTP_PORT" not in settings  # the edge-server's own, not a service's
    health = admin["health"]
    assert health["status"] == "ok"
    assert health["checks"] == [
        {
            "name": "heartbeat_is_beating",
            "description": "Degraded when a running heartbeat has missed three beats.",
            "status": "ok",
            "detail": "heartbeat not running",
        }
    ]
    ops = {op["name"]: op for op in admin["operations"]}
    assert ops["sleep"]["kind"] == "task"
    assert ops["heartbeat"] == {
        "name": "heartbeat",
        "kind": "process",
        "state": "idle",
        "success": None,
        "description": ops["heartbeat"]["description"],
    }
    assert ops["heartbeat"]["description"].startswith("Publish")
    assert isinstance(admin["log"], list)
    [panel] = admin["panels"]
    assert panel["title"] == "Heartbeat"
    assert panel["source"] == "heartbeat"
    assert panel["edit"] == "heartbeat"
    assert panel["method"] == "PUT"
    assert panel["role"] == "operator"
    assert panel["form_schema"]["properties"]["interval"]["minimum"] == 0.1


def test_a_secret_setting_is_never_shown(client: FlaskClient, app_config: dict[str, Any]) -> None:
    response = client.get(ADMIN)
    password = by_key(response.json)["EDGE_MQTT_PASSWORD"]
    assert password["secret"] is True
    assert password["value"] == HIDDEN
    assert password["source"] == "create_app(config)"
    assert app_config["EDGE_MQTT_PASSWORD"] not in response.get_data(as_text=True)
    assert by_key(response.json)["EDGE_MQTT_USERNAME"]["value"] == app_config["EDGE_MQTT_USERNAME"]


def test_each_value_names_its_source(
    make_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[custom-service]\ngreeting = "Ahoy"\n')
    monkeypatch.setenv("EDGE_MQTT_KEEPALIVE", "45")
    app = make_app(EDGE_CONFIG=str(config), EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL=2.5)
    settings = by_key(authorized_client(app).get(ADMIN).json)
    assert settings["EDGE_CUSTOM_SERVICE_GREETING"]["value"] == "Ahoy"
    assert settings["EDGE_CUSTOM_SERVICE_GREETING"]["source"] == (
        f"{config} [custom-service] greeting"
    )
    assert settings["EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL"] == {
        "key": "EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL",
        "value": 2.5,
        "source": "create_app(config)",
        "description": "seconds between heartbeats when autostarted",
        "secret": False,
        "core": False,
    }
    assert settings["EDGE_MQTT_KEEPALIVE"]["value"] == 45
    assert settings["EDGE_MQTT_KEEPALIVE"]["source"] == "environment EDGE_MQTT_KEEPALIVE"
    assert settings["EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART"]["source"] == "create_app(config)"
    assert settings["EDGE_SITE"]["source"] == "default"


def test_the_log_keeps_the_services_recent_lines(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    own = logging.getLogger("custom_service.views")
    for number in range(LOG_LINES + 50):
        own.info("line %d", number)
    logging.getLogger("device_service.device").warning("another service's line")
    log = client.get(ADMIN).json["log"]
    assert len(log) == LOG_LINES  # bounded: the oldest went
    assert [line["message"] for line in log[:2]] == ["line 50", "line 51"]
    last = log[-1]
    assert last["message"] == f"line {LOG_LINES + 49}"
    assert last["level"] == "INFO"
    assert last["logger"] == "custom_service.views"
    assert last["ts"].endswith("Z")
    assert all("another service" not in line["message"] for line in log)

    # What its operations log (from their threads) is the service's too, tracebacks included.
    started = client.post("/api/custom-service/ops/sleep/start", json={"seconds": 0.05})
    assert started.status_code == 202
    client.post("/api/custom-service/ops/sleep/wait?timeout=5")
    own.error("it broke", exc_info=ValueError("bad value"))
    log = client.get(ADMIN).json["log"]
    messages = [line["message"] for line in log]
    assert "sleep: slept 0.05 s" in messages
    assert any(m.startswith("it broke\n") and "ValueError: bad value" in m for m in messages)


def test_two_apps_share_one_log_and_leave_no_handler(make_app: Any) -> None:
    logger = logging.getLogger("custom_service")
    before = list(logger.handlers)
    first, second = make_app(), make_app(EDGE_NODE_ID="second-node")
    handlers = [h for h in logger.handlers if isinstance(h, RingHandler)]
    assert len(handlers) == 1  # one for the service, whatever mounts it
    logger.warning("seen once")
    for app in (first, second):
        log = authorized_client(app).get(ADMIN).json["log"]
        assert [line["message"] for line in log].count("seen once") == 1
    first.extensions["pyedge"].close()
    logger.warning("still kept")
    log = authorized_client(second).get(ADMIN).json["log"]
    assert log[-1]["message"] == "still kept"
    second.extensions["pyedge"].close()
    assert logger.handlers == before
    operations = logging.getLogger("pyedge.operations").handlers
    assert not [h for h in operations if isinstance(h, RingHandler)]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_only_an_admin_may_read_it(app: Flask, role: Role) -> None:
    assert authorized_client(app, role).get(ADMIN).status_code == 403
    assert app.test_client().get(ADMIN).status_code == 401


def test_the_openapi_document_describes_it(client: FlaskClient) -> None:
    spec = client.get("/api/openapi.json").json
    get = spec["paths"][ADMIN]["get"]
    assert get["x-pyedge-role"] == "admin"
    schema = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Admin"}
    admin = spec["components"]["schemas"]["Admin"]
    assert set(admin["required"]) >= {"settings", "health", "operations", "log", "panels"}


def test_each_check_is_shown_with_the_overall_health(make_app: Any, tmp_path: Path) -> None:
    app = make_app(
        EDGE_SERVICES="container-manager",
        EDGE_CONTAINER_MANAGER_DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock",
        EDGE_CONTAINER_MANAGER_RECONCILE_AUTOSTART=False,
    )
    health = authorized_client(app).get("/api/container-manager/admin").json["health"]
    checks = {check["name"]: check for check in health["checks"]}
    assert health["status"] == "degraded"
    assert checks["engine_reachable"]["status"] == "degraded"
    assert checks["engine_reachable"]["detail"] == health["detail"]
    assert checks["apps_converging"]["status"] == "ok"  # run too, after the failed one


def test_the_device_services_sensors_panel_edits_an_interval(device_app: Flask) -> None:
    client = authorized_client(device_app)
    [panel] = client.get("/api/device-service/admin").json["panels"]
    assert panel["title"] == "Sensors"
    assert panel["source"] == "sensors"
    assert panel["columns"] == ["name", "driver", "interval", "offset", "scale", "available"]
    assert panel["key"] == "name"
    assert panel["method"] == "PATCH"
    assert panel["role"] == "admin"
    form = panel["form_schema"]["properties"]
    assert set(form) == {"interval", "offset", "scale"}
    assert form["interval"]["minimum"] == 0.01

    rows = client.get(f"/api/device-service/{panel['source']}").json
    assert {row["name"]: row["interval"] for row in rows} == {"temp": 1.0, "level": 2.0}
    path = "/api/device-service/" + panel["edit"].format(name="temp")
    changed = client.open(path, method=panel["method"], json={"interval": 2.5, "offset": -0.5})
    assert changed.status_code == 200, changed.json
    assert changed.json["interval"] == 2.5
    # As the API says: in force until the next restart, for every reader of the sensor.
    shown = {row["name"]: row for row in client.get("/api/device-service/sensors").json}
    assert shown["temp"]["interval"] == 2.5
    assert shown["temp"]["offset"] == -0.5
    assert shown["level"]["interval"] == 2.0
    assert client.get("/api/device-service/sensors/temp").json["interval"] == 2.5

    refused = client.patch(path, json={"interval": 0})
    assert refused.status_code == 422
    assert "interval" in refused.json["errors"]["json"]
    assert client.get("/api/device-service/sensors/temp").json["interval"] == 2.5
    operator = authorized_client(device_app, Role.OPERATOR)
    assert operator.patch(path, json={"interval": 3}).status_code == 403


def test_the_container_managers_policy_panel(make_app: Any, tmp_path: Path) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    app = make_app(
        EDGE_SERVICES="container-manager",
        EDGE_CONTAINER_MANAGER_DOCKER_HOST=f"unix://{tmp_path}/engine.sock",
        EDGE_CONTAINER_MANAGER_RECONCILE_AUTOSTART=False,
        EDGE_CONTAINER_MANAGER_BIND_DIRS=str(granted),
        EDGE_CONTAINER_MANAGER_CAP_ADD="NET_ADMIN",
    )
    [panel] = authorized_client(app).get("/api/container-manager/admin").json["panels"]
    assert panel["title"] == "Security policy in force"
    assert panel["edit"] is None and panel["form_schema"] is None  # read-only
    viewer = authorized_client(app, Role.VIEWER)
    policy = viewer.get(f"/api/container-manager/{panel['source']}")
    assert policy.status_code == 200
    assert policy.json["bind_dirs"] == [str(granted)]
    assert policy.json["cap_add"] == ["NET_ADMIN"]
    assert policy.json["allow_privileged"] is False
    assert policy.json["engine_socket"] == f"{tmp_path}/engine.sock"
    assert "/etc" in policy.json["system_dirs"]
    assert policy.json["security_opt"][0] == "no-new-privileges"


def test_the_custom_services_heartbeat_panel_restarts_it(app: Flask) -> None:
    client = authorized_client(app, Role.OPERATOR)
    assert client.get("/api/custom-service/heartbeat").json["running"] is False
    started = client.put("/api/custom-service/heartbeat", json={"interval": 0.1})
    assert started.status_code == 200, started.json
    assert started.json["running"] is True
    assert started.json["interval"] == 0.1
    again = client.put("/api/custom-service/heartbeat", json={"interval": 0.2})
    assert again.status_code == 200, again.json
    assert again.json["interval"] == 0.2
    session = client.get("/api/custom-service/ops/heartbeat").json
    assert session["state"] == "running" and session["params"] == {"interval": 0.2}
    assert client.put("/api/custom-service/heartbeat", json={"interval": 0}).status_code == 422
    viewer = authorized_client(app, Role.VIEWER)
    assert viewer.put("/api/custom-service/heartbeat", json={"interval": 1}).status_code == 403


def test_a_bad_panel_fails_at_declaration() -> None:
    with pytest.raises(ValueError, match="relative path"):
        AdminPanel(title="x", source="/api/other-service/secrets")
    with pytest.raises(ValueError, match="relative path"):
        AdminPanel(title="x", source="../other-service/things")
    with pytest.raises(ValueError, match="edit and form go together"):
        AdminPanel(title="x", source="things", edit="things/{name}")
    with pytest.raises(ValueError, match="method"):
        AdminPanel(title="x", source="things", method="DELETE")


@pytest.mark.parametrize(
    ("slug", "titles"),
    [("alerts", ["Rules", "Recent events"]), ("media-player", ["Player", "Media"])],
)
def test_the_user_services_panels_read_their_own_endpoints(
    make_app: Any, slug: str, titles: list[str]
) -> None:
    # Services on the public SDK only: their panels are data, each drawn from an endpoint
    # of theirs that a viewer may read; an editable one edits through an endpoint of theirs.
    app = make_app(EDGE_SERVICES=slug, EDGE_MEDIA_PLAYER_AUDIO_OUTPUT="null")
    viewer = authorized_client(app, Role.VIEWER)
    panels = authorized_client(app).get(f"/api/{slug}/admin").json["panels"]
    assert [panel["title"] for panel in panels] == titles
    for panel in panels:
        assert viewer.get(f"/api/{slug}/{panel['source']}").status_code == 200, panel
        if panel["edit"] is not None:
            assert panel["role"] == "operator" and panel["form_schema"]["properties"], panel
