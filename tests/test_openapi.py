"""One OpenAPI document for every mounted service, and Swagger UI from local assets."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient
from openapi_spec_validator import validate

from edge_server import create_app
from edge_server.network.openapi_merge import merge_service
from edge_server.network.remote import RemoteService
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


def remote_document() -> dict[str, Any]:
    """A served process's document: its service's paths and the process's own."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "PyEdge", "version": "1"},
        "paths": {
            "/api/health": {
                "get": {
                    "tags": ["edge-server"],
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Health"}
                                }
                            },
                        }
                    },
                }
            },
            "/api/widget/items/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Id"}],
                "get": {
                    "tags": ["widget"],
                    "operationId": "getItem",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Item"}
                                }
                            },
                        },
                        "default": {"$ref": "#/components/responses/DEFAULT_ERROR"},
                    },
                    "security": [{"bearerAuth": []}],
                },
            },
        },
        "components": {
            "schemas": {
                "Item": {
                    "type": "object",
                    "properties": {"part": {"$ref": "#/components/schemas/Part"}},
                },
                "Part": {"type": "object", "properties": {"name": {"type": "string"}}},
                "Error": {"type": "object", "properties": {"code": {"type": "integer"}}},
                "Health": {"type": "object"},
            },
            "responses": {"DEFAULT_ERROR": {"description": "error", "content": error}},
            "parameters": {
                "Id": {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            },
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "tags": [{"name": "widget", "description": "Widgets"}, {"name": "edge-server"}],
    }


def widget(node: str) -> RemoteService:
    return RemoteService(
        node=node,
        slug="widget",
        title="Widget",
        version="1",
        description="",
        machine="aarch64",
        url="http://10.0.0.2:8101",
        openapi_url="http://10.0.0.2:8101/api/openapi.json",
        ops=(),
        announced_at="2026-11-23T12:00:00Z",
    )


LOCAL_BEARER = {"type": "http", "scheme": "bearer", "bearerFormat": "local"}


def local_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "PyEdge", "version": "1"},
        "paths": {},
        "components": {"securitySchemes": {"bearerAuth": dict(LOCAL_BEARER)}},
    }


def test_a_remote_document_is_merged_under_prefixed_names() -> None:
    merged = local_document()
    merge_service(
        merged, widget("n1"), remote_document(), "widget.", unqualified=True, qualified=False
    )
    validate(merged)
    assert list(merged["paths"]) == ["/api/widget/items/{id}"]
    item = merged["paths"]["/api/widget/items/{id}"]
    assert item["parameters"] == [{"$ref": "#/components/parameters/widget.Id"}]
    get = item["get"]
    assert get["operationId"] == "widget.getItem"
    assert get["x-pyedge-node"] == "n1" and get["x-pyedge-mode"] == "remote"
    assert get["responses"]["default"] == {"$ref": "#/components/responses/widget.DEFAULT_ERROR"}
    components = merged["components"]
    # Only what the service's paths use, through other components too; not the process's.
    assert set(components["schemas"]) == {"widget.Item", "widget.Part", "widget.Error"}
    part = components["schemas"]["widget.Item"]["properties"]["part"]
    assert part == {"$ref": "#/components/schemas/widget.Part"}
    # The security schemes are this document's own, never a remote one's.
    assert components["securitySchemes"] == {"bearerAuth": LOCAL_BEARER}
    assert get["security"] == [{"bearerAuth": []}]
    assert merged["tags"] == [{"name": "widget", "description": "Widgets"}]


def test_a_slug_on_two_nodes_is_merged_by_node() -> None:
    merged = local_document()
    for node in ("n1", "n2"):
        merge_service(
            merged,
            widget(node),
            remote_document(),
            f"{node}.widget.",
            unqualified=False,
            qualified=True,
        )
    validate(merged)
    assert set(merged["paths"]) == {
        "/api/nodes/n1/widget/items/{id}",
        "/api/nodes/n2/widget/items/{id}",
    }
    assert {"n1.widget.Item", "n2.widget.Item"} <= set(merged["components"]["schemas"])
    ids = {item["get"]["operationId"] for item in merged["paths"].values()}
    assert ids == {"n1.widget.getItem", "n2.widget.getItem"}
    assert [tag["name"] for tag in merged["tags"]] == ["widget"]
