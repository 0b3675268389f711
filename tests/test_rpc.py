"""Operation calls over MQTT 5 request/response, against the real broker and app."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from custom_service import service as custom_service
from edge_server import create_app
from edge_server.broker.accounts import CONTROLLER, SUBSCRIBER
from pyedge import EdgeService, Session
from pyedge.security import Role
from tests.conftest import OBSERVER, Broker, authorized_client
from tests.mqtt_recorder import MqttRecorder

OPS = "/api/custom-service/ops"
SLUG = "custom-service"

# A service with an operation only an admin may start.
guarded = EdgeService("rpc-guarded", title="Guarded", version="0.0.1", import_name=__name__)


def wipe(session: Session, params: dict[str, Any]) -> str:
    """Pretend to erase everything."""
    return "wiped"


guarded.task("wipe", wipe, role=Role.ADMIN)

# A service whose start hook waits for the test: it is `online` but not started yet.
slow = EdgeService("rpc-slow", title="Slow", version="0.0.1", import_name=__name__)
slow_may_start = threading.Event()
slow.task("noop", wipe)


@slow.on_start
def wait_for_the_test(runtime: Any) -> None:
    """Hold the service's start until the test lets it go."""
    assert slow_may_start.wait(10)


class Caller:
    """A bare MQTT 5 client that publishes calls and collects the answers."""

    def __init__(self, broker: Broker, account: str = CONTROLLER) -> None:
        # (topic, correlation data, payload) of every message received.
        self.answers: list[tuple[str, bytes | None, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"caller-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(**broker.login(account))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def listen(self, topic: str) -> None:
        """Subscribe to answers on `topic`, waiting for the SUBACK."""
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(5), f"no SUBACK for {topic}"

    def send(
        self,
        topic: str,
        body: Any,
        reply_to: str | None,
        correlation: bytes | None = None,
    ) -> bytes:
        """Publish a call; returns its correlation data."""
        correlation = correlation or uuid.uuid4().bytes
        properties = Properties(PacketTypes.PUBLISH)
        if reply_to is not None:
            properties.ResponseTopic = reply_to
        properties.CorrelationData = correlation
        payload = body if isinstance(body, bytes) else json.dumps(body)
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)
        return correlation

    def answer(self, correlation: bytes, timeout: float = 10) -> Any:
        """The answer carrying `correlation`; None if none comes within `timeout`."""
        with self._cond:
            self._cond.wait_for(
                lambda: any(c == correlation for _t, c, _b in self.answers), timeout
            )
            found = next((b for _t, c, b in self.answers if c == correlation), None)
        return None if found is None else json.loads(found)

    def wait_for(self, topic: str, payload: bytes, timeout: float = 10) -> None:
        """Subscribe to `topic` and wait until `payload` arrives on it."""
        self.listen(topic)
        with self._cond:
            assert self._cond.wait_for(lambda: (topic, None, payload) in self.answers, timeout), (
                f"no {payload!r} on {topic}"
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        with self._cond:
            self.answers.append((message.topic, correlation, message.payload))
            self._cond.notify_all()


class Rpc:
    """Calls to one node's services, answered on the service's reply subtree."""

    def __init__(self, caller: Caller, node: str, slug: str = SLUG) -> None:
        self.caller = caller
        self.node = node
        self.reply_id = uuid.uuid4().hex
        self._listening: set[str] = set()
        # The service subscribes to its calls before it says `online`: once that has
        # arrived, a call is heard (the app fixture only waits for the connection).
        caller.wait_for(f"pyedge/{node}/{slug}/status", b"online")

    def reply_topic(self, slug: str = SLUG) -> str:
        return f"pyedge/{self.node}/{slug}/reply/{self.reply_id}"

    def send(self, op: str, body: Any, slug: str = SLUG, reply_to: str | None = None) -> bytes:
        topic = reply_to or self.reply_topic(slug)
        if topic not in self._listening:
            self.caller.listen(topic)
            self._listening.add(topic)
        return self.caller.send(f"pyedge/{self.node}/{slug}/ops/{op}/call", body, topic)

    def __call__(self, op: str, body: Any, slug: str = SLUG, timeout: float = 10) -> Any:
        answer = self.caller.answer(self.send(op, body, slug), timeout)
        assert answer is not None, f"no answer to {body} on {op}"
        return answer


@pytest.fixture
def caller(broker: Broker) -> Iterator[Caller]:
    caller = Caller(broker)
    yield caller
    caller.close()


@pytest.fixture
def rpc(app: Flask, caller: Caller, node_id: str) -> Rpc:
    return Rpc(caller, node_id)


@pytest.fixture
def observer(broker: Broker) -> Iterator[MqttRecorder]:
    """Reads every topic: a reply sent anywhere would show."""
    recorder = MqttRecorder(
        broker.host, broker.port, f"observer-{uuid.uuid4().hex[:8]}", **broker.login(OBSERVER)
    )
    yield recorder
    recorder.close()


def test_a_task_started_over_mqtt_runs_and_wait_returns_the_finished_session(
    rpc: Rpc, client: FlaskClient
) -> None:
    started = rpc("sleep", {"action": "start", "params": {"seconds": 0.3}})
    assert started["code"] == 200
    assert started["session"]["state"] in ("starting", "running")
    assert started["session"]["params"] == {"seconds": 0.3}

    done = rpc("sleep", {"action": "wait", "timeout": 10})
    assert done["code"] == 200
    assert done["session"]["state"] == "done"
    assert done["session"]["success"] is True
    assert done["session"]["messages"][-1]["text"] == "slept 0.3 s"
    assert done["session"] == client.get(f"{OPS}/sleep").json


def test_the_answer_carries_the_calls_correlation_data(rpc: Rpc, caller: Caller) -> None:
    first = rpc.send("sleep", {"action": "status"})
    second = rpc.send("heartbeat", {"action": "status"})
    assert caller.answer(second)["session"]["op"] == "heartbeat"
    assert caller.answer(first)["session"]["op"] == "sleep"
    topics = {topic for topic, correlation, _b in caller.answers if correlation}
    assert topics == {rpc.reply_topic()}


def test_status_is_the_session_http_shows(rpc: Rpc, client: FlaskClient) -> None:
    answer = rpc("sleep", {"action": "status"})
    assert answer == {"code": 200, "session": client.get(f"{OPS}/sleep").json}
    assert answer["session"]["state"] == "idle"


@pytest.mark.parametrize(
    "params",
    [{}, {"seconds": 0}, {"seconds": "soon"}, {"seconds": 1, "extra": True}, [1, 2]],
    ids=["missing", "zero", "not-a-number", "unknown-field", "not-an-object"],
)
def test_invalid_params_are_422_with_the_errors_http_gives(
    rpc: Rpc, client: FlaskClient, params: Any
) -> None:
    answer = rpc("sleep", {"action": "start", "params": params})
    http = client.post(f"{OPS}/sleep/start", json=params)
    assert answer["code"] == http.status_code == 422
    assert answer["status"] == http.json["status"] == "Unprocessable Entity"
    assert answer["errors"] == http.json["errors"]
    assert client.get(f"{OPS}/sleep").json["state"] == "idle"


@pytest.mark.parametrize("action", ["start", "status", "wait", "abort", "stop"])
def test_an_unknown_operation_is_404(rpc: Rpc, action: str) -> None:
    answer = rpc("nope", {"action": action})
    assert answer["code"] == 404
    assert answer["status"] == "Not Found"
    assert "nope" in answer["message"]


def test_a_task_is_aborted_and_ends_unsuccessfully(rpc: Rpc) -> None:
    assert rpc("sleep", {"action": "start", "params": {"seconds": 60}})["code"] == 200
    aborted = rpc("sleep", {"action": "abort"})
    assert aborted["code"] == 200
    assert aborted["session"]["state"] in ("stopping", "done")
    done = rpc("sleep", {"action": "wait", "timeout": 5})["session"]
    assert done["state"] == "done"
    assert done["success"] is False
    assert done["messages"][-1]["text"].startswith("aborted after")


def test_a_process_runs_until_stopped(rpc: Rpc) -> None:
    assert rpc("heartbeat", {"action": "start", "params": {"interval": 0.1}})["code"] == 200
    running = rpc("heartbeat", {"action": "wait", "timeout": 0.5})["session"]
    assert running["state"] == "running"
    assert running["data"]["seq"] >= 2
    assert rpc("heartbeat", {"action": "stop"})["code"] == 200
    done = rpc("heartbeat", {"action": "wait", "timeout": 5})["session"]
    assert done["state"] == "done"
    assert done["success"] is True


@pytest.mark.parametrize(("op", "verb"), [("sleep", "stop"), ("heartbeat", "abort")])
def test_the_wrong_verb_for_the_kind_is_the_409_http_gives(
    rpc: Rpc, client: FlaskClient, op: str, verb: str
) -> None:
    params = {"seconds": 30} if op == "sleep" else {"interval": 1}
    assert rpc(op, {"action": "start", "params": params})["code"] == 200
    answer = rpc(op, {"action": verb})
    http = client.post(f"{OPS}/{op}/{verb}")
    assert answer["code"] == http.status_code == 409
    assert answer["message"] == http.json["message"]
    assert rpc(op, {"action": "abort" if op == "sleep" else "stop"})["code"] == 200


def test_starting_a_running_operation_is_409(rpc: Rpc) -> None:
    rpc("sleep", {"action": "start", "params": {"seconds": 30}})
    answer = rpc("sleep", {"action": "start", "params": {"seconds": 1}})
    assert answer["code"] == 409
    assert "already running" in answer["message"]
    rpc("sleep", {"action": "abort"})


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        ({"action": "explode"}, 422),
        ({"params": {}}, 422),
        ({"action": "wait", "timeout": 61}, 422),
        ({"action": "status", "extra": 1}, 422),
    ],
    ids=["not-json", "not-an-object", "unknown-action", "no-action", "long-wait", "unknown-key"],
)
def test_a_malformed_call_is_answered_with_the_error_envelope(
    rpc: Rpc, payload: Any, code: int
) -> None:
    answer = rpc("sleep", payload)
    assert answer["code"] == code
    assert answer["message"]
    if code == 422:
        assert answer["errors"]["request"]


