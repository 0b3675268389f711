"""pyedge.client: the same calls over HTTP (a live server) and MQTT 5 (the real broker)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from custom_service import service as custom_service
from edge_server import create_app
from edge_server.broker.accounts import CONTROLLER, SUBSCRIBER
from pyedge.client import (
    BaseClient,
    Client,
    ClientError,
    ClientTimeout,
    MqttClient,
    OperationError,
)
from pyedge.security import Role
from tests.conftest import Broker, authorize, free_port
from tests.mqtt_recorder import MqttRecorder
from tests.probe_service import probe


@dataclass
class Live:
    """The app served over real HTTP."""

    app: Flask
    url: str

    def token(self, role: Role = Role.OPERATOR) -> str:
        return authorize(self.app, role)


@pytest.fixture
def live_app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """The edge-server with custom-service and the probe service (its `fail` Process)."""
    app = create_app(app_config, services=[custom_service, probe])
    assert app.extensions["pyedge"].bus.wait_connected(5)
    yield app
    app.extensions["pyedge"].close()


@pytest.fixture
def live(live_app: Flask) -> Iterator[Live]:
    server = make_server("127.0.0.1", 0, live_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    yield Live(live_app, f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    thread.join(5)
    server.server_close()


def mqtt_client(broker: Broker, node: str, account: str = CONTROLLER, **kwargs: Any) -> MqttClient:
    return MqttClient(broker.host, broker.port, **broker.login(account), node=node, **kwargs)


def wait_online(broker: Broker, node: str, slug: str = "custom-service") -> None:
    """Wait for the service's `online`, which it says once it listens for calls."""
    recorder = MqttRecorder(
        broker.host, broker.port, f"ready-{uuid.uuid4().hex[:8]}", **broker.login(SUBSCRIBER)
    )
    try:
        topic = f"pyedge/{node}/{slug}/status"
        recorder.subscribe(topic)
        recorder.wait_for(topic, lambda m: m.payload == b"online")
    finally:
        recorder.close()


@pytest.fixture(params=["http", "mqtt"])
def api(request: pytest.FixtureRequest, live: Live, broker: Broker, node_id: str) -> Iterator[Any]:
    """The same client API over both transports."""
    client: BaseClient
    if request.param == "http":
        client = Client(live.url, live.token())
    else:
        wait_online(broker, node_id)
        wait_online(broker, node_id, "probe-service")
        client = mqtt_client(broker, node_id)
    with client:
        yield client


def test_a_task_starts_and_wait_returns_the_finished_session(api: BaseClient) -> None:
    op = api.service("custom-service").op("sleep").start(seconds=0.2)
    assert op.session is not None
    assert op.session["state"] in ("starting", "running")
    assert op.session["params"] == {"seconds": 0.2}
    assert op.success is None

    done = op.wait()
    assert done["state"] == "done"
    assert done["success"] is True
    assert done["messages"][-1]["text"] == "slept 0.2 s"
    assert op.success is True
    assert op.result() == done
    assert op.status() == done


def test_wait_with_a_timeout_returns_the_running_session(api: BaseClient) -> None:
    op = api.service("custom-service").op("sleep").start({"seconds": 30})
    began = time.monotonic()
    running = op.wait(0.3)
    assert 0.25 < time.monotonic() - began < 5
    assert running["state"] == "running"
    with pytest.raises(ClientTimeout) as caught:
        op.result(timeout=0.1)
    assert isinstance(caught.value, TimeoutError)
    assert "still running" in str(caught.value)
    aborted = op.abort()
    assert aborted["state"] in ("stopping", "done")
    with pytest.raises(OperationError) as failed:
        op.result(5)
    assert failed.value.session["success"] is False
    assert "aborted after" in failed.value.message


def test_a_process_runs_until_stopped(api: BaseClient) -> None:
    op = api.service("custom-service").op("heartbeat").start(interval=0.1)
    assert op.wait(0.4)["state"] == "running"
    assert op.stop()["state"] in ("stopping", "done")
    assert op.result(5)["success"] is True


def test_a_failed_operation_raises_operation_error_from_result(api: BaseClient) -> None:
    op = api.service("probe-service").op("fail").start()
    session = op.wait(5)
    assert session["success"] is False  # wait returns whatever the outcome
    with pytest.raises(OperationError, match="sensor bus gone") as caught:
        op.result(5)
    assert caught.value.session == session


