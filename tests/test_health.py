"""GET /api/health: ok (200) only when the bus and every service are; degraded (503) else."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from edge_server import create_app
from tests.conftest import authorized_client, free_port
from tests.probe_service import probe


def test_healthy_node_is_200_ok(client: FlaskClient, node_id: str) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "ok"
    assert body["node"] == node_id
    assert body["mqtt"]["status"] == "connected"
    assert body["services"]["custom-service"]["status"] == "ok"


def test_a_failing_health_check_degrades_the_node(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "EDGE_PROBE_SERVICE_BROKEN": True}, services=[probe])
    try:
        app.extensions["pyedge"].bus.wait_connected(5)
        response = authorized_client(app).get("/api/health")
        assert response.status_code == 503
        assert response.json["status"] == "degraded"
        assert response.json["services"]["probe-service"] == {
            "status": "degraded",
            "detail": "probe told to be broken",
        }
        assert response.json["mqtt"]["status"] == "connected"
    finally:
        app.extensions["pyedge"].close()


def test_a_failed_process_degrades_its_service(app_config: dict[str, Any]) -> None:
    app = create_app(app_config, services=[probe])
    client = authorized_client(app)
    try:
        assert client.get("/api/health").json["services"]["probe-service"]["status"] == "ok"
        client.post("/api/probe-service/ops/fail/start", json={})
        session = client.post("/api/probe-service/ops/fail/wait?timeout=5").json
        assert session["success"] is False
        assert session["messages"][-1]["text"] == "failed: sensor bus gone"
        health = client.get("/api/health")
        assert health.status_code == 503
        assert health.json["services"]["probe-service"]["detail"] == (
            "process fail failed: sensor bus gone"
        )
    finally:
        app.extensions["pyedge"].close()


def test_an_unreachable_broker_degrades_the_node(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "EDGE_MQTT_PORT": free_port()})
    try:
        response = authorized_client(app).get("/api/health")
        assert response.status_code == 503
        assert response.json["mqtt"]["status"] == "disconnected"
        assert response.json["services"]["custom-service"]["status"] == "ok"
    finally:
        app.extensions["pyedge"].close()


def test_health_check_is_in_the_services_tree(client: FlaskClient) -> None:
    services = client.get("/api/services").json
    assert services[0]["health"]["status"] == "ok"