def test_a_wait_blocks_neither_the_network_thread_nor_other_calls(rpc: Rpc, caller: Caller) -> None:
    rpc("sleep", {"action": "start", "params": {"seconds": 30}})
    waiting = rpc.send("sleep", {"action": "wait", "timeout": 3})
    began = time.monotonic()
    assert rpc("heartbeat", {"action": "status"})["code"] == 200
    assert time.monotonic() - began < 2
    assert caller.answer(waiting, timeout=0.1) is None  # still waiting
    assert caller.answer(waiting)["session"]["state"] == "running"
    rpc("sleep", {"action": "abort"})


@pytest.mark.parametrize(
    "reply_to",
    ["pyedge/{node}/device-service/reply/x", "pyedge/{node}/custom-service/status", "x/reply/1"],
    ids=["other-service", "not-a-reply", "outside-the-root"],
)
def test_a_response_topic_outside_the_services_reply_subtree_gets_no_answer(
    rpc: Rpc,
    caller: Caller,
    observer: MqttRecorder,
    client: FlaskClient,
    node_id: str,
    caplog: pytest.LogCaptureFixture,
    reply_to: str,
) -> None:
    topic = reply_to.format(node=node_id)
    observer.subscribe(topic)
    refused = caller.send(
        f"pyedge/{node_id}/{SLUG}/ops/sleep/call",
        {"action": "start", "params": {"seconds": 0.1}},
        topic,
    )
    # A good call sent after it is answered: the refused one has been handled by then.
    assert rpc("sleep", {"action": "status"})["code"] == 200
    time.sleep(0.3)
    assert [m for m in observer.on(topic) if not m.retain] == []  # the status is retained
    assert caller.answer(refused, timeout=0) is None
    assert client.get(f"{OPS}/sleep").json["state"] == "idle"
    assert "is not under" in caplog.text


