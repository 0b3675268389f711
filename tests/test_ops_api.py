"""The operation lifecycle over HTTP, for both kinds, with every error status."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import authorized_client

OPS = "/api/custom-service/ops"


def start(client: FlaskClient, op: str, params: dict[str, Any] | None = None) -> Any:
    response = client.post(f"{OPS}/{op}/start", json=params or {})
    assert response.status_code == 202, response.json
    return response.json


def test_list_shows_kinds_param_schemas_and_idle_sessions(client: FlaskClient) -> None:
    ops = {op["name"]: op for op in client.get(OPS).json}
    assert ops["sleep"]["kind"] == "task"
    assert ops["heartbeat"]["kind"] == "process"
    assert ops["sleep"]["role"] == "operator"
    assert ops["sleep"]["destructive"] is False
    assert ops["sleep"]["params_schema"]["required"] == ["seconds"]
    assert ops["sleep"]["params_schema"]["properties"]["seconds"]["type"] == "number"
    assert ops["sleep"]["session"]["state"] == "idle"
    assert ops["sleep"]["session"]["success"] is None


def test_task_runs_to_completion_and_wait_returns_the_finished_session(
    client: FlaskClient,
) -> None:
    session = start(client, "sleep", {"seconds": 0.3})
    assert session["state"] in ("starting", "running")
    assert session["params"] == {"seconds": 0.3}
    assert session["started_at"].endswith("Z")

    done = client.post(f"{OPS}/sleep/wait").json  # no timeout: waits until done
    assert done["state"] == "done"
    assert done["success"] is True
    assert done["data"]["progress"] == 1.0
    assert done["messages"][-1]["text"] == "slept 0.3 s"
    assert done["ended_at"] >= done["started_at"]
    assert client.get(f"{OPS}/sleep").json == done


def test_wait_with_timeout_returns_the_running_session(client: FlaskClient) -> None:
    start(client, "sleep", {"seconds": 30})
    waited = client.post(f"{OPS}/sleep/wait?timeout=0.2").json
    assert waited["state"] == "running"
    assert waited["success"] is None
    client.post(f"{OPS}/sleep/abort")


def test_abort_ends_a_task_unsuccessfully(client: FlaskClient) -> None:
    start(client, "sleep", {"seconds": 60})
    aborted = client.post(f"{OPS}/sleep/abort")
    assert aborted.status_code == 200
    assert aborted.json["state"] in ("stopping", "done")
    done = client.post(f"{OPS}/sleep/wait?timeout=5").json
    assert done["state"] == "done"
    assert done["success"] is False
    assert done["messages"][-1]["text"].startswith("aborted after")


def test_process_runs_until_stopped(client: FlaskClient) -> None:
    start(client, "heartbeat", {"interval": 0.1})
    running = client.post(f"{OPS}/heartbeat/wait?timeout=0.5").json
    assert running["state"] == "running"
    assert running["data"]["seq"] >= 2
    stopped = client.post(f"{OPS}/heartbeat/stop")
    assert stopped.status_code == 200
    done = client.post(f"{OPS}/heartbeat/wait?timeout=5").json
    assert done["state"] == "done"
    assert done["success"] is True


def test_a_finished_operation_can_start_again(client: FlaskClient) -> None:
    start(client, "sleep", {"seconds": 0.1})
    client.post(f"{OPS}/sleep/wait")
    again = start(client, "sleep", {"seconds": 0.1})
    assert again["state"] in ("starting", "running")
    assert client.post(f"{OPS}/sleep/wait").json["success"] is True


def test_start_while_running_is_409(client: FlaskClient) -> None:
    start(client, "sleep", {"seconds": 30})
    response = client.post(f"{OPS}/sleep/start", json={"seconds": 1})
    assert response.status_code == 409
    assert response.json["status"] == "Conflict"
    assert "already running" in response.json["message"]
    client.post(f"{OPS}/sleep/abort")


@pytest.mark.parametrize(
    ("op", "verb"), [("sleep", "stop"), ("heartbeat", "abort")], ids=["stop-task", "abort-process"]
)
def test_the_wrong_verb_for_the_kind_is_409(client: FlaskClient, op: str, verb: str) -> None:
    params = {"seconds": 30} if op == "sleep" else {"interval": 1}
    start(client, op, params)
    response = client.post(f"{OPS}/{op}/{verb}")
    assert response.status_code == 409
    assert "not " + verb in response.json["message"]
    client.post(f"{OPS}/{op}/{'abort' if op == 'sleep' else 'stop'}")


def test_stopping_what_is_not_running_is_409(client: FlaskClient) -> None:
    response = client.post(f"{OPS}/heartbeat/stop")
    assert response.status_code == 409
    assert "not running" in response.json["message"]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"seconds": 0},
        {"seconds": -1},
        {"seconds": 3600.5},
        {"seconds": "soon"},
        {"seconds": 1, "extra": True},
    ],
    ids=["missing", "zero", "negative", "too-long", "not-a-number", "unknown-field"],
)
def test_invalid_params_are_422_with_the_error_envelope(
    client: FlaskClient, params: dict[str, Any]
) -> None:
    response = client.post(f"{OPS}/sleep/start", json=params)
    assert response.status_code == 422
    body = response.json
    assert body["code"] == 422
    assert body["status"] == "Unprocessable Entity"
    assert body["errors"]["json"]
    assert client.get(f"{OPS}/sleep").json["state"] == "idle"


def test_heartbeat_interval_below_minimum_is_422(client: FlaskClient) -> None:
    response = client.post(f"{OPS}/heartbeat/start", json={"interval": 0.05})
    assert response.status_code == 422
    assert "interval" in response.json["errors"]["json"]


def test_wait_timeout_over_60_seconds_is_422(client: FlaskClient) -> None:
    response = client.post(f"{OPS}/sleep/wait?timeout=61")
    assert response.status_code == 422
    assert "timeout" in response.json["errors"]["query"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/nope"),
        ("post", "/nope/start"),
        ("post", "/nope/wait"),
        ("post", "/nope/abort"),
        ("post", "/nope/stop"),
    ],
)
def test_unknown_operation_is_404(client: FlaskClient, method: str, path: str) -> None:
    response = getattr(client, method)(OPS + path)
    assert response.status_code == 404
    assert response.json["code"] == 404


def test_parameters_not_sent_as_json_are_415(client: FlaskClient) -> None:
    response = client.post(f"{OPS}/heartbeat/start", data="interval=5", content_type="text/plain")
    assert response.status_code == 415
    assert "application/json" in response.json["message"]
    assert client.get(f"{OPS}/heartbeat").json["state"] == "idle"


@pytest.mark.parametrize("body", ["[1, 2]", "null", '"fast"', "{bad json"])
def test_a_body_that_is_not_a_json_object_is_a_4xx(client: FlaskClient, body: str) -> None:
    response = client.post(f"{OPS}/sleep/start", data=body, content_type="application/json")
    assert response.status_code in (400, 422)
    assert response.json["code"] == response.status_code


def test_no_operation_starts_once_the_service_is_shutting_down(app: Flask) -> None:
    client = authorized_client(app)
    app.extensions["pyedge"].close()
    response = client.post(f"{OPS}/sleep/start", json={"seconds": 1})
    assert response.status_code == 503
    assert "shutting down" in response.json["message"]