def test_invalid_params_raise_client_error_422_with_the_errors(api: BaseClient) -> None:
    with pytest.raises(ClientError) as caught:
        api.service("custom-service").op("sleep").start(seconds=-1)
    assert caught.value.status == 422
    assert caught.value.errors is not None
    assert "seconds" in caught.value.errors["json"]
    assert "422" in str(caught.value)


@pytest.mark.parametrize("action", ["start", "status", "wait", "abort", "stop"])
def test_an_unknown_operation_raises_404(api: BaseClient, action: str) -> None:
    op = api.service("custom-service").op("nope")
    with pytest.raises(ClientError) as caught:
        getattr(op, action)()
    assert caught.value.status == 404  # HTTP has no start route for it: Flask's bare 404


def test_the_wrong_verb_raises_409(api: BaseClient) -> None:
    op = api.service("custom-service").op("sleep").start(seconds=30)
    with pytest.raises(ClientError) as caught:
        op.stop()
    assert caught.value.status == 409
    assert "not stop" in caught.value.message
    op.abort()


# --- HTTP only ------------------------------------------------------------------------------


def test_a_viewer_token_may_read_but_not_start(live: Live) -> None:
    with Client(live.url, live.token(Role.VIEWER)) as client:
        op = client.service("custom-service").op("sleep")
        assert op.status()["state"] == "idle"
        with pytest.raises(ClientError) as caught:
            op.start(seconds=1)
    assert caught.value.status == 403
    assert "operator" in caught.value.message


def test_a_bad_token_is_401(live: Live) -> None:
    with Client(live.url, "pye_not-a-token") as client, pytest.raises(ClientError) as caught:
        client.service("custom-service").op("sleep").status()
    assert caught.value.status == 401


def test_an_unreachable_server_is_a_client_error_without_status() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", "t", timeout=2)
    with client, pytest.raises(ClientError) as caught:
        client.service("custom-service").op("sleep").status()
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_request_reaches_any_endpoint(live: Live) -> None:
    with Client(live.url + "/", live.token()) as client:
        assert client.request("GET", "/api/health")["node"]
        with pytest.raises(ClientError) as caught:
            client.request("GET", "/api/nowhere")
    assert caught.value.status == 404


# --- MQTT only ------------------------------------------------------------------------------


def test_mqtt_calls_go_to_the_node_given_per_service(
    live: Live, broker: Broker, node_id: str
) -> None:
    wait_online(broker, node_id)
    with mqtt_client(broker, "some-other-node", timeout=5) as client:
        session = client.service("custom-service", node=node_id).op("sleep").status()
    assert session["state"] == "idle"


def test_a_call_nobody_answers_raises_client_timeout(broker: Broker) -> None:
    with mqtt_client(broker, "no-such-node", timeout=0.5) as client:
        began = time.monotonic()
        with pytest.raises(ClientTimeout) as caught:
            client.service("custom-service").op("sleep").status()
    assert time.monotonic() - began < 3
    assert isinstance(caught.value, TimeoutError)
    assert "no answer within" in str(caught.value)


def test_an_account_that_may_not_call_is_refused_by_the_broker(
    live: Live, broker: Broker, node_id: str
) -> None:
    client = mqtt_client(broker, node_id, SUBSCRIBER, timeout=3)
    with client, pytest.raises(ClientError) as caught:
        client.service("custom-service").op("sleep").start(seconds=0.1)
    assert caught.value.status == 403
    assert "refused the call" in caught.value.message
    with Client(live.url, live.token()) as http:
        assert http.service("custom-service").op("sleep").status()["state"] == "idle"


def test_a_wrong_password_is_a_client_error(broker: Broker) -> None:
    with pytest.raises(ClientError, match="refused the connection"):
        MqttClient(
            broker.host, broker.port, username=CONTROLLER, password="wrong", node="n", timeout=5
        )


def test_an_unreachable_broker_is_a_client_error() -> None:
    with pytest.raises(ClientError) as caught:
        MqttClient("127.0.0.1", free_port(), username="u", password="p", node="n", timeout=2)
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.status is None


def test_a_topic_wildcard_in_a_name_is_refused(broker: Broker, node_id: str) -> None:
    with mqtt_client(broker, node_id) as client, pytest.raises(ClientError):
        client.service("custom-service").op("#").status()