def test_an_account_that_may_not_publish_calls_gets_no_answer(
    app: Flask, broker: Broker, client: FlaskClient, observer: MqttRecorder, node_id: str
) -> None:
    reader = Caller(broker, SUBSCRIBER)  # reads pyedge/#, writes nothing
    try:
        reply = f"pyedge/{node_id}/{SLUG}/reply/{uuid.uuid4().hex}"
        reader.listen(reply)
        observer.subscribe(reply)
        correlation = reader.send(
            f"pyedge/{node_id}/{SLUG}/ops/sleep/call",
            {"action": "start", "params": {"seconds": 0.1}},
            reply,
        )
        assert reader.answer(correlation, timeout=1) is None
        assert observer.on(reply) == []
        assert client.get(f"{OPS}/sleep").json["state"] == "idle"
    finally:
        reader.close()


@pytest.fixture
def guarded_app(app_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(app_config, services=[custom_service, guarded])
    assert app.extensions["pyedge"].bus.wait_connected(5)
    yield app
    app.extensions["pyedge"].close()


def test_an_operation_needing_admin_is_403_over_mqtt(
    guarded_app: Flask, caller: Caller, node_id: str
) -> None:
    rpc = Rpc(caller, node_id, "rpc-guarded")
    answer = rpc("wipe", {"action": "start"}, slug="rpc-guarded")
    assert answer["code"] == 403
    assert answer["status"] == "Forbidden"
    assert "needs the admin role; the caller is operator" in answer["message"]
    # Reading it needs only viewer.
    status = rpc("wipe", {"action": "status"}, slug="rpc-guarded")
    assert status["session"]["state"] == "idle"
    # Ending it needs its own role too, over MQTT as over HTTP.
    assert rpc("wipe", {"action": "abort"}, slug="rpc-guarded")["code"] == 403


def test_only_the_operations_own_role_may_end_it_over_http(guarded_app: Flask) -> None:
    abort = "/api/rpc-guarded/ops/wipe/abort"
    refused = authorized_client(guarded_app, Role.OPERATOR).post(abort)
    assert refused.status_code == 403
    assert "abort of wipe needs the admin role" in refused.json["message"]
    # An admin passes the role check: the Task is simply not running.
    assert authorized_client(guarded_app, Role.ADMIN).post(abort).status_code == 409


def test_a_stopped_service_answers_no_more_calls(app: Flask, rpc: Rpc, caller: Caller) -> None:
    assert rpc("sleep", {"action": "status"})["code"] == 200
    app.extensions["pyedge"].close()
    correlation = rpc.send("sleep", {"action": "status"})
    assert caller.answer(correlation, timeout=1) is None


def test_under_mqtt_311_calls_are_unavailable_and_said_once(
    app_config: dict[str, Any],
    caller: Caller,
    node_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pyedge.rpc")
    app = create_app({**app_config, "EDGE_MQTT_PROTOCOL": "3.1.1"})
    try:
        assert app.extensions["pyedge"].bus.wait_connected(5)
        rpc = Rpc(caller, node_id)
        for _ in range(2):
            correlation = rpc.send("sleep", {"action": "status"})
            assert caller.answer(correlation, timeout=1) is None
        warnings = [r for r in caplog.records if "MQTT 3.1.1" in r.getMessage()]
        assert len(warnings) == 1
        assert "unavailable" in warnings[0].getMessage()
    finally:
        app.extensions["pyedge"].close()


def test_calls_before_the_service_has_started_are_503(
    app_config: dict[str, Any], caller: Caller, node_id: str
) -> None:
    slow_may_start.clear()
    apps: list[Flask] = []
    starting = threading.Thread(
        target=lambda: apps.append(create_app(app_config, services=[slow])), daemon=True
    )
    starting.start()
    try:
        rpc = Rpc(caller, node_id, "rpc-slow")  # online: subscribed, start hooks running
        answer = rpc("noop", {"action": "status"}, slug="rpc-slow")
        assert answer["code"] == 503
        assert "rpc-slow is starting" in answer["message"]
        slow_may_start.set()
        starting.join(10)
        assert rpc("noop", {"action": "status"}, slug="rpc-slow")["code"] == 200
    finally:
        slow_may_start.set()
        starting.join(10)
        for app in apps:
            app.extensions["pyedge"].close()
