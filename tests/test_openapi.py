"""One OpenAPI document for every mounted service, and Swagger UI from local assets."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient
from openapi_spec_validator import validate

from edge_server import create_app
from tests.conftest import authorized_client
from tests.probe_service import probe


def test_openapi_document_is_valid_and_holds_every_path(client: FlaskClient) -> None:
    spec = client.get("/api/openapi.json").json
    validate(spec)
    paths = set(spec["paths"])
    assert {
        "/api/health",
        "/api/services",
        "/api/custom-service/ops",
        "/api/custom-service/ops/{op}",
        "/api/custom-service/ops/{op}/wait",
        "/api/custom-service/ops/{op}/abort",
        "/api/custom-service/ops/{op}/stop",
        "/api/custom-service/ops/sleep/start",
        "/api/custom-service/ops/heartbeat/start",
        "/api/custom-service/hello",
    } <= paths


def test_operation_start_is_typed_by_its_params_schema(client: FlaskClient) -> None:
    spec = client.get("/api/openapi.json").json
    start = spec["paths"]["/api/custom-service/ops/sleep/start"]["post"]
    assert start["summary"] == "Start the task sleep."
    ref = start["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["properties"]["seconds"]["maximum"] == 3600
    assert {"202", "409", "422"} <= set(start["responses"])


def test_every_mounted_service_is_in_the_document(app_config: dict[str, Any]) -> None:
    from custom_service import service as custom

    app = create_app(app_config, services=[custom, probe])
    try:
        spec = authorized_client(app).get("/api/openapi.json").json
        validate(spec)
        tags = {tag["name"] for tag in spec["tags"]}
        assert {"custom-service", "probe-service", "edge-server"} <= tags
        assert "/api/probe-service/ops/fail/start" in spec["paths"]
    finally:
        app.extensions["pyedge"].close()


def test_swagger_ui_is_served_from_local_assets(client: FlaskClient) -> None:
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/api/docs/assets/"), f"{asset} is not local"
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.data) > 1000
    assert "http://" not in html and "https://" not in html
