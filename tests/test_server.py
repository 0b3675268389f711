"""The edge-server's own surface: services tree, front page, errors, the custom REST resource."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from edge_server import create_app
from tests.conftest import authorized_client


def test_services_tree_lists_mounted_services(client: FlaskClient, node_id: str) -> None:
    services = client.get("/api/services").json
    assert [s["slug"] for s in services] == ["custom-service"]
    custom = services[0]
    assert custom["title"] == "Custom service"
    assert custom["version"] == "1.0.0"
    assert custom["mode"] == "local"
    assert custom["node"] == node_id
    assert custom["url"] == "/api/custom-service"
    assert {(op["name"], op["kind"]) for op in custom["ops"]} == {
        ("sleep", "task"),
        ("heartbeat", "process"),
    }


def test_front_page_lists_services_and_health(client: FlaskClient, node_id: str) -> None:
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert f"PyEdge <span>{node_id}</span>" in page
    assert "Custom service" in page and "custom-service" in page
    assert 'href="/api/docs"' in page


@pytest.mark.parametrize("path", ["/api/nowhere", "/api/custom-service/nowhere", "/api"])
def test_unknown_api_path_is_404_with_the_error_envelope(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json == {"code": 404, "status": "Not Found"}


def test_wrong_method_is_405_with_the_error_envelope(client: FlaskClient) -> None:
    response = client.delete("/api/health")
    assert response.status_code == 405
    assert response.json == {"code": 405, "status": "Method Not Allowed"}
    # RFC 9110: a 405 says which methods the resource has.
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert client.put("/api/auth/users").headers["Allow"] == "GET, HEAD, OPTIONS, POST"


def test_hello_uses_the_configured_greeting(app_config: dict[str, Any], node_id: str) -> None:
    app = create_app({**app_config, "EDGE_CUSTOM_SERVICE_GREETING": "Moin"})
    try:
        response = authorized_client(app).get("/api/custom-service/hello?name=Ada")
        assert response.json == {"message": "Moin, Ada!", "node": node_id}
    finally:
        app.extensions["pyedge"].close()


def test_hello_defaults_and_validates_its_query(client: FlaskClient) -> None:
    assert client.get("/api/custom-service/hello").json["message"] == "Hello, world!"
    response = client.get("/api/custom-service/hello?name=" + "x" * 65)
    assert response.status_code == 422
    assert "name" in response.json["errors"]["query"]


def test_ticks_stream_as_server_sent_events(client: FlaskClient, node_id: str) -> None:
    response = client.get("/api/custom-service/ticks?count=3&interval=0")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    events = response.get_data(as_text=True).split("\n\n")
    assert events[0] == f'id: 1\ndata: {{"seq":1,"node":"{node_id}"}}'
    assert events[2].startswith("id: 3\n")
    assert events[3] == "event: end\ndata: {}"
    assert client.get("/api/custom-service/ticks?count=0").status_code == 422


def test_autostart_process_runs_once_when_enabled(app_config: dict[str, Any]) -> None:
    app = create_app(
        {
            **app_config,
            "EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART": True,
            "EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL": 0.2,
        }
    )
    try:
        session = authorized_client(app).get("/api/custom-service/ops/heartbeat").json
        assert session["state"] in ("starting", "running")
        assert session["params"] == {"interval": 0.2}
    finally:
        app.extensions["pyedge"].close()


@pytest.mark.parametrize("path", ["/", "/operations", "/sensors", "/admin", "/users"])
def test_pages_run_no_inline_script_and_load_only_from_the_node(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200, path
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src" not in policy
    page = response.get_data(as_text=True)
    # Every <script> is a file of the node's or the page's JSON data, never inline code.
    for tag in re.findall(r"<script[^>]*>", page):
        assert 'src="/static/' in tag or 'type="application/json"' in tag, tag
